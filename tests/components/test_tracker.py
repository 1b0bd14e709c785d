"""CallTracker alone (no AMI client): AMI events and AudioSocket lifecycle -> the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audiosocket_gw.ami.protocol import AmiMessage
from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.callstate import CallInput, CallStatus
from audiosocket_gw.events import StatusChange
from audiosocket_gw.store.base import CallRecord
from tests.components.context import Harness, make_context, open_call, until_async


def ami(**headers: str) -> AmiMessage:
    return AmiMessage(tuple(headers.items()))


async def admit(h: Harness, direction: str = "outbound") -> str:
    adm = h.ctx.admission
    tenant, agent = adm.resolve_outbound("acme", "bot")
    admitted = await adm.admit(tenant, agent, direction=direction,  # type: ignore[arg-type]
                               from_="+15551230000", to="+15557654321")
    return admitted.call_id


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_context(tmp_path) as harness:
        yield harness


async def status_of(h: Harness, call_id: str) -> CallStatus:
    rec = await h.store.get_call(call_id)
    assert rec is not None
    return rec.status


async def test_ami_events_drive_an_outbound_call(h: Harness) -> None:
    tracker = CallTracker(h.ctx, None, h.call_metrics)
    seen: list[tuple[CallInput, str, str]] = []
    h.ctx.events.status_changed.connect(
        lambda c: seen.append((c.input, c.before.status.value, c.after.status.value)))
    await tracker.start()
    try:
        cid = await admit(h)
        assert await status_of(h, cid) is CallStatus.QUEUED
        await tracker.handle_event(ami(Event="Newchannel", Channel="PJSIP/trunk-00000001",
                                       Uniqueid=cid))
        assert tracker.channels[cid] == "PJSIP/trunk-00000001"
        await tracker.handle_event(ami(Event="Newstate", ChannelState="5", Uniqueid=cid))
        assert await status_of(h, cid) is CallStatus.RINGING
        # The Local channel's other half is not the call.
        await tracker.handle_event(ami(Event="Hangup", Cause="16", Uniqueid=cid + ";2"))
        assert await status_of(h, cid) is CallStatus.RINGING
        await tracker.handle_event(ami(Event="Hangup", Cause="17", Uniqueid=cid))
        rec = await h.store.get_call(cid)
        assert rec is not None
        assert (rec.status, rec.hangup_cause) == (CallStatus.BUSY, 17)
        assert seen == [(CallInput.RINGING, "queued", "ringing"),
                        (CallInput.HANGUP, "ringing", "busy")]
        assert cid not in tracker.channels  # forgotten at the terminal status
        assert await h.store.active_slots("acme") == 0
    finally:
        await tracker.stop()


async def test_newstate_up_answers_outbound_only(h: Harness) -> None:
    tracker = CallTracker(h.ctx, None, h.call_metrics)
    await tracker.start()
    try:
        out, inb = await admit(h, "outbound"), await admit(h, "inbound")
        for cid in (out, inb):
            await tracker.handle_event(ami(Event="Newstate", ChannelState="6", Uniqueid=cid))
        assert await status_of(h, out) is CallStatus.IN_PROGRESS
        assert await status_of(h, inb) is CallStatus.RINGING
    finally:
        await tracker.stop()


async def test_start_closes_calls_a_previous_process_left_open(h: Harness) -> None:
    left = await admit(h, "inbound")
    done = await admit(h, "outbound")
    await h.ctx.status.apply(done, CallInput.ORIGINATE_FAILED_BUSY)
    assert await h.store.active_slots("acme") == 1
    tracker = CallTracker(h.ctx, None, h.call_metrics)
    await tracker.start()
    try:
        rec = await h.store.get_call(left)
        assert rec is not None
        assert rec.status is CallStatus.FAILED
        assert rec.hangup_reason == "gateway-restart"
        assert await status_of(h, done) is CallStatus.BUSY
        assert await h.store.active_slots("acme") == 0
        assert h.call_metrics.resync_vanished.labels("startup")._value.get() == 1
        assert await tracker.reconcile_startup() == 0
    finally:
        await tracker.stop()


async def test_audiosocket_start_and_end_answer_and_complete(h: Harness) -> None:
    tracker = CallTracker(h.ctx, None, h.call_metrics)
    changes: list[StatusChange] = []
    h.ctx.events.status_changed.connect(changes.append)
    await tracker.start()
    try:
        cid = await admit(h, "inbound")
        call = await open_call(h, cid)
        await until_async(lambda: _is(h, cid, CallStatus.IN_PROGRESS))
        h.clock.advance(42)
        call.end("caller-hangup", outcome="completed", send_hangup=False)
        await until_async(lambda: _is(h, cid, CallStatus.COMPLETED))
        rec = await h.store.get_call(cid)
        assert rec is not None
        assert rec.answered_at == rec.created_at
        assert rec.ended_at == rec.created_at + 42
        assert rec.billable_s == 42
        assert [c.input for c in changes] == [
            CallInput.ROUTED_INBOUND, CallInput.ANSWERED, CallInput.AUDIOSOCKET_EOF]

        # The gateway ending a call (watchdog, bot) is a GATEWAY_HANGUP with its reason.
        cid2 = await admit(h, "inbound")
        call2 = await open_call(h, cid2)
        await until_async(lambda: _is(h, cid2, CallStatus.IN_PROGRESS))
        call2.hangup("silence-timeout")
        await until_async(lambda: _is(h, cid2, CallStatus.COMPLETED))
        rec2 = await h.store.get_call(cid2)
        assert rec2 is not None and rec2.hangup_reason == "silence-timeout"
        assert changes[-1].input is CallInput.GATEWAY_HANGUP
    finally:
        await tracker.stop()


async def test_unregistered_audiosocket_call_gets_a_record(tmp_path: Path) -> None:
    async with make_context(tmp_path, allow_unregistered=True) as h:
        tracker = CallTracker(h.ctx, None, h.call_metrics)
        await tracker.start()
        try:
            call = await open_call(h)
            await until_async(lambda: _is(h, call.call_id, CallStatus.IN_PROGRESS))
            rec = await h.store.get_call(call.call_id)
            assert rec is not None
            assert (rec.tenant, rec.agent, rec.direction) == ("acme", "bot", "inbound")
        finally:
            await tracker.stop()


async def _is(h: Harness, call_id: str, status: CallStatus) -> bool:
    rec: CallRecord | None = await h.store.get_call(call_id)
    return rec is not None and rec.status is status
