"""An ended call's backend session is freed at once, by reference counting.

The gateway freezes its start-up objects and then only meets young-generation
collections on the 20 ms path, so anything that outlives a few of them (every call
does) and sits in a reference cycle waits for a rare full collection. The soak
(``make soak``) found one such cycle per call: Call.session -> the backend session ->
its ``control`` (the Call), holding the session's buffers and sockets and the call's.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

from audiosocket_gw import audiosocket as asp

from .helpers import MS, RawPeer, running_gateway


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(10 * MS)
    raise AssertionError("condition not met in time")


async def test_an_ended_calls_session_is_freed_without_the_cycle_collector() -> None:
    gc.collect()
    gc.disable()
    try:
        async with running_gateway(echo_delay_ms=20) as gw:
            server = gw.audiosocket
            peer = await RawPeer.connect(server.address)
            call_id = peer.send_uuid()
            peer.send(asp.encode_audio(b"\x00\x10" * 160))
            await _until(lambda: call_id in server.calls)
            call = server.calls[call_id]
            await peer.read_frames(3, within=2000 * MS)
            session = call.session
            had_session = session is not None
            ref = weakref.ref(session)
            del session
            await peer.close()
            await _until(lambda: call_id not in server.calls)
            await call.wait_closed()
            ended = call.ended
            for _ in range(10):  # let the close callbacks run
                await asyncio.sleep(5 * MS)
            freed = ref() is None
            holders = [] if freed else [type(r).__name__ for r in gc.get_referrers(ref())]
        assert had_session and ended
        assert freed, f"the ended call's session is still referenced by {holders}"
    finally:
        gc.enable()
