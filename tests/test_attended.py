# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""Attended transfer end to end (docs/DEPLOY.md §7, audiosocket_gw/attended.py): the
local Realtime bot calls transfer_call for an attended destination, the AMI simulator
plays Asterisk (Redirect to [aigw-hold], Originate into [aigw-consult] with a real
AudioSocket leg for the person, Bridge, Redirect to [aigw-resume]) and a scripted
person who answers and presses 1 or 2, or never answers."""

from __future__ import annotations

import json

import pytest

from audiosocket_gw.ami.protocol import AmiMessage
from audiosocket_gw.callcontrol import CallController
from audiosocket_gw.testing.localbot import ScriptStep
from audiosocket_gw.testing.simulator.ami import Outcome, SimChannel
from tests.helpers import until
from tests.test_agent_tools import HUMAN, Stack, _count, _status_is, stack

SUMMARY = "Alice wants a refund for order 42."
SCRIPT = [ScriptStep(say="Let me get my manager.", call="transfer_call",
                     arguments={"destination": "boss", "summary": SUMMARY})]


def actions(st: Stack, name: str) -> list[AmiMessage]:
    return [a for a in st.sim.actions if (a.get("Action") or "").lower() == name.lower()]


def originate(st: Stack) -> AmiMessage | None:
    return next((a for a in actions(st, "Originate")
                 if a.get("Context") == "aigw-consult"), None)


async def transfers(st: Stack, cid: str) -> list[tuple[str, str]]:
    return [(e["destination"], e["outcome"]) for e in await st.events(cid, "transfer")]


def metric(st: Stack, outcome: str) -> float:
    return float(st.gw.metrics.transfers.labels("attended", outcome)._value.get())


async def test_attended_transfer_accepted_bridges_caller_and_person(
        monkeypatch: pytest.MonkeyPatch) -> None:
    person = Outcome("answered", ring_s=0.05, press="1", talk_s=0.6, caller_audio=False)
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}) as st:
        legs: list[str] = []  # what the components (watchdogs, MOS, callbacks...) see
        st.gw.events.started.connect(lambda call: legs.append(call.call_id))
        st.gw.events.ended.connect(lambda call: legs.append(call.call_id))
        cid = await st.call()
        await until(lambda: actions(st, "Bridge"), within=10.0)
        caller = st.sim.legs[0]
        # 1. the caller left AudioSocket by a Redirect to hold (a plain EOF: moved)
        redirect = actions(st, "Redirect")[0]
        assert redirect.get("Context") == "aigw-hold"
        assert caller.ended_by == "moved"
        setvars = {(a.get("Variable") or ""): (a.get("Value") or "")
                   for a in actions(st, "Setvar")}
        assert setvars["AIGW_HOLD_TIMEOUT"].isdigit()
        # 2. the person was originated into [aigw-consult] with a pre-registered id
        orig = originate(st)
        assert orig is not None and HUMAN in (orig.get("Channel") or "")
        assert orig.get("Async") == "true" and orig.get("ChannelId")
        consult_id = orig.variables()["AIGW_CONSULT_ID"]
        # 3. Bridge: Channel1 the caller's channel, Channel2 the person's
        bridge = actions(st, "Bridge")[0]
        caller_channel = redirect.get("Channel")
        assert bridge.get("Channel1") == caller_channel and bridge.get("Tone") == "no"
        assert bridge.get("Channel2") and bridge.get("Channel2") != caller_channel
        assert bridge.get("Channel2", "").startswith("PJSIP/")
        # the person heard the summary (audible audio on their leg) before pressing 1
        await until(lambda: any(r.call_id == consult_id for r in st.sim.legs), within=5.0)
        leg = next(r for r in st.sim.legs if r.call_id == consult_id)
        assert leg.ended_by == "moved" and leg.first_audio_s is not None
        assert sum(1 for _, lvl in leg.heard if lvl >= 256) >= 10  # >= 200 ms of speech
        # the AI left: one bot session, closed; no AudioSocket call left in the gateway
        assert len(st.bot.sessions) == 1
        await until(lambda: st.bot.sessions[0].ended_at is not None)
        await until(lambda: not st.gw.audiosocket.calls)
        # the person hangs up after talking: the caller's channel ends, the call record
        # completes as transferred
        await until(lambda: _status_is(st, cid, "completed"), within=6.0)
        rec = await st.gw.store.get_call(cid)
        assert rec is not None and rec.hangup_reason == "transferred"
        await until(lambda: _count(st, cid, "transfer", 2))
        assert await transfers(st, cid) == [("boss", "started"), ("boss", "completed")]
        assert metric(st, "started") == 1 and metric(st, "completed") == 1
        # the tool call declared the summary argument, the person's leg is no call record
        assert await st.gw.store.get_call(consult_id) is None
        # nor a call for the components: no silence watchdog cuts the person's decision,
        # no status callback, MOS, recording or console row for it
        assert cid in legs and consult_id not in legs


async def _back_with_the_bot(st: Stack, cid: str, outcome: str) -> None:
    await until(lambda: len(st.bot.sessions) >= 2, within=10.0)
    second = st.bot.sessions[1]
    await until(lambda: any(f"did not go through ({outcome})" in json.dumps(i)
                            for i in second.items))
    said = [c.get("text") for i in second.items if i.get("role") == "assistant"
            for c in i.get("content", [])]
    assert "Let me get my manager." in said  # the conversation before the transfer
    resume = actions(st, "Redirect")[-1]
    assert resume.get("Context") == "aigw-resume"
    setvars = [(a.get("Variable"), a.get("Value")) for a in actions(st, "Setvar")]
    resume_id = next(v for k, v in setvars if k == "AIGW_RESUME_ID" and v)
    # the caller's new leg is the pre-registered resume id, on the same call record
    await until(lambda: resume_id in st.gw.audiosocket.calls
                or any(r.call_id == resume_id for r in st.sim.legs))
    assert not actions(st, "Bridge")
    await until(lambda: _count(st, cid, "transfer", 2))
    assert await transfers(st, cid) == [("boss", "started"), ("boss", outcome)]
    assert metric(st, outcome) == 1
    rec = await st.gw.store.get_call(cid)
    assert rec is not None and rec.status.value == "in-progress"


async def test_attended_transfer_declined_brings_the_caller_back_to_the_bot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    person = Outcome("answered", ring_s=0.05, press="2", caller_audio=False)
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}, seconds=8.0) as st:
        cid = await st.call()
        await _back_with_the_bot(st, cid, "declined")
        # the person was hung up by the gateway
        orig = originate(st)
        assert orig is not None
        hangups = [a.get("Channel") for a in actions(st, "Hangup")]
        assert any((h or "").startswith("PJSIP/") for h in hangups)


@pytest.mark.parametrize("person,outcome,decide", [
    (Outcome("no-answer", ring_s=0.05), "no-answer", 5.0),
    (Outcome("busy", ring_s=0.05), "busy", 5.0),
    (Outcome("answered", ring_s=0.05, caller_audio=False), "timeout", 1.0),
])
async def test_attended_transfer_unanswered_or_undecided_comes_back(
        monkeypatch: pytest.MonkeyPatch, person: Outcome, outcome: str, decide: float) -> None:
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}, seconds=8.0,
                     decide_s=decide) as st:
        cid = await st.call()
        await _back_with_the_bot(st, cid, outcome)


async def _caller_on_hold(st: Stack) -> SimChannel:
    """Place the call, let the model ask for the transfer; the caller's channel once
    Redirected to [aigw-hold] and the person's Originate sent."""
    await st.call()
    await until(lambda: originate(st) is not None, within=10.0)
    await until(lambda: any(c.application == "MusicOnHold" for c in st.sim.channels.values()))
    return next(c for c in st.sim.channels.values() if c.application == "MusicOnHold")


async def test_the_caller_never_stays_on_hold_when_the_gateway_goes_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """[aigw-hold] resumes the caller by itself after AIGW_HOLD_TIMEOUT (here the
    simulator shortens it): the dialplan's safety net when the gateway or AMI is gone."""
    person = Outcome("answered", ring_s=30.0)  # rings for longer than the test
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}, seconds=8.0) as st:
        ch = await _caller_on_hold(st)
        assert int(ch.variables["AIGW_HOLD_TIMEOUT"]) >= 5 + 5 + 10  # ring + decide + margin
        ch.wake.set()  # MusicOnHold's duration is up (simulated: no 40 s wait)
        await until(lambda: len(st.bot.sessions) >= 2, within=10.0)
        second = st.bot.sessions[1]
        await until(lambda: any("did not go through" in json.dumps(i) for i in second.items))
        assert not actions(st, "Bridge")


async def test_decision_time_counts_from_the_end_of_the_summary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """decide_timeout_s (here 1 s) starts once the summary and prompt have played: a
    person who presses 1.8 s after the first audible frame (the spoken summary, or the
    beeps without a TTS engine, last longer than 1 s) is accepted, not timed out."""
    person = Outcome("answered", ring_s=0.05, press="1", press_after_s=1.8, talk_s=0.3,
                     caller_audio=False)
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}, decide_s=1.0) as st:
        cid = await st.call()
        await until(lambda: actions(st, "Bridge"), within=10.0)
        await until(lambda: _count(st, cid, "transfer", 2))
        assert await transfers(st, cid) == [("boss", "started"), ("boss", "completed")]


async def test_shutdown_mid_transfer_hangs_up_the_person_and_resumes_the_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway stopping while the person rings does not leave the caller on hold until
    [aigw-hold]'s own timeout: the person is hung up and the caller Redirected back."""
    person = Outcome("answered", ring_s=30.0)  # still ringing when the gateway stops
    async with stack(monkeypatch, SCRIPT, outcomes={HUMAN: person}, seconds=8.0) as st:
        await _caller_on_hold(st)
        await st.gw.component(CallController).attended.stop()
        assert [a.get("Context") for a in actions(st, "Redirect")] == [
            "aigw-hold", "aigw-resume"]
        orig = originate(st)
        assert orig is not None
        assert any(a.get("Channel") in (orig.get("ChannelId"), orig.get("Channel"))
                   or (a.get("Channel") or "").startswith("PJSIP/")
                   for a in actions(st, "Hangup"))
        assert metric(st, "failed") == 1
