# ruff: noqa: ASYNC110  (tests poll the store/receivers with a deadline)
"""``<Dial>`` end to end over real sockets, with TwiML built by the ``twilio`` SDK.

A call placed through the gateway's Twilio REST API (official SDK) runs the app's
``<Dial>``; over the PBX simulator's AMI the gateway ``Setvar``s the dial variables and
ends the AudioSocket leg, the simulated ``[aigw-dial]`` runs ``Dial()`` with the
scripted outcome, the caller comes back on a resumed AudioSocket leg, and the app's
action URL gets ``DialCallStatus``/``DialCallDuration``/``DialCallSid`` with the call's
own ``CallSid``; the TwiML it returns (``<Say>`` then ``<Hangup>``) runs on that leg.
"""

from __future__ import annotations

import asyncio
import io
import shutil

import aiohttp
import pytest
import soundfile as sf
from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import Dial, VoiceResponse

from audiosocket_gw.testing.simulator.ami import Outcome
from audiosocket_gw.twilio.ids import call_id_for_sid, derived_account_sid
from tests.helpers import MS, until
from tests.twilio.test_rest import SID, TOKEN, Stack, basic, stack

HUMAN = "+15550002001"


def dial_doc(target: str = HUMAN, *, action: str | None = "/dialed", sip: bool = False) -> str:
    dial = Dial(action=action, timeout=5) if action else Dial(timeout=5)
    if sip:
        dial.sip(target)
    else:
        dial.number(target)
    return str(VoiceResponse().append(dial))


def setvars(s: Stack) -> dict[str, str]:
    return {a.get("Variable") or "": a.get("Value") or ""
            for a in s.sim.actions if a.get("Action") == "Setvar"}


async def terminal_inputs(s: Stack, call_id: str) -> int:
    return sum(1 for e in await s.gw.store.events(call_id)
               if e.kind == "input" and e.data.get("changed")
               and e.data.get("to") in ("completed", "busy", "failed", "no-answer", "canceled"))


async def place(s: Stack, doc: str, to: str = "+15550001111") -> str:
    s.app.docs["/voice"] = doc
    call = await s.sdk(s.client.calls.create, to=to, from_="+15559990000",
                       url=s.app.base + "/voice", status_callback=s.app.base + "/status",
                       status_callback_event=["initiated", "answered", "completed"])
    return str(call.sid)


@pytest.mark.parametrize(("outcome", "dial_status"), [
    (Outcome("answered", talk_s=0.4), "completed"),
    (Outcome("busy"), "busy"),
    (Outcome("no-answer"), "no-answer"),
])
async def test_dial_action_resumes_the_same_call_and_runs_its_twiml(
        monkeypatch: pytest.MonkeyPatch, outcome: Outcome, dial_status: str) -> None:
    async with stack(monkeypatch) as s:
        s.sim.outcomes[HUMAN] = outcome
        bye = VoiceResponse()
        bye.say("Thanks, goodbye.")
        bye.hangup()
        s.app.docs["/dialed"] = str(bye)
        sid = await place(s, dial_doc())
        await s.status(sid, "completed", within=8.0)
        # The dial variables went over AMI, then Dial() ran the target with timeout 5.
        values = setvars(s)
        assert values["AIGW_NEXT"] == "dial" and values["AIGW_RESUME_ID"]
        assert HUMAN in values["AIGW_DIAL_TARGETS"] and values["AIGW_DIAL_TIMEOUT"] == "5"
        ((_, targets, timeout, options),) = s.sim.dials
        assert HUMAN in targets and timeout == "5" and "g" in options
        # The app's action got the outcome, for the same CallSid as everything else.
        await until(lambda: s.app.of("/dialed"))
        (form,) = s.app.of("/dialed")
        assert form["CallSid"] == sid and form["DialCallStatus"] == dial_status
        if dial_status == "completed":
            assert form["DialCallSid"].startswith("CA") and form["DialCallSid"] != sid
            assert 0 <= int(form["DialCallDuration"]) <= 1
        else:
            assert form["DialCallDuration"] == "0"
        assert s.app.of("/voice")[0]["CallSid"] == sid
        # Two AudioSocket legs: the first ended by the gateway (Dial), the resumed one
        # heard the <Say> and was hung up by the gateway (<Hangup>).
        await until(lambda: len(s.sim.legs) == 2)
        first, resumed = s.sim.legs
        assert first.ended_by in ("gateway-hangup", "gateway-close")
        assert resumed.ended_by in ("gateway-hangup", "gateway-close")
        if shutil.which("espeak-ng"):
            loud = [t for t, level in resumed.heard if level > 300]
            assert loud and loud[-1] - loud[0] >= 0.5  # "Thanks, goodbye." was heard
        # One call record, completed once, status callbacks all for the same CallSid.
        call_id = call_id_for_sid(sid) or ""
        await until(lambda: len(s.app.of("/status")) >= 3)
        forms = s.app.of("/status")
        assert [f["CallStatus"] for f in forms] == ["initiated", "in-progress", "completed"]
        assert {f["CallSid"] for f in forms} == {sid}
        assert await terminal_inputs(s, call_id) == 1
        rec = await s.gw.store.get_call(call_id)
        assert rec is not None and rec.hangup_reason == "twiml-hangup"


async def test_dial_without_action_ends_the_call_after_the_dial(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        s.sim.outcomes[HUMAN] = Outcome("answered", talk_s=0.3)
        sid = await place(s, dial_doc(action=None))
        await s.status(sid, "completed", within=8.0)
        ((_, targets, _, options),) = s.sim.dials
        assert HUMAN in targets and "g" not in options  # nothing to come back to
        assert setvars(s)["AIGW_RESUME_ID"] == ""
        assert len(s.sim.legs) == 1  # no resumed leg
        await until(lambda: len(s.app.of("/status")) >= 3)
        await asyncio.sleep(100 * MS)  # nothing more arrives
        forms = s.app.of("/status")
        assert [f["CallStatus"] for f in forms] == ["initiated", "in-progress", "completed"]
        assert {f["CallSid"] for f in forms} == {sid}
        call_id = call_id_for_sid(sid) or ""
        assert await terminal_inputs(s, call_id) == 1
        events = [e.kind for e in await s.gw.store.events(call_id)]
        assert "dial" in events and "dial_outcome" in events


async def test_dial_sip_goes_through_the_trunk_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        uri = "sip:agent@pbx.example.com"
        s.sim.outcomes[uri] = Outcome("busy")
        hang = VoiceResponse()
        hang.hangup()
        s.app.docs["/dialed"] = str(hang)
        sid = await place(s, dial_doc(uri, sip=True))
        await s.status(sid, "completed", within=8.0)
        ((_, targets, _, _),) = s.sim.dials
        assert targets.startswith("PJSIP/") and targets.endswith("/" + uri)
        await until(lambda: s.app.of("/dialed"))
        (form,) = s.app.of("/dialed")
        assert form["CallSid"] == sid and form["DialCallStatus"] == "busy"


@pytest.mark.parametrize("action", [True, False])
async def test_a_refused_dial_runs_the_action_with_failed_or_hangs_up(
        monkeypatch: pytest.MonkeyPatch, action: bool) -> None:
    """Call control refuses a ``<Dial>`` it cannot place (here ``callerId`` is a name,
    not a number): nothing is dialed, and the leg does not stay up in silence."""
    async with stack(monkeypatch) as s:
        dial = Dial(caller_id="alice", timeout=5, **({"action": "/dialed"} if action else {}))
        dial.number(HUMAN)
        hang = VoiceResponse()
        hang.hangup()
        s.app.docs["/dialed"] = str(hang)
        sid = await place(s, str(VoiceResponse().append(dial)))
        await s.status(sid, "completed", within=5.0)
        assert s.sim.dials == [] and "AIGW_NEXT" not in setvars(s)
        rec = await s.gw.store.get_call(call_id_for_sid(sid) or "")
        assert rec is not None
        if action:
            (form,) = s.app.of("/dialed")
            assert form["CallSid"] == sid and form["DialCallStatus"] == "failed"
            assert form["DialCallSid"] == "" and form["DialCallDuration"] == "0"
            assert rec.hangup_reason == "twiml-hangup"
        else:
            assert s.app.of("/dialed") == [] and rec.hangup_reason == "dial-failed"


# -- DTMF toward the caller's peer: AMI PlayDTMF, never 0x03 frames --------------------


def subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(d in it for d in part)


async def test_send_digits_and_play_digits_go_through_play_dtmf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        doc = VoiceResponse()
        doc.pause(length=1)
        doc.play(digits="9w8")
        doc.hangup()
        call = await s.sdk(s.client.calls.create, to="+15550001111", from_="+15559990000",
                           twiml=str(doc), send_digits="12#")
        await s.status(call.sid, "completed", within=8.0)
        played = [d for _, d, _ in s.sim.dtmf_played]
        actions = [a.get("Digit") for a in s.sim.actions if a.get("Action") == "PlayDTMF"]
        assert sorted(played) == sorted(actions) == sorted(["1", "2", "#", "9", "8"])
        assert subsequence(["1", "2", "#"], played) and subsequence(["9", "8"], played)
        # The AudioSocket leg never carried a DTMF frame toward Asterisk (it would have
        # killed the call: the simulator ends the leg with an error).
        await until(lambda: s.sim.legs)
        (leg,) = s.sim.legs
        assert leg.error is None and leg.ended_by in ("gateway-hangup", "gateway-close")
        events = await s.gw.store.events(call_id_for_sid(call.sid) or "")
        (sent,) = [e.data for e in events if e.kind == "send_digits"]
        assert sent == {"digits": "12#", "played": True}
        rec = await s.gw.store.get_call(call_id_for_sid(call.sid) or "")
        assert rec is not None and rec.hangup_reason == "twiml-hangup"


# -- <Record> recordings through the REST Recordings resources --------------------------


async def test_record_verb_recordings_are_rest_recordings(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        doc = VoiceResponse()
        doc.record(max_length=2, timeout=10, play_beep=False, trim="do-not-trim",
                   action="/recorded", recording_status_callback="/recstatus")
        s.app.docs["/voice"] = str(doc)
        hang = VoiceResponse()
        hang.hangup()
        s.app.docs["/recorded"] = str(hang)
        call = await s.sdk(s.client.calls.create, to="+15550001111", from_="+15559990000",
                           url=s.app.base + "/voice", record=True,
                           recording_status_callback=s.app.base + "/callrec")
        await s.status(call.sid, "completed", within=8.0)
        await until(lambda: s.app.of("/recstatus") and s.app.of("/recorded"))
        (cb,) = s.app.of("/recstatus")
        (action,) = s.app.of("/recorded")
        rsid = cb["RecordingSid"]
        assert cb["CallSid"] == action["CallSid"] == call.sid and action["RecordingSid"] == rsid
        # The app finds it through the SDK, beside the call's own recording.
        async with asyncio.timeout(10):
            while len(found := await s.sdk(s.client.recordings.list,
                                           call_sid=call.sid)) < 2:
                await asyncio.sleep(50 * MS)
        by_sid = {r.sid: r for r in found}
        verb = by_sid[rsid]
        assert verb.call_sid == call.sid and verb.source == "RecordVerb"
        assert verb.channels == 1 and int(verb.duration) == 2
        (whole,) = [r for r in found if r.sid != rsid]
        assert whole.call_sid == call.sid and whole.source != "RecordVerb"
        via_call = await s.sdk(s.client.calls(call.sid).recordings.list)
        assert {r.sid for r in via_call} == set(by_sid)
        fetched = await s.sdk(s.client.recordings(rsid).fetch)
        assert fetched.sid == rsid and fetched.call_sid == call.sid
        assert (await s.sdk(s.client.calls(call.sid).recordings(rsid).fetch)).sid == rsid
        # RecordingUrl is the media URL (its host:port is the configured --http, port 0
        # here); the .wav is the recording.
        assert fetched.media_url.startswith(s.base)
        assert action["RecordingUrl"].endswith(fetched.media_url.removeprefix(s.base))
        async with aiohttp.ClientSession(headers={"Authorization": basic(SID, TOKEN)}) as http:
            async with http.get(fetched.media_url + ".wav") as resp:
                assert resp.status == 200
                data, rate = sf.read(io.BytesIO(await resp.read()), always_2d=True)
            assert rate == 8000 and data.shape[1] == 1 and abs(len(data) / rate - 2.0) < 0.3
            # Another tenant's credentials do not see it.
            plain = derived_account_sid("plain")
            async with http.get(f"{s.base}/2010-04-01/Accounts/{plain}/Recordings/{rsid}.json",
                                headers={"Authorization": basic(plain, "plain-token")}) as r:
                assert r.status == 404
        assert await s.sdk(s.client.recordings(rsid).delete) is True
        with pytest.raises(TwilioRestException) as gone:
            await s.sdk(s.client.recordings(rsid).fetch)
        assert gone.value.status == 404
        left = await s.sdk(s.client.recordings.list, call_sid=call.sid)
        assert [r.sid for r in left] == [whole.sid]
