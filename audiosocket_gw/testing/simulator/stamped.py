"""Arrival times from the kernel, not from the simulator's event loop.

The simulator time-stamps every frame the gateway sends to measure the gateway's
pacing (inter-arrival jitter at the caller). Stamped when the simulator's event loop
gets round to reading the socket, the figure also held the simulator's own lateness:
with a few hundred calls its loop runs up to a millisecond or more behind, as large
as the jitter being measured. Linux stamps each segment as it is received
(``SO_TIMESTAMPNS``, given back with ``recvmsg``); a ``StampedSocket`` keeps that
time, converted to ``time.monotonic()``, for the bytes its last ``recv`` returned.
Where the option is missing, or a segment came unstamped (Linux turns stamping on for
the stack lazily, so the very first segments may be), the stamp is the time of the read.

asyncio's socket transport reads with ``sock.recv``, so a ``StampedSocket`` handed to
``loop.create_connection(sock=...)`` stamps every ``data_received``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Final

SO_TIMESTAMPNS: Final = int(getattr(socket, "SO_TIMESTAMPNS", 35))  # 35 on Linux
_TIMESPEC: Final = struct.Struct("@qq")
_ANCILLARY: Final = socket.CMSG_SPACE(_TIMESPEC.size)


class StampedSocket(socket.socket):
    """A stream socket whose ``recv`` also records when the kernel received the data.

    ``stamp`` is the receive time (``time.monotonic()`` clock) of the last segment the
    latest ``recv`` returned; ``kernel_stamps`` says whether the kernel provides them.
    """

    def __init__(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                 proto: int = 0) -> None:
        super().__init__(family, type, proto)
        self.stamp = 0.0
        try:
            self.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_stamps = True
        except OSError:
            self.kernel_stamps = False

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self.kernel_stamps:
            data = super().recv(bufsize, flags)
            self.stamp = time.monotonic()
            return data
        data, ancillary, _flags, _addr = self.recvmsg(bufsize, _ANCILLARY, flags)
        now = time.monotonic()
        stamp = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                # wall clock -> monotonic; never later than the read itself
                stamp = min(now, sec + nsec * 1e-9 - (time.time() - now))
                break
        self.stamp = stamp
        return data


async def connect_stamped(host: str, port: int) -> StampedSocket:
    """A connected, non-blocking ``StampedSocket`` to ``host:port``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host}:{port}")
    family, type_, proto, _name, addr = infos[0]
    sock = StampedSocket(family, type_, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock
