"""TranscriptKeeper alone: a real Call's transcript lands in its event log at its end."""

from __future__ import annotations

from pathlib import Path

from audiosocket_gw.backends.base import CallInfo
from audiosocket_gw.transcripts import TranscriptKeeper
from tests.components.context import Harness, make_context, open_call


async def admit(h: Harness) -> str:
    found = h.ctx.admission.resolve_did("+15551230000")
    assert found is not None
    admitted = await h.ctx.admission.admit(*found, direction="inbound", from_="+15557654321",
                                           to="+15551230000")
    return admitted.call_id


async def transcripts(h: Harness, call_id: str) -> list[tuple[float, dict[str, object]]]:
    return [(e.at, e.data) for e in await h.store.events(call_id) if e.kind == "transcript"]


async def test_ended_call_stores_its_transcript(tmp_path: Path) -> None:
    async with make_context(tmp_path) as h:
        keeper = TranscriptKeeper(h.ctx)
        await keeper.start()
        cid = await admit(h)
        call = await open_call(h, cid)
        t0 = h.clock.wall()
        call.transcript("assistant", "Hello, how can I help?")
        h.clock.advance(2.5)
        call.transcript("user", "I'd like to book a table.")
        h.clock.advance(1)
        quiet = await open_call(h, await admit(h))  # says nothing: no event
        call.end("caller-hangup", outcome="completed", send_hangup=False)
        quiet.end("caller-hangup", outcome="completed", send_hangup=False)
        await keeper.stop()  # waits for the writes

        assert await transcripts(h, cid) == [(t0 + 3.5, {"lines": [
            {"at": t0, "role": "assistant", "text": "Hello, how can I help?"},
            {"at": t0 + 2.5, "role": "user", "text": "I'd like to book a table."},
        ]})]
        assert await transcripts(h, quiet.call_id) == []


async def test_calls_without_a_record_or_before_start_are_skipped(tmp_path: Path) -> None:
    async with make_context(tmp_path) as h:
        keeper = TranscriptKeeper(h.ctx)
        early = await open_call(h, await admit(h))
        early.transcript("user", "hello?")
        early.end("caller-hangup", outcome="completed", send_hangup=False)  # not started
        await keeper.start()
        orphan_id = "0b8e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
        orphan = await open_call(h, info=CallInfo(call_id=orphan_id, tenant="acme"))
        orphan.transcript("user", "anyone?")
        orphan.end("caller-hangup", outcome="completed", send_hangup=False)
        await keeper.stop()
        assert await transcripts(h, early.call_id) == []
        assert await h.store.get_call(orphan_id) is None
        assert await transcripts(h, orphan_id) == []
        assert len(h.ctx.events.ended) == 0


async def test_barge_ins_are_stored_with_their_time_and_source(tmp_path: Path) -> None:
    async with make_context(tmp_path) as h:
        keeper = TranscriptKeeper(h.ctx)
        await keeper.start()
        cid = await admit(h)
        call = await open_call(h, cid)
        call.barge_in("local-vad")  # no bot audio queued: not a barge-in
        t0 = h.clock.wall()
        call.play(b"\x00\x01" * 1600)
        call.barge_in("server-vad")
        h.clock.advance(1.5)
        call.play(b"\x00\x01" * 1600)
        call.barge_in("local-vad")
        call.end("caller-hangup", outcome="completed", send_hangup=False)
        await keeper.stop()
        events = [(e.kind, e.at, e.data) for e in await h.store.events(cid)
                  if e.kind in ("barge_in", "transcript")]
        assert events == [("barge_in", t0, {"source": "server-vad"}),
                          ("barge_in", t0 + 1.5, {"source": "local-vad"})]
