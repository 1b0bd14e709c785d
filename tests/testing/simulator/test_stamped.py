"""The simulator's arrival times come from the kernel, not from its own event loop."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from audiosocket_gw.testing.simulator.stamped import StampedSocket, connect_stamped

from ...helpers import MS


class Stamps(asyncio.Protocol):
    def __init__(self, sock: StampedSocket) -> None:
        self.sock = sock
        self.got: list[tuple[bytes, float, float]] = []  # data, stamp, read at
        self.event = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.got.append((data, self.sock.stamp, time.monotonic()))
        self.event.set()


async def test_a_late_read_keeps_the_time_the_data_arrived() -> None:
    """The simulator's loop is busy when a frame arrives: the stamp is still the
    arrival, so the simulator's lateness is not counted as the gateway's jitter."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put(w)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = await connect_stamped("127.0.0.1", port)
    transport, proto = await loop.create_connection(lambda: Stamps(sock), sock=sock)
    writer = await accepted.get()
    try:
        if not sock.kernel_stamps:
            pytest.skip("no SO_TIMESTAMPNS on this system (stamps are read times)")
        # Linux turns receive time-stamping on for the whole stack lazily (deferred
        # work after the first socket asks): the first segments may come unstamped.
        writer.write(b"warm-up")
        await writer.drain()
        await asyncio.wait_for(proto.event.wait(), 5.0)
        await asyncio.sleep(20 * MS)
        for _ in range(3):
            proto.event.clear()
            writer.write(b"\x10\x01\x40" + bytes(320))
            await writer.drain()
            sent = time.monotonic()
            time.sleep(60 * MS)  # noqa: ASYNC251 - the loop is busy: the frame waits
            await asyncio.wait_for(proto.event.wait(), 5.0)
            data, stamp, read_at = proto.got[-1]
            assert data.startswith(b"\x10\x01\x40")
            assert read_at - sent >= 60 * MS
            # stamped on arrival (well before the read), never after the read
            assert stamp - sent < 30 * MS, (stamp - sent, read_at - sent)
            assert stamp <= read_at
    finally:
        transport.close()
        writer.close()
        server.close()
        await server.wait_closed()


def test_without_kernel_stamps_the_stamp_is_the_read_time() -> None:
    s = StampedSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.kernel_stamps = False  # as on a system without SO_TIMESTAMPNS
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        s.connect(srv.getsockname())
        peer, _ = srv.accept()
        peer.sendall(b"abc")
        time.sleep(20 * MS)
        before = time.monotonic()
        assert s.recv(16) == b"abc"
        assert before <= s.stamp <= time.monotonic()
        peer.close()
    finally:
        s.close()
        srv.close()
