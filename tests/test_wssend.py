"""``send_now``: synchronous sends on a real websockets connection keep order, and fall
back (False) whenever websockets' own ``send()`` would have to wait or fail."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from audiosocket_gw.wssend import send_now

from .helpers import MS


class _Recorder:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.conn: ServerConnection | None = None
        self.ready = asyncio.Event()
        self.want = 0
        self.done = asyncio.Event()

    async def handler(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.ready.set()
        async for msg in conn:
            assert isinstance(msg, str)
            self.got.append(msg)
            if len(self.got) >= self.want:
                self.done.set()

    async def received(self, n: int, within: float) -> None:
        self.want = n
        if len(self.got) >= n:
            return
        self.done.clear()
        await asyncio.wait_for(self.done.wait(), within)


async def test_send_now_and_send_interleave_in_order() -> None:
    rec = _Recorder()
    async with serve(rec.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            sent = []
            for i in range(50):
                text = f'{{"n":{i},"s":"é"}}'
                sent.append(text)
                if i % 3:
                    assert send_now(ws, text)
                else:
                    await ws.send(text)
            await rec.received(50, 2000 * MS)
            assert rec.got == sent


async def test_send_now_refuses_when_paused_then_send_drains() -> None:
    """A peer that stops reading: the transport pauses writing, ``send_now`` says False
    (the caller queues), and websockets' ``send()`` delivers once the peer reads again."""
    rec = _Recorder()
    async with serve(rec.handler, "127.0.0.1", 0, compression=None,
                     max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None,
                           write_limit=1 << 14) as ws:
            await rec.ready.wait()
            assert rec.conn is not None
            rec.want = 1 << 30
            rec.conn.transport.pause_reading()
            big = "x" * (1 << 16)
            accepted = 0
            for _ in range(2000):  # kernel buffers fill long before this
                if not send_now(ws, big):
                    break
                accepted += 1
            else:
                raise AssertionError("send_now never saw the write buffer full")
            assert ws.paused
            assert not send_now(ws, "late")  # still paused: the caller must queue
            rec.conn.transport.resume_reading()
            await asyncio.wait_for(ws.send("last"), 5000 * MS)
            await rec.received(accepted + 1, 5000 * MS)
            assert rec.got[-1] == "last" and all(m == big for m in rec.got[:-1])


async def test_send_now_refuses_on_a_closed_connection() -> None:
    rec = _Recorder()
    async with serve(rec.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}")
        await ws.close()
        assert not send_now(ws, "after close")
