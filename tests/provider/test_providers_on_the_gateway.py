# ruff: noqa: ASYNC110  (tests poll with a deadline)
"""Both providers against a running gateway, over real HTTP and real calls.

``TwilioProvider`` is pointed at the gateway's own Twilio REST emulation (the official
SDK's code path, as with real Twilio: only ``api_base_url`` changes);
``AsteriskProvider`` at its ``/v1`` API. The calls are real: the AMI simulator answers
each Originate with an AudioSocket call into the gateway, whose ``twilio-stream`` agent
runs the app's TwiML (tests/twilio/test_rest.py's stack).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

pytest.importorskip("twilio")

from audiosocket_gw.provider import (  # noqa: E402
    AsteriskProvider,
    AsyncProvider,
    RequestRejected,
    TwilioProvider,
)
from audiosocket_gw.twilio.ids import call_id_for_sid, call_sid_for  # noqa: E402
from tests.helpers import (
    MS,  # noqa: E402
    until,
)
from tests.twilio.test_rest import SID, TOKEN, Stack, basic, stack  # noqa: E402

HOLD = '<Response><Pause length="30"/></Response>'
BYE = "<Response><Hangup/></Response>"


async def status_of(p: AsyncProvider, cid: str, *statuses: str, within: float = 6.0) -> str:
    async with asyncio.timeout(within):
        while True:
            call = await p.get_call(cid)
            if call is not None and call.status in statuses:
                return call.status
            await asyncio.sleep(20 * MS)


async def test_twilio_provider_through_the_gateway_rest_emulation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        p = AsyncProvider(TwilioProvider(SID, TOKEN, api_base_url=s.base))
        s.app.docs["/voice"] = HOLD
        s.app.docs["/next"] = BYE
        # create with a Url; the live call is redirected with inline TwiML (hangs up).
        sid = await p.start_outbound_call("acme", "+15550001111", "+15559990000",
                                          {"url": s.app.base + "/voice", "record": True})
        assert sid.startswith("CA") and call_id_for_sid(sid) is not None
        await status_of(p, sid, "in-progress")
        # The call is answered before its TwiML fetch necessarily reached the app.
        await until(lambda: s.app.of("/voice"))
        assert s.app.of("/voice")[0]["CallSid"] == sid
        await p.update_call(sid, twiml=BYE)
        assert await status_of(p, sid, "completed") == "completed"
        rec = await s.gw.store.get_call(call_id_for_sid(sid) or "")
        assert rec is not None and rec.hangup_reason == "twiml-hangup"
        # Its recording, through the SDK's Recordings list, downloads as a WAV.
        async with asyncio.timeout(10):
            while (recording := await p.get_recording(sid)) is None:
                await asyncio.sleep(50 * MS)
        assert recording.url is not None and recording.status == "completed"
        media = recording.url if recording.url.startswith("http") else s.base + recording.url
        async with aiohttp.ClientSession(headers={"Authorization": basic(SID, TOKEN)}) as http:
            async with http.get(media.removesuffix(".json").removesuffix(".wav") + ".wav") as r:
                assert r.status == 200 and (await r.read())[:4] == b"RIFF"
        # A second call: redirected to a Url, then one hung up through the provider.
        sid2 = await p.start_outbound_call("acme", "+15550002222", "+15559990000",
                                           {"twiml": HOLD})
        await status_of(p, sid2, "in-progress")
        await p.update_call(sid2, url=s.app.base + "/next")
        await until(lambda: s.app.of("/next"))
        assert s.app.of("/next")[0]["CallSid"] == sid2
        await status_of(p, sid2, "completed")
        sid3 = await p.start_outbound_call("acme", "+15550003333", "+15559990000",
                                           {"twiml": HOLD})
        await status_of(p, sid3, "in-progress")
        await p.hangup(sid3)
        assert await status_of(p, sid3, "completed") == "completed"
        assert await p.get_call("CA" + "0" * 32) is None
        with pytest.raises(RequestRejected) as ended:  # Twilio's 21220 on a done call
            await p.update_call(sid3, twiml=BYE)
        assert ended.value.status == 400


async def twiml_api(s: Stack, cid: str, body: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{s.base}/v1/calls/{cid}/twiml", json=body) as r:
        return r.status, await r.json()


async def test_asterisk_provider_updates_a_live_call_through_v1_twiml(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        p = AsyncProvider(AsteriskProvider(s.base, None))
        s.app.docs["/voice"] = HOLD  # the agent's voice_url
        s.app.docs["/next"] = BYE
        cid = await p.start_outbound_call("acme", "+15550004444", "+15559990000",
                                          {"agent": "bot"})
        await status_of(p, cid, "in-progress")
        # Bad requests are 400s in the one error shape, the call goes on.
        for bad in ({}, {"url": "ftp://x/y"}, {"twiml": "<Nope/>"},
                    {"url": s.app.base + "/next", "twiml": BYE}, {"url": 5},
                    {"url": s.app.base + "/next", "method": "PUT"}):
            status, body = await twiml_api(s, cid, bad)
            assert status == 400 and body["error"]["code"] == "bad_request", bad  # type: ignore[index]
        assert (await p.get_call(cid)) is not None
        await p.update_call(cid, url=s.app.base + "/next")
        await until(lambda: s.app.of("/next"))
        assert s.app.of("/next")[0]["CallSid"] == call_sid_for(cid)
        assert await status_of(p, cid, "completed") == "completed"
        rec = await s.gw.store.get_call(cid)
        assert rec is not None and rec.hangup_reason == "twiml-hangup"
        # Inline TwiML on a second call, then 409 once it is over, 404 for no call.
        cid2 = await p.start_outbound_call("acme", "+15550005555", "+15559990000",
                                           {"agent": "bot"})
        await status_of(p, cid2, "in-progress")
        await p.update_call(cid2, twiml=BYE)
        await status_of(p, cid2, "completed")
        with pytest.raises(RequestRejected) as ended:
            await p.update_call(cid2, twiml=BYE)
        assert ended.value.status == 409
        status, body = await twiml_api(s, "no-such-call", {"twiml": BYE})
        assert status == 404
