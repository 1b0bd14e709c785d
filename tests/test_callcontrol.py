# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""Call control end to end: gateway + AMI client + controller against the PBX simulator.

Real sockets everywhere: the simulator's AMI server and its AudioSocket legs to the
gateway. The simulated dialplan continues into ``[aigw-dial]`` when the gateway ends
the leg after setting ``AIGW_NEXT=dial``, rings the targets as scripted, and opens the
resume leg (docs/PROTOCOLS.md §4.3, §4.4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from audiosocket_gw.ami.client import AmiActionError, AmiClient, check_dialplan_value
from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.backends.base import CallInfo
from audiosocket_gw.callcontrol import (
    DIAL_VARIABLES,
    CallController,
    CallControlUnavailable,
    DialError,
    dial_options,
    dial_status,
    dial_targets,
)
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.dial import DialRequest, DialTarget
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.recordings.component import RecordingsComponent
from audiosocket_gw.settings import AmiSettings
from audiosocket_gw.store.sqlite import SqliteCallStore
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.testing.fakeapp import FakeTwilioApp
from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
from audiosocket_gw.twilio.ids import call_sid_for
from tests.helpers import MS, RawPeer, ami_gateway, running_gateway, until

TOML = """
[tenants.acme]
max_concurrent_calls = 10

[agents.bot]
tenant = "acme"
backend = "echo"
silence_timeout_s = 30.0
{extra}
"""

CALLEE = "+15550001111"
HUMAN = "+15550002222"
TEMPLATE = "PJSIP/{to}@aigw-trunk"


@asynccontextmanager
async def stack(monkeypatch: pytest.MonkeyPatch, *, agent_extra: str = "", **sim_kw: object
                ) -> AsyncIterator[tuple[Gateway, AmiSimulator]]:
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML.format(extra=agent_extra))
    sim = AmiSimulator(connect_audiosocket=True, **sim_kw)  # type: ignore[arg-type]
    async with sim, ami_gateway(monkeypatch, sim.address, config=str(cfg),
                                allow_unregistered=False) as gw:
        yield gw, sim


def provider(gw: Gateway) -> AsteriskProvider:
    p = gw.component(CallsApi).provider
    assert isinstance(p, AsteriskProvider)
    return p


async def live_call(gw: Gateway) -> str:
    cid = await provider(gw).start_outbound_call("acme", CALLEE, "+15559990000")
    await until(lambda: cid in gw.audiosocket.calls
                and cid in gw.component(CallTracker).channels)
    return cid


async def status(gw: Gateway, cid: str) -> CallStatus | None:
    rec = await gw.store.get_call(cid)
    return None if rec is None else rec.status


async def completions(gw: Gateway, cid: str) -> int:
    """How many inputs changed the call to a terminal status (must be exactly 1)."""
    return sum(1 for e in await gw.store.events(cid)
               if e.kind == "input" and e.data.get("changed")
               and e.data.get("to") in ("completed", "busy", "failed", "no-answer",
                                         "canceled"))


def setvars(sim: AmiSimulator) -> list[tuple[str, str, str]]:
    return [(a.get("Channel") or "", a.get("Variable") or "", a.get("Value") or "")
            for a in sim.actions if a.get("Action") == "Setvar"]


# -- (a) dial, answer, resume on the same call ------------------------------------------


async def test_dial_answered_then_resume_on_the_same_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    talk = 1200 * MS
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=1500 * MS,
                     outcomes={HUMAN: Outcome("answered", ring_s=50 * MS, talk_s=talk)}
                     ) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        channel = gw.component(CallTracker).channels[cid]
        call = gw.audiosocket.calls[cid]
        # Through the backend's CallControl, as a <Dial> verb or transfer tool would.
        call.dial(DialRequest(targets=(DialTarget("number", HUMAN),), timeout_s=20,
                              resume=True, metadata={"action": "https://app/after"}))
        await until(lambda: call.ended)
        assert call.end_reason == "dial"
        sets = setvars(sim)
        assert [v for _, v, _ in sets] == list(DIAL_VARIABLES)  # AIGW_NEXT last
        assert {c for c, _, _ in sets} == {channel}
        values = {v: val for _, v, val in sets}
        assert values["AIGW_NEXT"] == "dial"
        assert values["AIGW_DIAL_TARGETS"] == f"PJSIP/{HUMAN}@aigw-trunk"
        assert values["AIGW_DIAL_TIMEOUT"] == "20"
        assert values["AIGW_DIAL_OPTIONS"].startswith("g") and "L(14400000)" in \
            values["AIGW_DIAL_OPTIONS"]
        resume_id = values["AIGW_RESUME_ID"]
        assert resume_id
        # The leg ended with the 00 hangup frame, and nothing but audio before it.
        await until(lambda: len(sim.legs) >= 1)
        assert sim.legs[0].ended_by == "gateway-hangup" and sim.legs[0].error is None
        # While Asterisk dials, the call is still in progress (not completed by the
        # AudioSocket end) and no AMI Hangup was sent.
        assert await status(gw, cid) is CallStatus.IN_PROGRESS
        assert not [a for a in sim.actions if a.get("Action") == "Hangup"]
        assert sim.dials == [(channel, f"PJSIP/{HUMAN}@aigw-trunk", "20",
                              values["AIGW_DIAL_OPTIONS"])]
        # The resume leg connects with the parent call in its metadata.
        await until(lambda: resume_id in gw.audiosocket.calls, within=5.0)
        leg = gw.audiosocket.calls[resume_id]
        assert leg.info.metadata["parent_call_id"] == cid
        assert leg.info.metadata["action"] == "https://app/after"
        assert leg.info.tenant == "acme" and leg.info.agent == "bot"
        out = await ctl.outcome(resume_id, 2.0)
        assert out.status == "completed" and out.asterisk_status == "ANSWER"
        assert out.duration_s == int(talk) and out.duration_s >= 1
        assert out.dial_call_sid.startswith("CA")
        assert await ctl.outcome(cid, 0.1) == out
        assert await status(gw, cid) is CallStatus.IN_PROGRESS
        # The resumed leg is the same call: no record of its own.
        assert await gw.store.get_call(resume_id) is None
        # The simulated caller hangs up on the resumed leg: the call completes, once.
        await until(lambda: cid not in sim.channels, within=5.0)
        await until(lambda: status(gw, cid), within=1.0)
        await until(lambda: _is(gw, cid, CallStatus.COMPLETED))
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.answered_at is not None and rec.ended_at is not None
        assert rec.ended_at - rec.answered_at >= talk
        assert await completions(gw, cid) == 1
        assert await gw.store.active_slots("acme") == 0
        kinds = [e.kind for e in await gw.store.events(cid)]
        assert "dial" in kinds and "dial_outcome" in kinds
        assert all(r.error is None for r in sim.legs)


async def _has_transcript(gw: Gateway, cid: str, text: str) -> bool:
    return any(line.get("text") == text for e in await gw.store.events(cid)
               if e.kind == "transcript" for line in e.data.get("lines", []))


async def _is(gw: Gateway, cid: str, st: CallStatus) -> bool:
    return await status(gw, cid) is st


# -- (b) busy and no-answer -------------------------------------------------------------


@pytest.mark.parametrize(("kind", "twilio", "asterisk"), [
    ("busy", "busy", "BUSY"),
    ("no-answer", "no-answer", "NOANSWER"),
    ("congestion", "failed", "CONGESTION"),
    ("failed", "failed", "CHANUNAVAIL"),
])
async def test_dial_failures_come_back_to_the_bot(
        monkeypatch: pytest.MonkeyPatch, kind: str, twilio: str, asterisk: str) -> None:
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome(kind, ring_s=60 * MS)}  # type: ignore[arg-type]
                     ) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        resume_id = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                                    resume=True))
        assert resume_id is not None
        out = await ctl.outcome(resume_id, 3.0)
        assert (out.status, out.asterisk_status, out.duration_s) == (twilio, asterisk, 0)
        await until(lambda: resume_id in gw.audiosocket.calls)
        assert await status(gw, cid) is CallStatus.IN_PROGRESS
        # The bot hangs up the resumed leg: the one call completes, the channel goes.
        leg = gw.audiosocket.calls[resume_id]
        leg.transcript("bot", "welcome back")
        leg.hangup("bot-hangup")
        await until(lambda: _is(gw, cid, CallStatus.COMPLETED))
        await until(lambda: cid not in sim.channels)
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.hangup_reason == "bot-hangup"
        assert await completions(gw, cid) == 1
        await until(lambda: _has_transcript(gw, cid, "welcome back"))
        if kind == "failed":  # no channel at all: no DialBegin/DialEnd (§4.3)
            assert out.dial_call_sid == ""


async def test_no_answer_within_the_dial_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rings longer than Dial's timeout (1 s): NOANSWER at the timeout.
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome("answered", ring_s=5.0)}) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        t0 = time.monotonic()
        rid = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                              timeout_s=1, resume=True))
        assert rid is not None
        out = await ctl.outcome(rid, 1.0 + 2000 * MS)
        assert out.status == "no-answer" and 0.9 <= time.monotonic() - t0 < 1.0 + 1500 * MS
        # the caller goes back to the agent on the resume leg: let it end (its 3 s), so
        # the test does not stop the gateway in the middle of that leg's set-up
        await until(lambda: len(sim.legs) >= 2, within=6.0)


# -- (c) no resume: the call ends after Dial ----------------------------------------------


async def test_dial_without_resume_ends_the_call_once(monkeypatch: pytest.MonkeyPatch) -> None:
    talk = 300 * MS
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome("answered", ring_s=40 * MS, talk_s=talk),
                               "sip:desk@pbx.example": Outcome("busy", ring_s=20 * MS)}
                     ) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        t0 = time.time()
        rid = await ctl.dial(cid, DialRequest(
            targets=(DialTarget("number", HUMAN), DialTarget("sip", "sip:desk@pbx.example")),
            caller_id="+15559990000", hangup_on_star=True, time_limit_s=60))
        assert rid is None
        values = {v: val for _, v, val in setvars(sim)}
        assert values["AIGW_RESUME_ID"] == ""
        assert values["AIGW_DIAL_TARGETS"] == (
            f"PJSIP/{HUMAN}@aigw-trunk&PJSIP/aigw-trunk/sip:desk@pbx.example")
        assert values["AIGW_DIAL_OPTIONS"] == "HL(60000)"  # no g: the caller is hung up
        assert values["AIGW_DIAL_CALLERID"] == "+15559990000"
        out = await ctl.outcome(cid, 3.0)
        assert out.status == "completed" and out.asterisk_status == "ANSWER"
        await until(lambda: _is(gw, cid, CallStatus.COMPLETED))
        elapsed = time.time() - t0
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.hangup_cause == 16
        assert rec.duration_s is not None and rec.billable_s is not None
        assert talk <= rec.duration_s <= elapsed + 5.0
        assert rec.billable_s >= 1
        assert await completions(gw, cid) == 1
        assert await gw.store.active_slots("acme") == 0
        assert len(sim.legs) == 1  # no resume leg
        # Both rang at once: the busy SIP desk ended with cause 17, the number answered.
        assert 17 in [c for _, c in sim.ended]


@pytest.mark.parametrize("resume", [True, False])
async def test_status_callbacks_one_call_one_sid_one_completed(
        monkeypatch: pytest.MonkeyPatch, resume: bool) -> None:
    forms: list[dict[str, str]] = []

    async def receive(request: web.Request) -> web.Response:
        forms.append({k: str(v) for k, v in (await request.post()).items()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    extra = (f'status_callback = "{url}"\n'
             'status_events = ["initiated", "ringing", "answered", "completed"]')
    try:
        async with stack(monkeypatch, agent_extra=extra, ring_s=30 * MS,
                         audiosocket_seconds=600 * MS,
                         outcomes={HUMAN: Outcome("answered", ring_s=40 * MS,
                                                  talk_s=200 * MS)}) as (gw, sim):
            ctl = gw.component(CallController)
            cid = await live_call(gw)
            rid = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                                  resume=resume))
            assert (rid is not None) is resume
            # Mid-Dial (the human talks 200 ms): the call is not completed for the app.
            await asyncio.sleep(120 * MS)
            assert [f["CallStatus"] for f in forms].count("completed") == 0
            await until(lambda: _is(gw, cid, CallStatus.COMPLETED), within=5.0)
            await until(lambda: any(f["CallStatus"] == "completed" for f in forms))
            await asyncio.sleep(200 * MS)  # anything late would show up here
            assert len(sim.legs) == (2 if resume else 1)
    finally:
        await runner.cleanup()
    assert {f["CallSid"] for f in forms} == {call_sid_for(cid)}
    assert [f["CallStatus"] for f in forms].count("completed") == 1
    assert [f["CallStatus"] for f in forms][-1] == "completed"
    assert [f["CallStatus"] for f in forms].count("in-progress") == 1


# -- (d) DTMF through PlayDTMF, never 0x03 frames -------------------------------------------


async def test_send_dtmf_uses_playdtmf_one_digit_per_action(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     dtmf_scale=0.2) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        channel = gw.component(CallTracker).channels[cid]
        t0 = time.monotonic()
        assert await ctl.send_dtmf(cid, "1w2#") == 3
        assert time.monotonic() - t0 >= 0.5  # the w pause
        gw.audiosocket.calls[cid].send_dtmf("9")  # the backend's CallControl path
        await until(lambda: len(sim.dtmf_played) == 4)
        assert sim.dtmf_played == [(channel, d, 250) for d in "12#9"]
        acts = [a for a in sim.actions if a.get("Action") == "PlayDTMF"]
        assert [a.get("Digit") for a in acts] == ["1", "2", "#", "9"]
        with pytest.raises(ValueError):
            await ctl.send_dtmf(cid, "1,2")
        gw.audiosocket.calls[cid].hangup("bot-hangup")
        await until(lambda: len(sim.legs) == 1)
        # The simulator flags any non-audio frame from the gateway as an error.
        assert sim.legs[0].error is None and sim.legs[0].ended_by == "gateway-hangup"
        assert (await status(gw, cid)) is CallStatus.COMPLETED


# -- (e) the simulator is Asterisk: LOCAL() outside Gosub, real replies --------------------


async def test_simulator_refuses_local_outside_gosub_and_answers_like_asterisk() -> None:
    async with AmiSimulator(ring_s=10 * MS, talk_s=5.0) as sim:
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw",
                                       secret="secret"))
        await client.start()
        try:
            assert await client.wait_connected(5.0)
            task = asyncio.ensure_future(sim.inbound_call(talk_s=5.0))
            await until(lambda: sim.channels)
            ch = next(iter(sim.channels.values()))
            # Asterisk 22 answers Success but the write is refused (app_stack.c).
            await client.setvar(ch.name, "LOCAL(x)", "1")
            assert sim.errors == ["Tried to set LOCAL(x), but we aren't within a Gosub "
                                  "routine"]
            assert await client.getvar(ch.name, "LOCAL(x)") == ""
            await client.setvar(ch.uniqueid, "AIGW_X", "a&b")  # Uniqueid works too
            assert await client.getvar(ch.name, "AIGW_X") == "a&b"
            with pytest.raises(AmiActionError, match="No such channel"):
                await client.setvar("PJSIP/nope-1", "AIGW_X", "1")
            with pytest.raises(AmiActionError, match="Channel not found"):
                await client.play_dtmf("PJSIP/nope-1", "1")
            with pytest.raises(AmiActionError, match="Channel does not exist: PJSIP/nope-1"):
                await client.redirect("PJSIP/nope-1", "aigw-dial")
            await client.redirect(ch.name, "aigw-park")
            await client.bridge(ch.name, ch.uniqueid)
            for bad in ("a,b", "${EVIL}", "x y", 'q"', "a(b", "a)b(", "^{x}"):
                with pytest.raises(ValueError):
                    await client.setvar(ch.name, "AIGW_X", bad)
            with pytest.raises(ValueError):  # an empty Channel would set a global
                await client.setvar("", "AIGW_X", "1")
            sim.end_channel(ch.uniqueid)
            await task
        finally:
            await client.stop()


# -- pure parts ----------------------------------------------------------------------------


def test_targets_options_and_status_mapping() -> None:
    req = DialRequest(targets=(DialTarget("number", "(555) 000-2222", send_digits="ww12#"),),
                      resume=True, hangup_on_star=True, time_limit_s=90)
    assert dial_targets(req.targets, TEMPLATE) == "PJSIP/+15550002222@aigw-trunk"
    assert dial_options(req) == "gHL(90000)D(ww12#)"
    for bad in (DialTarget("number", "12;x"), DialTarget("sip", "sip:a,b@h"),
                DialTarget("sip", "sip:${X}@h")):
        with pytest.raises(DialError):
            dial_targets((bad,), TEMPLATE)
    with pytest.raises(DialError):
        dial_targets((), TEMPLATE)
    with pytest.raises(DialError):  # a SIP URI needs a PJSIP endpoint in the template
        dial_targets((DialTarget("sip", "sip:a@h"),), "IAX2/{to}")
    with pytest.raises(DialError):
        dial_options(DialRequest(targets=(DialTarget("number", HUMAN, "1"),
                                          DialTarget("number", CALLEE, "2"))))
    with pytest.raises(DialError):
        dial_options(DialRequest(targets=(DialTarget("number", HUMAN, "1,2"),)))
    assert [dial_status(s) for s in ("ANSWER", "BUSY", "NOANSWER", "CANCEL", "CONGESTION",
                                     "CHANUNAVAIL", "DONTCALL")] == [
        "completed", "busy", "no-answer", "canceled", "failed", "failed", "failed"]
    assert check_dialplan_value("gHL(60000)") == "gHL(60000)"
    assert dial_targets((DialTarget("extension", "600@from-internal"),), TEMPLATE) == \
        "Local/600@from-internal"
    for bad in ("600", "6,00@ctx", "600@a b", "${X}@ctx"):
        with pytest.raises(DialError):
            dial_targets((DialTarget("extension", bad),), TEMPLATE)


async def test_dial_refused_without_a_live_call(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0) as (gw, sim):
        ctl = gw.component(CallController)
        with pytest.raises(CallControlUnavailable):
            await ctl.dial("0b6f2b1c-3f0e-4d0a-9a51-2f4f2c1d9e10",
                           DialRequest(targets=(DialTarget("number", HUMAN),)))
        cid = await live_call(gw)
        with pytest.raises(DialError):
            await ctl.dial(cid, DialRequest(targets=(DialTarget("number", "nope"),)))
        with pytest.raises(DialError):
            await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                            caller_id="x"))
        assert not setvars(sim)  # nothing reached Asterisk
        assert cid in gw.audiosocket.calls  # and the call goes on
        with pytest.raises(LookupError):
            await ctl.outcome(cid, 0.1)


async def test_dial_outcome_is_none_when_the_store_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A resumed leg asks the store for the outcome another node stored; a store error
    there (database gone) means "unknown" for the voice backend, not an exception."""
    async with SqliteCallStore(tmp_path / "gone.sqlite") as broken:
        pass  # closed: every call raises StoreError("store is not open")
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0) as (gw, _sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        call = gw.audiosocket.calls[cid]
        with monkeypatch.context() as m:
            m.setattr(ctl, "ctx", dataclasses.replace(ctl.ctx, store=broken))
            with caplog.at_level(logging.WARNING, "audiosocket_gw.callcontrol"):
                assert await call.dial_outcome(1.0) is None
                with pytest.raises(LookupError):
                    await ctl.outcome("no-such-resume-id", 1.0)
        assert [r.getMessage() for r in caplog.records
                if "not readable from the store" in r.getMessage()] == [
            f"dial {cid}: outcome not readable from the store (store is not open)",
            "dial no-such-resume-id: outcome not readable from the store (store is not open)"]
        assert cid in gw.audiosocket.calls  # and the call goes on


async def test_resumed_leg_streams_with_the_parent_call_sid() -> None:
    """A Twilio Media Streams app sees the resumed leg as the same call (CallSid)."""
    parent = "0b6f2b1c-3f0e-4d0a-9a51-2f4f2c1d9e10"
    leg_id = "5d1c1a52-0f7e-4b8e-8a4e-6a0d1f2b3c4d"
    async with FakeTwilioApp() as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw:
        gw.registry.register(CallInfo(call_id=leg_id, metadata={"parent_call_id": parent}))
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid(leg_id)
        session = await app.wait_for_session()
        await app.wait_for(lambda: session.call_sid is not None, 5.0)
        assert session.call_sid == call_sid_for(parent) != call_sid_for(leg_id)
        await peer.close()


async def test_mixmonitor_recording_spans_the_dial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asterisk's MixMonitor keeps recording the channel through Dial(): the gateway
    waits for the parent's file only, and not before the call really ends."""
    extra = 'record = true\nrecording_source = "mixmonitor"'
    async with stack(monkeypatch, agent_extra=extra, ring_s=30 * MS,
                     audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome("busy", ring_s=40 * MS)}) as (gw, sim):
        watcher = gw.component(RecordingsComponent).watcher
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        assert set(watcher.pending) == {cid}
        rid = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                              resume=True))
        assert rid is not None
        await until(lambda: rid in gw.audiosocket.calls)
        assert set(watcher.pending) == {cid}  # no file expected for the resumed leg
        assert watcher.pending[cid].detector.ended_at is None  # the call goes on
        gw.audiosocket.calls[rid].hangup("bot-hangup")
        await until(lambda: watcher.pending.get(cid) is None
                    or watcher.pending[cid].detector.ended_at is not None)


async def test_resumed_leg_can_dial_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """[aigw-dial] loops: the resumed leg asks for another Dial (no resume this time)."""
    other = "+15550003333"
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome("no-answer", ring_s=40 * MS),
                               other: Outcome("answered", ring_s=40 * MS, talk_s=100 * MS)}
                     ) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        rid = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                              resume=True))
        assert rid is not None
        assert (await ctl.outcome(rid, 3.0)).status == "no-answer"
        await until(lambda: rid in gw.audiosocket.calls)
        assert await ctl.dial(rid, DialRequest(targets=(DialTarget("number", other),))) is None
        second = await ctl.outcome(rid, 3.0)
        assert second.status == "completed" and second.asterisk_status == "ANSWER"
        await until(lambda: _is(gw, cid, CallStatus.COMPLETED))
        assert [d[1] for d in sim.dials] == [f"PJSIP/{HUMAN}@aigw-trunk",
                                             f"PJSIP/{other}@aigw-trunk"]
        assert await completions(gw, cid) == 1
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.hangup_cause == 16


async def test_outcome_does_not_hang_when_ami_drops_during_the_dial(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, ring_s=30 * MS, audiosocket_seconds=3.0,
                     outcomes={HUMAN: Outcome("answered", ring_s=30.0)}) as (gw, sim):
        ctl = gw.component(CallController)
        cid = await live_call(gw)
        rid = await ctl.dial(cid, DialRequest(targets=(DialTarget("number", HUMAN),),
                                              resume=True))
        assert rid is not None
        await until(lambda: sim.dials)
        sim.drop_sessions()
        sim.end_channel(cid, 0)  # the caller hangs up while nobody listens
        out = await ctl.outcome(rid, 5.0)  # the resync closes the call, and the dial
        assert out.status == "canceled"
        assert await status(gw, cid) is CallStatus.COMPLETED
        assert not gw.registry.is_registered(rid)
