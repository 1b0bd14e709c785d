# ruff: noqa: ASYNC110  (tests poll the store/receivers with a deadline)
"""Twilio's REST API on the gateway, driven by the official ``twilio`` SDK over real HTTP.

The stack is real: a gateway whose AMI client talks to the AMI simulator (which runs a
real AudioSocket call into the gateway for every answered Originate), the customer's
HTTP side (an aiohttp app serving TwiML and receiving callbacks) and the strict fake
Media Streams app. The app's only change is ``client.api.base_url``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import soundfile as sf
from aiohttp import web
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.recordings.component import RecordingsComponent
from audiosocket_gw.testing.fakeapp import FakeTwilioApp
from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
from audiosocket_gw.twilio.ids import call_id_for_sid, derived_account_sid
from audiosocket_gw.twilio.rest import MAX_FORM, TwilioRestApi
from audiosocket_gw.twilio.signature import SIGNATURE_HEADER, validate_signature
from tests.helpers import MS, ami_gateway, make_config, until
from tests.recordings.conftest import s3_client

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "acme-secret-token"
T = TypeVar("T")

TOML = """default_agent = "bot"
[tenants.acme]
max_concurrent_calls = 20
twilio_account_sid = "{sid}"
twilio_auth_token_env = "ACME_TWILIO_TOKEN"

[tenants.plain]
twilio_auth_token_env = "PLAIN_TWILIO_TOKEN"

[agents.bot]
tenant = "acme"
backend = "twilio-stream"
voice_url = "{base}/voice"
silence_timeout_s = 30.0
voicemail_budget_s = 0

[agents.echo]
tenant = "plain"
backend = "echo"
"""

HANGUP = "<Response><Hangup/></Response>"


@dataclass
class App:
    """The customer's HTTP side: TwiML documents by path, every request recorded."""

    docs: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bool]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = self.base + request.raw_path  # as sent, as a Twilio app validates it
        sig = request.headers.get(SIGNATURE_HEADER, "")
        signed = validate_signature(TOKEN, url, form, sig)
        self.requests.append((request.method, request.path, form or dict(request.query),
                              signed))
        doc = self.docs.get(request.path)
        if doc is None:
            return web.Response(status=204)
        return web.Response(text=doc, content_type="text/xml")

    def of(self, path: str) -> list[dict[str, str]]:
        return [f for _, p, f, _ in self.requests if p == path]


@asynccontextmanager
async def serve(app: App) -> AsyncIterator[App]:
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    app.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield app
    finally:
        await runner.cleanup()


@dataclass
class Stack:
    gw: Gateway
    sim: AmiSimulator
    app: App
    stream: FakeTwilioApp
    client: Client
    base: str

    async def sdk(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """The SDK is synchronous (requests): run it off the gateway's loop."""
        return await asyncio.to_thread(fn, *args, **kw)

    async def status(self, sid: str, *statuses: str, within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                call = await self.sdk(self.client.calls(sid).fetch)
                if call.status in statuses:
                    return call
                await asyncio.sleep(20 * MS)


def client_for(base: str, sid: str = SID, token: str = TOKEN) -> Client:
    client = Client(sid, token)
    client.api.base_url = base  # the one change a Twilio app makes
    return client


@asynccontextmanager
async def stack(monkeypatch: pytest.MonkeyPatch, audiosocket_seconds: float = 20.0,
                env: dict[str, str] | None = None) -> AsyncIterator[Stack]:
    for k, v in {"ACME_TWILIO_TOKEN": TOKEN, "PLAIN_TWILIO_TOKEN": "plain-token"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AIGW_TWILIO_ACCOUNT_SID", "AIGW_TWILIO_AUTH_TOKEN", "AIGW_S3_BUCKET",
              "AIGW_RECORDING_PUBLIC_BASE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    sim = AmiSimulator(connect_audiosocket=True, ring_s=20 * MS, talk_s=30.0,
                       audiosocket_seconds=audiosocket_seconds)
    async with sim, FakeTwilioApp() as stream_app, serve(App()) as app:
        cfg = Path(tempfile.mkdtemp(prefix="aigw-rest-")) / "t.toml"
        cfg.write_text(TOML.format(sid=SID, base=app.base))
        async with ami_gateway(monkeypatch, sim.address, ping_s=0.2, config=str(cfg),
                               allow_unregistered=False) as gw:
            h, p = gw.http_address
            base = f"http://{h}:{p}"
            yield Stack(gw, sim, app, stream_app, client_for(base), base)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- calls ---------------------------------------------------------------------------------


async def test_create_with_url_runs_its_twiml_and_sends_its_status_callbacks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        s.app.docs["/twiml"] = '<Response><Pause length="1"/><Hangup/></Response>'
        call = await s.sdk(
            s.client.calls.create, to="+15550001111", from_="+15559990000",
            url=s.app.base + "/twiml", method="GET", status_callback=s.app.base + "/status",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            status_callback_method="POST", timeout=20)
        assert call.sid.startswith("CA") and call.account_sid == SID
        assert call.status in ("queued", "ringing") and call.direction == "outbound-api"
        assert call.to == "+15550001111" and call._from == "+15559990000"
        assert call.uri == f"/2010-04-01/Accounts/{SID}/Calls/{call.sid}.json"
        orig = [a for a in s.sim.actions if a.get("Action") == "Originate"][-1]
        assert orig.get("Timeout") == "20000"  # the ring timeout
        assert orig.get("CallerID") == "+15559990000"
        done = await s.status(call.sid, "completed")
        # The TwiML was fetched with GET, signed, for this call.
        ((method, _, form, signed),) = [r for r in s.app.requests if r[1] == "/twiml"]
        assert method == "GET" and signed
        assert form["CallSid"] == call.sid and form["AccountSid"] == SID
        assert form["Direction"] == "outbound-api"
        assert done.end_time is not None and done.start_time is not None
        assert int(done.duration) >= 1
        rec = await s.gw.store.get_call(call_id_for_sid(call.sid) or "")
        assert rec is not None and rec.hangup_reason == "twiml-hangup"
        # The per-call status callbacks override the agent's (none), in order, signed.
        await until(lambda: len(s.app.of("/status")) >= 4)
        forms = s.app.of("/status")
        assert [f["CallStatus"] for f in forms] == [
            "initiated", "ringing", "in-progress", "completed"]
        assert [f["SequenceNumber"] for f in forms] == ["0", "1", "2", "3"]
        assert {f["CallSid"] for f in forms} == {call.sid}
        assert all(signed for _, p, _, signed in s.app.requests if p == "/status")
        assert int(forms[-1]["CallDuration"]) >= 1 and forms[-1]["Timestamp"].endswith("+0000")


async def test_create_with_inline_twiml_streams_then_update_redirects_the_live_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Twiml`` runs as given (a Media Stream to the app); a live update with ``Url``
    stops that stream and runs the new document (the app's /next, which hangs up)."""
    async with stack(monkeypatch) as s:
        twiml = (f'<Response><Connect><Stream url="{s.stream.url}">'
                 '<Parameter name="order" value="42"/></Stream></Connect></Response>')
        call = await s.sdk(s.client.calls.create, to="+15550002222", from_="+15559990000",
                           twiml=twiml)
        session = await s.stream.wait_for_session(0, 5.0)
        await s.stream.wait_for(lambda: len(session.of_kind("media")) >= 5, 5.0)
        (start,) = session.of_kind("start")
        assert start["start"]["callSid"] == call.sid
        assert start["start"]["accountSid"] == SID
        assert start["start"]["customParameters"] == {"order": "42"}
        live = await s.status(call.sid, "in-progress")
        assert live.status == "in-progress"
        s.app.docs["/next"] = '<Response><Pause length="1"/><Hangup/></Response>'
        updated = await s.sdk(s.client.calls(call.sid).update, url=s.app.base + "/next",
                              method="POST")
        assert updated.sid == call.sid
        await s.stream.wait_for(lambda: "stop" in session.kinds(), 5.0)
        await until(lambda: s.app.of("/next"))
        assert s.app.of("/next")[0]["CallSid"] == call.sid
        await s.status(call.sid, "completed")
        assert session.violations == []
        rec = await s.gw.store.get_call(call_id_for_sid(call.sid) or "")
        assert rec is not None and rec.hangup_reason == "twiml-hangup"


async def test_update_status_completed_hangs_up_and_canceled_leaves_a_live_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        call = await s.sdk(s.client.calls.create, to="+15550003333", from_="+15559990000",
                           twiml='<Response><Pause length="30"/></Response>')
        await s.status(call.sid, "in-progress")
        # canceled only acts on calls not answered yet (Twilio's rule).
        same = await s.sdk(s.client.calls(call.sid).update, status="canceled")
        assert same.status == "in-progress"
        ended = await s.sdk(s.client.calls(call.sid).update, status="completed")
        assert ended.sid == call.sid
        done = await s.status(call.sid, "completed")
        assert done.end_time is not None
        # Redirecting an ended call is Twilio's 21220.
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.calls(call.sid).update, twiml=HANGUP)
        assert err.value.status == 400 and err.value.code == 21220
        # An ended call can be deleted; then it is gone.
        assert await s.sdk(s.client.calls(call.sid).delete) is True
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.calls(call.sid).fetch)
        assert err.value.status == 404 and err.value.code == 20404


async def test_list_filters_and_paging_through_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        sids: list[str] = []
        for i in range(7):
            call = await s.sdk(s.client.calls.create, to=f"+1555000{i:04d}",
                               from_="+15559990000", twiml=HANGUP)
            sids.append(call.sid)
        for sid in sids:
            await s.status(sid, "completed")
        live = await s.sdk(s.client.calls.create, to="+15550009999", from_="+15559990000",
                           twiml='<Response><Pause length="30"/></Response>')
        await s.status(live.sid, "in-progress")
        # list()/stream() page through everything, 3 per page.
        listed = await s.sdk(s.client.calls.list, page_size=3)
        assert [c.sid for c in listed] == [live.sid] + sids[::-1]
        streamed = await s.sdk(lambda: [c.sid for c in s.client.calls.stream(page_size=2)])
        assert streamed == [live.sid] + sids[::-1]
        # Filters.
        done = await s.sdk(s.client.calls.list, status="completed", page_size=50)
        assert {c.sid for c in done} == set(sids)
        one = await s.sdk(s.client.calls.list, to="+15550000003")
        assert [c.sid for c in one] == [sids[3]]
        now = dt.datetime.now(dt.UTC)
        after = await s.sdk(s.client.calls.list, start_time_after=now - dt.timedelta(hours=1))
        assert len(after) == 8
        assert await s.sdk(s.client.calls.list,
                           start_time_before=now - dt.timedelta(hours=1)) == []
        today = await s.sdk(s.client.calls.list, start_time=now.date())
        assert len(today) == 8
        assert await s.sdk(s.client.calls.list, from_="+15550000000") == []
        # The raw envelope: Twilio's paging fields.
        page = await s.sdk(s.client.calls.page, page_size=3)
        raw = page._payload
        assert raw["page"] == 0 and raw["page_size"] == 3 and raw["start"] == 0
        assert raw["end"] == 2 and raw["previous_page_uri"] is None
        assert raw["uri"].startswith(f"/2010-04-01/Accounts/{SID}/Calls.json?")
        assert "Page=1" in raw["next_page_uri"] and "Page=0" in raw["first_page_uri"]
        last = await s.sdk(s.client.calls.page, page_size=3, page_number=2)
        assert last._payload["next_page_uri"] is None
        # A live call cannot be deleted (20009).
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.calls(live.sid).delete)
        assert err.value.status == 400 and err.value.code == 20009
        await s.sdk(s.client.calls(live.sid).update, status="completed")


async def test_errors_wrong_credentials_bad_params_unknown_resources(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        bad = client_for(s.base, SID, "wrong-token")
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(bad.calls.create, to="+15550001111", from_="+15559990000",
                        twiml=HANGUP)
        assert err.value.status == 401 and err.value.code == 20003
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(bad.calls("CA" + "0" * 32).fetch)
        assert err.value.status == 401 and err.value.code == 20003
        with pytest.raises(TwilioException) as page_err:  # the SDK's list error type
            await s.sdk(bad.calls.list)
        assert "401" in str(page_err.value) and "20003" in str(page_err.value)
        other = client_for(s.base, "AC" + "f" * 32, TOKEN)
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(other.calls.create, to="+15550001111", from_="+15559990000",
                        twiml=HANGUP)
        assert err.value.status == 401 and err.value.code == 20003
        for kw, code in (({"from_": "+15559990000", "to": ""}, 21201),
                         ({"to": "+15550001111", "from_": ""}, 21213),
                         ({"to": "not-a-number", "from_": "+15559990000"}, 21211),
                         ({"to": "+15550001111", "from_": "+15559990000"}, 21205),
                         ({"to": "+15550001111", "from_": "+15559990000",
                           "url": "ftp://x/y"}, 21205),
                         ({"to": "+15550001111", "from_": "+15559990000", "twiml": HANGUP,
                           "status_callback": "nope"}, 21609),
                         ({"to": "+15550001111", "from_": "+15559990000", "twiml": HANGUP,
                           "machine_detection": "Maybe"}, 20001),
                         ({"to": "+15550001111", "from_": "+15559990000",
                           "twiml": "<Response><Play/></Response>"}, 20001),
                         ({"to": "+15550001111", "from_": "+15559990000",
                           "twiml": '<!DOCTYPE x [<!ENTITY a "b">]><Response/>'}, 20001),
                         ({"to": "+15550001111", "from_": "+15559990000", "twiml": HANGUP,
                           "url": "https://app.example.com/x"}, 20001)):
            with pytest.raises(TwilioRestException) as err:
                await s.sdk(s.client.calls.create, **kw)
            assert (err.value.status, err.value.code) == (400, code), kw
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.calls("CA" + "0" * 32).fetch)
        assert err.value.status == 404 and err.value.code == 20404
        with pytest.raises(TwilioException) as page_err:
            await s.sdk(s.client.calls.page, page_size=5000)
        assert "20001" in str(page_err.value)
        with pytest.raises(TwilioException) as page_err:
            await s.sdk(s.client.calls.page, page_number=10**30)
        assert "20001" in str(page_err.value)
        assert await s.gw.store.list_calls() == []  # no bad request placed a call
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.recordings("RE" + "0" * 32).fetch)
        assert err.value.status == 404 and err.value.code == 20404
        with pytest.raises(TwilioRestException) as err:  # not emulated: Twilio's 404
            await s.sdk(s.client.messages.create, to="+15550001111", from_="+15559990000",
                        body="hi")
        assert err.value.status == 404 and err.value.code == 20404
        with pytest.raises(TwilioRestException) as err:  # authentication still first
            await s.sdk(bad.messages.create, to="+15550001111", from_="+15559990000",
                        body="hi")
        assert err.value.status == 401 and err.value.code == 20003
        # A tenant with no twilio-stream agent (its derived AccountSid, its own token).
        plain = client_for(s.base, derived_account_sid("plain"), "plain-token")
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(plain.calls.create, to="+15550001111", from_="+15559990000",
                        twiml=HANGUP)
        assert err.value.status == 400 and err.value.code == 99001
        assert "twilio-stream" in err.value.msg
        assert await s.sdk(plain.calls.list) == []  # its calls only, none
        # Raw HTTP: odd Authorization headers are 401 (never 500), no body leaks.
        url = f"{s.base}/2010-04-01/Accounts/{SID}/Calls.json"
        async with aiohttp.ClientSession() as http:
            for header in (b"Basic \xff\xfe", b"Basic !!!", b"Bearer x",
                           b"Basic " + base64.b64encode(SID.encode())):
                async with http.get(url, headers={"Authorization": header.decode(
                        "latin-1")}) as resp:
                    body = await resp.json()
                    assert resp.status == 401 and body["code"] == 20003
                    assert resp.headers["WWW-Authenticate"].startswith("Basic")
            async with http.post(url, data=b"To=%ff%fe&From=x", headers={
                    "Authorization": basic(SID, TOKEN),
                    "Content-Type": "application/x-www-form-urlencoded"}) as resp:
                assert resp.status == 400 and (await resp.json())["status"] == 400
            async with http.post(url, data=b"To=+1555&Twiml=" + b"x" * (MAX_FORM + 1), headers={
                    "Authorization": basic(SID, TOKEN),
                    "Content-Type": "application/x-www-form-urlencoded"}) as resp:
                body = await resp.json()
                assert resp.status == 413 and body["code"] == 20001, body
        assert await s.gw.store.list_calls() == []


# -- recordings ------------------------------------------------------------------------------


async def test_recordings_list_fetch_download_and_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    public = {"AIGW_RECORDING_PUBLIC_BASE": "https://recordings.example.com"}
    async with stack(monkeypatch, env=public) as s:
        call = await s.sdk(s.client.calls.create, to="+15550004444", from_="+15559990000",
                           twiml='<Response><Pause length="2"/><Hangup/></Response>',
                           record=True, recording_status_callback=s.app.base + "/rec")
        await s.status(call.sid, "completed", within=10.0)

        async def recordings() -> list[Any]:
            return await s.sdk(s.client.calls(call.sid).recordings.list)

        async with asyncio.timeout(10):
            while not (found := await recordings()):
                await asyncio.sleep(50 * MS)
        (rec,) = found
        assert rec.sid.startswith("RE") and rec.call_sid == call.sid
        assert rec.account_sid == SID and rec.status == "completed"
        assert rec.channels == 2 and int(rec.duration) >= 2
        fetched = await s.sdk(s.client.recordings(rec.sid).fetch)
        assert fetched.sid == rec.sid and fetched.uri.endswith(f"/Recordings/{rec.sid}.json")
        via_call = await s.sdk(s.client.calls(call.sid).recordings(rec.sid).fetch)
        assert via_call.sid == rec.sid and via_call.call_sid == call.sid
        everything = await s.sdk(s.client.recordings.list)
        assert [r.sid for r in everything] == [rec.sid]
        by_call = await s.sdk(s.client.recordings.list, call_sid=call.sid)
        assert [r.sid for r in by_call] == [rec.sid]
        # Media, with the account's credentials, as an app downloads it.
        media = rec.media_url if hasattr(rec, "media_url") else \
            f"{s.base}/2010-04-01/Accounts/{SID}/Recordings/{rec.sid}"
        assert media.startswith(s.base)
        async with aiohttp.ClientSession(headers={"Authorization": basic(SID, TOKEN)}) as http:
            async with http.get(media + ".wav") as resp:
                assert resp.status == 200
                wav = await resp.read()
            data, rate = sf.read(io.BytesIO(wav), dtype="int16", always_2d=True)
            assert rate == 8000 and data.shape[1] == 2
            seconds = len(data) / rate
            assert abs(seconds - float(rec.duration)) <= 1.0 and seconds >= 2.0
            async with http.get(media + ".wav", headers={"Range": "bytes=0-43"}) as resp:
                assert resp.status == 206 and await resp.read() == wav[:44]
            async with http.get(media + ".mp3") as resp:
                assert resp.status == 200 and resp.content_type == "audio/mpeg"
                mp3 = await resp.read()
            assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)
            assert len(mp3) < len(wav)
            async with http.get(media + ".wav",
                                headers={"Authorization": basic(SID, "no")}) as resp:
                assert resp.status == 401
            # Without an MP3 encoder: a clear 415, the WAV still there.
            with monkeypatch.context() as m:
                m.setitem(sys.modules, "lameenc", None)
                async with http.get(media + ".mp3") as resp:
                    assert resp.status == 415 and (await resp.json())["code"] == 99002
        # The recording status callback names the same recording and call.
        await until(lambda: s.app.of("/rec"))
        cb = s.app.of("/rec")[0]
        assert cb["RecordingSid"] == rec.sid and cb["CallSid"] == call.sid
        assert await s.sdk(s.client.recordings(rec.sid).delete) is True
        with pytest.raises(TwilioRestException) as err:
            await s.sdk(s.client.recordings(rec.sid).fetch)
        assert err.value.status == 404
        assert await recordings() == []


async def test_a_call_status_is_twilio_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our CallStatus values are Twilio's names: a busy destination reads ``busy``."""
    async with stack(monkeypatch) as s:
        s.sim.outcomes["+15550005555"] = Outcome("busy")
        call = await s.sdk(s.client.calls.create, to="+15550005555", from_="+15559990000",
                           twiml=HANGUP)
        done = await s.status(call.sid, "busy")
        assert done.duration == "0" and CallStatus(done.status) is CallStatus.BUSY


async def test_update_interrupts_running_twiml_get_status_callback_and_send_digits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An inline ``Twiml`` update cuts a running ``<Pause>`` short; a GET status callback
    carries the form in its query string, signed over the whole URL; ``SendDigits`` is
    recorded on the call (played only when call control is there)."""
    async with stack(monkeypatch) as s:
        call = await s.sdk(s.client.calls.create, to="+15550006666", from_="+15559990000",
                           twiml='<Response><Pause length="30"/></Response>',
                           status_callback=s.app.base + "/status-get",
                           status_callback_method="GET", send_digits="12w34#")
        await s.status(call.sid, "in-progress")
        t0 = asyncio.get_running_loop().time()
        await s.sdk(s.client.calls(call.sid).update, twiml=HANGUP)
        await s.status(call.sid, "completed")
        assert asyncio.get_running_loop().time() - t0 < 10.0  # not the 30 s pause
        await until(lambda: s.app.of("/status-get"))
        ((method, _, query, signed),) = [r for r in s.app.requests if r[1] == "/status-get"]
        assert method == "GET" and signed and query["CallStatus"] == "completed"
        assert query["CallSid"] == call.sid
        events = await s.gw.store.events(call_id_for_sid(call.sid) or "")
        digits = [e.data for e in events if e.kind == "send_digits"]
        assert digits and digits[0]["digits"] == "12w34#"


async def test_machine_detection_answered_by_and_async_amd_callback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as s:
        s.sim.outcomes["+15550007777"] = Outcome("human")
        call = await s.sdk(s.client.calls.create, to="+15550007777", from_="+15559990000",
                           twiml='<Response><Pause length="1"/><Hangup/></Response>',
                           machine_detection="Enable", async_amd="true",
                           async_amd_status_callback=s.app.base + "/amd",
                           status_callback=s.app.base + "/status",
                           status_callback_event=["answered", "completed"])
        done = await s.status(call.sid, "completed")
        assert done.answered_by == "human"
        orig = [a for a in s.sim.actions if a.get("Action") == "Originate"][-1]
        assert orig.variables().get("AIGW_AMD") not in (None, "", "0")
        await until(lambda: len(s.app.of("/status")) >= 2)
        await until(lambda: s.app.of("/amd"))
        (amd,) = s.app.of("/amd")
        assert amd["AnsweredBy"] == "human" and amd["CallSid"] == call.sid
        assert [f.get("AnsweredBy") for f in s.app.of("/status")] == ["human", "human"]


async def test_recording_in_the_bucket_is_a_redirect_and_delete_removes_the_object(
        monkeypatch: pytest.MonkeyPatch, moto_url: str, bucket: str) -> None:
    """Once the local copy is gone (verified upload, retention over) the media URL
    redirects to a presigned URL of the object; DELETE removes the object too."""
    env = {"AIGW_S3_BUCKET": bucket, "AIGW_S3_ENDPOINT": moto_url,
           "AIGW_RECORDING_RETENTION_S": "0"}
    async with stack(monkeypatch, env=env) as s:
        call = await s.sdk(s.client.calls.create, to="+15550008888", from_="+15559990000",
                           twiml='<Response><Pause length="1"/><Hangup/></Response>',
                           record=True)
        await s.status(call.sid, "completed", within=10.0)
        pipeline = s.gw.component(RecordingsComponent).pipeline
        call_id = call_id_for_sid(call.sid) or ""
        async with asyncio.timeout(15):
            while (row := await pipeline.get(call_id)) is None or row.state not in (
                    "verified", "deleted"):
                await asyncio.sleep(50 * MS)
        await pipeline.sweep_once()  # retention 0: the local copy goes (if not yet)
        row = await pipeline.get(call_id)
        assert row is not None and row.state == "deleted" \
            and not await asyncio.to_thread(Path(row.path).exists)
        (rec,) = await s.sdk(s.client.calls(call.sid).recordings.list)
        media = f"{s.base}/2010-04-01/Accounts/{SID}/Recordings/{rec.sid}.wav"
        async with aiohttp.ClientSession(headers={"Authorization": basic(SID, TOKEN)}) as http:
            async with http.get(media, allow_redirects=False) as resp:
                assert resp.status == 302
                location = resp.headers["Location"]
            assert location.startswith(moto_url) and row.key in location
        async with aiohttp.ClientSession() as http, http.get(location) as resp:
            assert resp.status == 200
            data, rate = sf.read(io.BytesIO(await resp.read()), always_2d=True)
        assert rate == 8000 and len(data) / rate >= 1.0
        assert await s.sdk(s.client.recordings(rec.sid).delete) is True
        listed = s3_client(moto_url).list_objects_v2(Bucket=bucket).get("Contents", [])
        assert [o["Key"] for o in listed] == []


def test_credentials_matching_two_tenants_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tenants without their own SID share AIGW_TWILIO_ACCOUNT_SID: different tokens
    tell them apart; the same token for both authenticates neither."""
    shared = "AC" + "5" * 32
    cfg = tmp_path / "t.toml"
    cfg.write_text('default_agent = "a"\n[tenants.one]\ntwilio_auth_token_env = "ONE_T"\n'
                   '[tenants.two]\ntwilio_auth_token_env = "TWO_T"\n'
                   '[agents.a]\ntenant = "one"\nbackend = "echo"\n')
    monkeypatch.setenv("AIGW_TWILIO_ACCOUNT_SID", shared)
    monkeypatch.setenv("ONE_T", "token-one")
    monkeypatch.setenv("TWO_T", "token-two")
    api = Gateway(make_config(config=str(cfg))).component(TwilioRestApi)
    one = api.authenticate(basic(shared, "token-one"), shared)
    two = api.authenticate(basic(shared, "token-two"), shared)
    assert one is not None and one.id == "one" and two is not None and two.id == "two"
    assert api.authenticate(basic(shared, "token-two"), "AC" + "6" * 32) is None
    monkeypatch.setenv("TWO_T", "token-one")
    api = Gateway(make_config(config=str(cfg))).component(TwilioRestApi)
    assert api.authenticate(basic(shared, "token-one"), shared) is None
    # Each tenant's derived SID still works, with its own token.
    own = api.authenticate(basic(derived_account_sid("two"), "token-one"),
                           derived_account_sid("two"))
    assert own is not None and own.id == "two"
