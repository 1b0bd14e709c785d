"""Watchdogs alone: real Calls, ticked by the manual tick source on the fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audiosocket_gw.watchdogs import Watchdogs
from tests.components.context import Harness, make_context, open_call, until_async

TOML = """
default_agent = "talker"

[tenants.acme]
max_concurrent_calls = 5

[agents.talker]
tenant = "acme"
backend = "echo"
silence_timeout_s = 5.0
max_duration_s = 30.0

[agents.dialer]
tenant = "acme"
backend = "echo"
voicemail_budget_s = 3.0
voicemail_action = "hangup"

[agents.messenger]
tenant = "acme"
backend = "echo"
voicemail_action = "leave_message"
"""

PERIOD = 12  # ticks of 20 ms between checks (250 ms)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_context(tmp_path, TOML) as harness:
        yield harness


@pytest.fixture
async def dogs(h: Harness) -> AsyncIterator[Watchdogs]:
    wd = Watchdogs(h.ctx, h.call_metrics)
    await wd.start()
    yield wd
    await wd.stop()
    assert len(h.ticks) == 0  # unsubscribed from the tick source


async def admit(h: Harness, agent: str, direction: str) -> str:
    adm = h.ctx.admission
    tenant, cfg = adm.resolve_outbound("acme", agent)
    admitted = await adm.admit(tenant, cfg, direction=direction,  # type: ignore[arg-type]
                               from_="+15551230000", to="+15557654321")
    return admitted.call_id


def hangups(h: Harness, reason: str) -> float:
    return h.call_metrics.watchdog_hangups.labels(reason)._value.get()


async def test_silence_timeout_counts_from_the_last_talk_event(
        h: Harness, dogs: Watchdogs) -> None:
    call = await open_call(h, await admit(h, "talker", "inbound"))
    assert call.call_id in dogs.watches
    h.clock.advance(4)
    dogs.on_talking(call.call_id)  # TALK_DETECT at t=4
    h.clock.advance(4)  # 8 s since the start, 4 s since the caller talked
    h.ticks.advance(PERIOD)
    assert not call.ended
    h.clock.advance(1.5)  # 5.5 s of silence, but no check due yet
    h.ticks.advance(PERIOD - 1)
    assert not call.ended
    h.ticks.advance(1)
    assert call.ended
    assert (call.end_reason, call.outcome) == ("silence-timeout", "gateway_hangup")
    assert hangups(h, "silence-timeout") == 1
    assert call.call_id not in dogs.watches  # forgotten at events.ended


async def test_max_duration_hangs_up_a_talking_call(h: Harness, dogs: Watchdogs) -> None:
    call = await open_call(h, await admit(h, "talker", "inbound"))
    for _ in range(7):  # talking every 4 s: never silent, 28 s in all
        h.clock.advance(4)
        dogs.on_talking(call.call_id)
        h.ticks.advance(PERIOD)
        assert not call.ended
    h.clock.advance(2.5)
    h.ticks.advance(PERIOD)
    assert call.end_reason == "max-duration"
    assert hangups(h, "max-duration") == 1
    assert hangups(h, "silence-timeout") == 0


async def test_early_amd_machine_is_stored_then_hangs_up(h: Harness, dogs: Watchdogs) -> None:
    cid = await admit(h, "dialer", "outbound")
    # AMD() runs in the dialplan before AudioSocket(): the result comes first.
    dogs.on_amd(cid, "MACHINE", "INITIALSILENCE-2500-2500")

    async def stored() -> bool:
        rec = await h.store.get_call(cid)
        return rec is not None and rec.answered_by is not None

    await until_async(stored)
    rec = await h.store.get_call(cid)
    assert rec is not None and rec.answered_by == "machine_start"
    assert h.call_metrics.answered_by.labels("machine_start", "asterisk")._value.get() == 1

    call = await open_call(h, cid)
    assert not call.ended
    h.ticks.advance(PERIOD)
    assert call.end_reason == "voicemail"
    assert hangups(h, "voicemail") == 1


async def test_leave_message_keeps_a_machine_answered_call(h: Harness, dogs: Watchdogs) -> None:
    call = await open_call(h, await admit(h, "messenger", "outbound"))
    dogs.on_amd(call.call_id, "MACHINE", "LONGGREETING-1500-1500")
    h.ticks.advance(PERIOD)
    assert not call.ended
    await dogs.stop()  # waits for the store write
    rec = await h.store.get_call(call.call_id)
    assert rec is not None and rec.answered_by == "machine_start"


async def test_voicemail_budget_gives_unknown(h: Harness, dogs: Watchdogs) -> None:
    call = await open_call(h, await admit(h, "dialer", "outbound"))
    h.clock.advance(2.9)
    h.ticks.advance(PERIOD)
    await dogs.stop()
    rec = await h.store.get_call(call.call_id)
    assert rec is not None and rec.answered_by is None
    await dogs.start()
    h.clock.advance(0.2)
    h.ticks.advance(PERIOD)
    await dogs.stop()
    rec = await h.store.get_call(call.call_id)
    assert rec is not None and rec.answered_by == "unknown"
    assert h.call_metrics.answered_by.labels("unknown", "budget")._value.get() == 1
    assert not call.ended  # an unknown answer is not hung up
    await dogs.start()


async def test_caller_speech_seen_by_the_call_holds_it_open(
        h: Harness, dogs: Watchdogs) -> None:
    call = await open_call(h, await admit(h, "talker", "inbound"))
    loud = (8000).to_bytes(2, "little", signed=True) * 160  # 20 ms
    h.clock.advance(4)
    for _ in range(10):  # 200 ms of speech at t=4, on the call's (the context's) clock
        call.on_caller_audio(loud)
    assert call.caller_speaking
    assert call.last_caller_speech == h.clock.monotonic()
    h.clock.advance(4.5)
    h.ticks.advance(PERIOD)
    assert not call.ended
    h.clock.advance(1)
    h.ticks.advance(PERIOD)
    assert call.end_reason == "silence-timeout"
