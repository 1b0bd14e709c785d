"""TwiML call control over real sockets: <Gather>, <Record>, <Say>, <Dial>, streams, redirect.

The TwiML is produced with the official Twilio SDK (``VoiceResponse``), served by a real
aiohttp app on loopback that validates every ``X-Twilio-Signature``; the caller is a
hand-driven AudioSocket peer (DTMF frames come FROM it, as from Asterisk); streams go to
the strict fake Media Streams app.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web
from twilio.twiml.voice_response import (
    Connect,
    Dial,
    Gather,
    Number,
    Record,
    Sip,
    Start,
    Stop,
    Stream,
    VoiceResponse,
)

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.backends.base import CallInfo
from audiosocket_gw.backends.twilio_stream import TwilioStreamBackend, TwilioStreamSession
from audiosocket_gw.dial import DialRequest, DialTarget
from audiosocket_gw.recordings.transcribe import HttpTranscriber
from audiosocket_gw.tenants import Agent
from audiosocket_gw.testing.fakeapp import FakeTwilioApp
from audiosocket_gw.tts import EspeakTts
from audiosocket_gw.twilio import twiml_exec
from audiosocket_gw.twilio.ids import call_sid_for, recording_sid_for
from audiosocket_gw.twilio.signature import validate_signature
from audiosocket_gw.twilio.twiml_exec import (
    DIAL_ACTION_KEY,
    DIAL_CALL_SID_KEY,
    record_verb_path,
)
from tests.backends.test_twilio_stream import Caller, level, speech, tenants_toml
from tests.helpers import MS, running_gateway

TOKEN = "test-auth-token"
HAS_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(
    not HAS_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng; "
                           ".ci/run installs it): <Say> cannot be heard")

Page = str | Callable[[dict[str, str]], str]


class App:
    """A Twilio voice app: TwiML per path (a string or a function of the form)."""

    def __init__(self, pages: dict[str, Page]) -> None:
        self.pages = pages
        self.requests: list[tuple[str, dict[str, str], bool]] = []
        self.changed = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            form = dict(request.query)
            ok = validate_signature(TOKEN, str(request.url), {},
                                    request.headers.get("X-Twilio-Signature", ""))
        else:
            form = {k: str(v) for k, v in (await request.post()).items()}
            ok = validate_signature(TOKEN, str(request.url), form,
                                    request.headers.get("X-Twilio-Signature", ""))
        self.requests.append((request.path, form, ok))
        self.changed.set()
        page = self.pages.get(request.path, "<Response/>")
        text = page(form) if callable(page) else page
        return web.Response(text=text, content_type="text/xml")

    def forms(self, path: str) -> list[dict[str, str]]:
        return [f for p, f, _ in self.requests if p == path]

    async def wait_path(self, path: str, wait_s: float = 5.0) -> dict[str, str]:
        async with asyncio.timeout(wait_s * MS * 1000):
            while not self.forms(path):
                self.changed.clear()
                await self.changed.wait()
        return self.forms(path)[0]


@asynccontextmanager
async def serve(app: App, extra_routes: list[web.RouteDef] | None = None
                ) -> AsyncIterator[str]:
    web_app = web.Application()
    web_app.add_routes(extra_routes or [])
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield app.url
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_TWILIO_AUTH_TOKEN", TOKEN)


def doc(*verbs: Any) -> str:
    r = VoiceResponse()
    for v in verbs:
        r.append(v)
    return str(r)


async def talk(caller: Caller, pcm: bytes) -> None:
    """Send ``pcm`` as 20 ms AudioSocket frames in real time, then nothing (Asterisk
    sends no frames while the caller's channel is silent)."""
    t0 = time.monotonic()
    for n, off in enumerate(range(0, len(pcm), 320)):
        caller.writer.write(asp.encode_audio(pcm[off: off + 320]))
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))


def session_of(gw: Any) -> TwilioStreamSession:
    [session] = [c.session for c in gw.audiosocket.calls.values()]
    assert isinstance(session, TwilioStreamSession)
    return session


def backend_of(gw: Any) -> TwilioStreamBackend:
    backend = gw.backend_for(gw.default_call_info("x"))
    assert isinstance(backend, TwilioStreamBackend)
    return backend


# -- <Gather> -------------------------------------------------------------------------


async def test_gather_dtmf_interrupts_prompt_and_posts_digits(tmp_path: Path) -> None:
    g = Gather(num_digits=3, action="/gathered", timeout=3)
    g.play("/long.wav")
    app = App({"/voice": doc(g),
               "/gathered": doc(VoiceResponse().hangup())})
    long_wav = wav_file(16000, 3.0)

    async def get_long(request: web.Request) -> web.Response:
        return web.Response(body=long_wav, content_type="audio/wav")

    async with serve(app, [web.get("/long.wav", get_long)]) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await caller.wait_until(lambda: len(caller.loud()) >= 10, 3.0)
            first_digit_at = time.monotonic()
            for d in "123":
                caller.dtmf(d)
                await asyncio.sleep(30 * MS)
            form = await app.wait_path("/gathered")
            await asyncio.wait_for(caller.closed.wait(), 2.0)
            assert form["Digits"] == "123"
            assert form["CallSid"] == call_sid_for(caller.call_id)
            assert form["CallStatus"] == "in-progress"
            assert all(ok for _, _, ok in app.requests)
            # the 3 s prompt stopped at the first digit (within a few frames)
            loud_after = [t for t, _ in caller.loud() if t > first_digit_at + 150 * MS]
            assert loud_after == []
            assert caller.hangup_at is not None


async def test_gather_finish_on_key_and_no_input_continues(tmp_path: Path) -> None:
    g1 = Gather(action="/first", finish_on_key="#", timeout=2)
    g2 = Gather(action="/never", timeout=1)
    r = VoiceResponse()
    r.append(g2)
    r.redirect("/menu2")
    app = App({"/voice": doc(g1), "/first": str(r),
               "/menu2": doc(VoiceResponse().hangup())})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.sleep(100 * MS)
            for d in "42#":
                caller.dtmf(d)
            form = await app.wait_path("/first")
            assert (form["Digits"], form["FinishedOnKey"]) == ("42", "#")
            t = time.monotonic()
            await app.wait_path("/menu2", 4.0)
            assert time.monotonic() - t >= 0.9  # the second gather's 1 s timeout ran out
            await asyncio.wait_for(caller.closed.wait(), 2.0)
            assert app.forms("/never") == []  # nothing gathered: the next verb ran


async def test_gather_speech_through_the_transcription_endpoint(tmp_path: Path) -> None:
    uploads: list[bytes] = []

    async def transcribe(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        uploads.append(upload.file.read())
        return web.json_response({"text": "sales please"})

    g = Gather(input="speech", action="/spoken", speech_timeout="1", timeout=3)
    app = App({"/voice": doc(g), "/spoken": doc(VoiceResponse().hangup())})
    async with serve(app, [web.post("/v1/audio/transcriptions", transcribe)]) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw:
            backend_of(gw).stt = HttpTranscriber(f"{base}/v1/audio/transcriptions",
                                                 "whisper-1", None, 5.0)
            async with Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.sleep(100 * MS)
                await talk(caller, speech(0.8))
                form = await app.wait_path("/spoken", 4.0)
                assert form["SpeechResult"] == "sales please"
                assert float(form["Confidence"]) > 0
                data, rate = sf.read(io.BytesIO(uploads[0]), dtype="int16")
                assert rate == 8000 and abs(len(data) / 8000 - 0.8) < 0.1


# -- <Say> ----------------------------------------------------------------------------


@needs_espeak
async def test_say_is_heard_with_espeak(tmp_path: Path) -> None:
    text = "Thank you for calling. Please hold."
    r = VoiceResponse()
    r.say(text, language="en-US")
    r.hangup()
    pcm = await EspeakTts().synthesize(text, language="en-US")
    frames = [pcm[i: i + 320] for i in range(0, len(pcm) - 319, 320)]
    loud_idx = [i for i, f in enumerate(frames) if level(f) >= 64.0]
    expected_span = (loud_idx[-1] - loud_idx[0] + 1) * 0.02
    app = App({"/voice": str(r)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.wait_for(caller.closed.wait(), 5.0)
            loud = caller.loud()
            assert len(loud) >= 0.5 * expected_span / 0.02  # speech, not silence
            span = loud[-1][0] - loud[0][0] + 0.02
            assert abs(span - expected_span) < 0.05 + 50 * MS, (span, expected_span)
            assert caller.hangup_at is not None and caller.hangup_at >= loud[-1][0]
            spectrum = np.abs(np.fft.rfft(np.frombuffer(b"".join(f for _, f in loud),
                                                        dtype="<i2").astype(float)))
            assert spectrum[1:].argmax() * 8000 / (2 * (len(spectrum) - 1)) < 3000  # voice


async def test_say_without_engine_is_skipped_and_counted(tmp_path: Path) -> None:
    r = VoiceResponse()
    r.say("nobody hears this")
    r.hangup()
    app = App({"/voice": str(r)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw:
            backend = backend_of(gw)
            backend.tts = None
            async with Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.wait_for(caller.closed.wait(), 2.0)
                assert caller.loud() == []
                skipped = backend.metrics.twiml_events.labels("say-skipped", "no-engine")
                assert skipped._value.get() == 1  # type: ignore[attr-defined]


# -- <Record> -------------------------------------------------------------------------


@pytest.mark.parametrize("spill", [False, True])
async def test_record_posts_a_playable_recording(tmp_path: Path, spill: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if spill:  # exercise the bounded-memory path: spill every 4 KiB (128 ms)
        monkeypatch.setattr(twiml_exec, "SPILL_BYTES", 4096)
    r = VoiceResponse()
    r.record(action="/recorded", timeout=1, max_length=10,
             recording_status_callback="/rec-status")
    app = App({"/voice": str(r), "/recorded": doc(VoiceResponse().hangup())})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await caller.wait_until(lambda: len(caller.loud()) >= 20, 3.0)  # the beep
            await asyncio.sleep(0.1)
            t = time.monotonic()
            await talk(caller, speech(1.2))
            form = await app.wait_path("/recorded", 4.0)
            assert time.monotonic() - t >= 1.2 + 0.9  # 1 s of silence ended it
            sid = recording_sid_for(caller.call_id, 1)
            assert form["RecordingSid"] == sid
            assert form["RecordingDuration"] == "1"
            assert form["RecordingUrl"].endswith(
                f"/2010-04-01/Accounts/AC{'ab' * 16}/Recordings/{sid}")
            path = record_verb_path(Path(gw.config.data_dir), sid)
            assert path is not None
            assert record_verb_path(Path(gw.config.data_dir), "../../etc/passwd") is None
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            data, rate = sf.read(path, dtype="int16")
            assert rate == 8000 and data.ndim == 1
            assert abs(len(data) / 8000 - 1.2) < 0.1
            assert level(data.tobytes()) > 150  # the caller's voice, trimmed
            # The caller's samples, from its first frame (or a later whole frame: on a
            # loaded machine the first 20 ms can reach the recorder after it started).
            sent = np.frombuffer(speech(1.2), "<i2")
            assert any(np.array_equal(data[:400], sent[k * 160:k * 160 + 400])
                       for k in range(3))
            assert list(path.parent.glob(".*")) == []  # no part file left
            status = await app.wait_path("/rec-status", 2.0)
            assert status["RecordingStatus"] == "completed"
            assert status["RecordingSid"] == sid and status["RecordingSource"] == "RecordVerb"
            await asyncio.wait_for(caller.closed.wait(), 2.0)


async def test_record_finish_key_and_hangup_still_delivered(tmp_path: Path) -> None:
    rec1 = Record(action="/r1", finish_on_key="#", play_beep=False, timeout=0)
    rec2 = Record(action="/r2", play_beep=False, timeout=0)
    app = App({"/voice": doc(rec1), "/r1": doc(rec2)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.sleep(100 * MS)
            await talk(caller, speech(0.5))
            caller.dtmf("#")
            form = await app.wait_path("/r1")
            assert form["Digits"] == "#"
            await talk(caller, speech(0.5))
            await caller.hangup()  # the caller hangs up while recording
            form2 = await app.wait_path("/r2", 4.0)
            assert form2["Digits"] == "hangup"
            assert form2["RecordingSid"] == recording_sid_for(caller.call_id, 2)


# -- <Dial> ---------------------------------------------------------------------------


class RecordingControl:
    """A tiny CallControl: records what the session asks, plays instantly."""

    call_id = "c0ffee00-0000-4000-8000-000000000001"

    def __init__(self) -> None:
        self.session: TwilioStreamSession | None = None
        self.dials: list[DialRequest] = []
        self.hangups: list[str] = []
        self.played = 0

    def play(self, pcm: bytes, item_id: str | None = None) -> None:
        self.played += len(pcm)

    def end_of_audio(self) -> None:
        pass

    def mark(self, name: str) -> None:
        assert self.session is not None
        asyncio.get_running_loop().call_soon(self.session.on_marks, [name])

    def clear(self) -> None:
        pass

    def played_ms(self, item_id: str) -> int:
        return 0

    @property
    def bot_audio_pending(self) -> bool:
        return False

    def transcript(self, role: str, text: str) -> None:
        pass

    def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def dial(self, request: DialRequest) -> None:
        self.dials.append(request)


def session_for(backend: TwilioStreamBackend, voice_url: str, control: RecordingControl,
                call_id: str, **meta: str) -> TwilioStreamSession:
    agent = Agent(name="bot", tenant="acme", backend="twilio-stream", voice_url=voice_url)
    info = CallInfo(call_id=call_id, tenant="acme", agent="bot", from_="+15550001111",
                    to="+15550002222", agent_cfg=agent, metadata=meta)
    session = backend.create(info, control)
    assert isinstance(session, TwilioStreamSession)
    control.session = session
    return session


async def test_dial_builds_the_request_and_the_resumed_leg_posts_the_action() -> None:
    d = Dial(caller_id="+15550009999", timeout=20, record="record-from-answer",
             hangup_on_star=True, action="/dialed", method="POST")
    d.append(Number("+1 555 000 3333", send_digits="ww12"))
    d.append(Sip("sip:agent@pbx.example.com"))
    app = App({"/voice": doc(d), "/dialed": doc(VoiceResponse().hangup())})
    backend = TwilioStreamBackend(env={"AIGW_TWILIO_AUTH_TOKEN": TOKEN})
    try:
        async with serve(app) as base:
            parent = RecordingControl()
            parent_id = "c0ffee00-0000-4000-8000-00000000000a"
            await session_for(backend, f"{base}/voice", parent, parent_id).start()
            assert parent.hangups == []
            [req] = parent.dials
            assert req.targets == (DialTarget("number", "+15550003333", send_digits="ww12"),
                                   DialTarget("sip", "sip:agent@pbx.example.com"))
            assert (req.caller_id, req.timeout_s, req.record, req.hangup_on_star,
                    req.resume) == ("+15550009999", 20.0, True, True, True)
            assert req.metadata[DIAL_ACTION_KEY] == f"{base}/dialed"
            assert req.metadata[DIAL_CALL_SID_KEY] == call_sid_for(parent_id)

            # Asterisk brings the caller back on a new leg (the callctl side)
            resumed = RecordingControl()
            meta = {"parent_call_id": parent_id, "dial_status": "busy", "dial_duration": "0",
                    "dial_call_sid": "CA" + "12" * 16, **req.metadata}
            leg = session_for(backend, f"{base}/voice", resumed,
                              "c0ffee00-0000-4000-8000-00000000000b", **meta)
            await leg.start()
            form = app.forms("/dialed")[0]
            assert form["CallSid"] == call_sid_for(parent_id)  # the same call to the app
            assert (form["DialCallStatus"], form["DialCallDuration"], form["DialCallSid"]) \
                == ("busy", "0", "CA" + "12" * 16)
            assert form["From"] == "+15550001111" and form["CallStatus"] == "in-progress"
            assert all(ok for _, _, ok in app.requests)
            assert resumed.hangups == ["twiml-hangup"]
            await leg.close("test")
    finally:
        await backend.aclose()


async def test_dial_without_action_and_without_controller_hangs_up(tmp_path: Path) -> None:
    r = VoiceResponse()
    r.dial("+15550003333")
    app = App({"/voice": str(r)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.wait_for(caller.closed.wait(), 2.0)
            assert caller.hangup_at is not None


# -- streams --------------------------------------------------------------------------


async def test_start_stream_forks_caller_audio_while_twiml_goes_on(tmp_path: Path) -> None:
    async with FakeTwilioApp() as fork_app:
        start = Start()
        start.append(Stream(url=fork_app.url, name="listen", status_callback="/ss"))
        stop = Stop()
        stop.append(Stream(name="listen"))
        r = VoiceResponse()
        r.append(start)
        r.pause(length=1)
        r.append(stop)
        r.hangup()
        app = App({"/voice": str(r)})
        async with serve(app) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=None) as caller:
                session = await fork_app.wait_for_session()
                sent = speech(0.6)
                await talk(caller, sent)
                await asyncio.wait_for(caller.closed.wait(), 3.0)
                await fork_app.wait_for(lambda: "stop" in session.kinds(), 2.0)
                assert session.kinds()[:2] == ["connected", "start"]
                assert session.violations == []
                assert session.call_sid == call_sid_for(caller.call_id)
                got = session.inbound_audio
                assert len(got) >= 0.9 * len(sent) // 2  # the caller's audio, mu-law
                events = [f["StreamEvent"] for p, f, _ in app.requests if p == "/ss"]
                assert events == ["stream-started", "stream-stopped"]


async def test_connect_action_runs_after_the_stream_ends(tmp_path: Path) -> None:
    async with FakeTwilioApp(hangup_after_ms=300) as stream_app:
        c = Connect(action="/after")
        c.append(Stream(url=stream_app.url, status_callback="/ss"))
        after = VoiceResponse()
        after.play("/beep.wav")
        after.hangup()
        app = App({"/voice": doc(c), "/after": str(after)})
        beep = wav_file(8000, 0.3)

        async def get_beep(request: web.Request) -> web.Response:
            return web.Response(body=beep, content_type="audio/wav")

        async with serve(app, [web.get("/beep.wav", get_beep)]) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=None) as caller:
                await app.wait_path("/after", 3.0)
                await asyncio.wait_for(caller.closed.wait(), 3.0)
                assert 13 <= len(caller.loud()) <= 17  # the 300 ms after the stream
                events = [f["StreamEvent"] for p, f, _ in app.requests if p == "/ss"]
                assert events == ["stream-started", "stream-stopped"]


async def test_live_redirect_interrupts_the_stream(tmp_path: Path) -> None:
    async with FakeTwilioApp() as stream_app:
        c = Connect()
        c.append(Stream(url=stream_app.url))
        app = App({"/voice": doc(c), "/new": doc(VoiceResponse().hangup())})
        async with serve(app) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
                session = await stream_app.wait_for_session()
                live = session_of(gw)
                await caller.wait_until(lambda: live.streaming, 2.0)
                with pytest.raises(ValueError):
                    await live.redirect(url=None, twiml="<Response><Bogus")
                assert "stop" not in session.kinds()  # a bad document changes nothing
                await live.redirect(url=f"{base}/new", method="GET")
                await asyncio.wait_for(caller.closed.wait(), 3.0)
                assert "stop" in session.kinds()
                [(path, form, ok)] = [r for r in app.requests if r[0] == "/new"]
                assert ok and form["CallSid"] == call_sid_for(caller.call_id)


async def test_live_redirect_with_inline_twiml(tmp_path: Path) -> None:
    g = Gather(action="/never", timeout=10)
    app = App({"/voice": doc(g)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await app.wait_path("/voice")
            await asyncio.sleep(100 * MS)
            live = session_of(gw)
            await live.redirect(url=None, twiml=doc(VoiceResponse().hangup()))
            await asyncio.wait_for(caller.closed.wait(), 2.0)
            assert app.forms("/never") == []


def wav_file(rate: int, seconds: float) -> bytes:
    n = np.arange(int(rate * seconds))
    buf = io.BytesIO()
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 500 * n / rate)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_record_transcribe_callback(tmp_path: Path) -> None:
    async def transcribe(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response({"text": "leave a message after the tone"})

    r = VoiceResponse()
    r.record(action="/recorded", timeout=1, play_beep=False, transcribe=True,
             transcribe_callback="/transcribed")
    app = App({"/voice": str(r), "/recorded": doc(VoiceResponse().hangup())})
    async with serve(app, [web.post("/v1/audio/transcriptions", transcribe)]) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw:
            backend_of(gw).stt = HttpTranscriber(f"{base}/v1/audio/transcriptions",
                                                 "whisper-1", None, 5.0)
            async with Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.sleep(100 * MS)
                await talk(caller, speech(0.6))
                rec = await app.wait_path("/recorded", 4.0)
                form = await app.wait_path("/transcribed", 4.0)
                assert form["TranscriptionText"] == "leave a message after the tone"
                assert form["TranscriptionStatus"] == "completed"
                assert form["RecordingSid"] == rec["RecordingSid"]
                assert form["CallSid"] == call_sid_for(caller.call_id)


def test_dial_request_without_action_does_not_resume() -> None:
    from audiosocket_gw.twilio.twiml import Dial as DialVerb
    from audiosocket_gw.twilio.twiml import parse_twiml
    from audiosocket_gw.twilio.twiml_exec import dial_request

    r = VoiceResponse()
    r.dial("+15550003333", timeout=3)
    [verb] = parse_twiml(str(r))
    assert isinstance(verb, DialVerb)
    req = dial_request(verb, doc_url="http://app/voice", params={"CallSid": "CA" + "0" * 32})
    assert (req.resume, req.metadata, req.timeout_s) == (False, {}, 5.0)  # clamped to 5 s
    assert req.targets == (DialTarget("number", "+15550003333"),)


def test_backend_wiring_from_settings(tmp_path: Path) -> None:
    from audiosocket_gw.recordings.settings import RecordingSettings
    from audiosocket_gw.settings import TtsSettings
    from tests.helpers import make_config

    cfg = make_config(backend="twilio-stream", stream_url="ws://127.0.0.1:1/s",
                      data_dir=str(tmp_path), http="0.0.0.0:9999", api_token="t" * 32)
    rec = RecordingSettings(transcribe_url="http://127.0.0.1:1/v1/audio/transcriptions")
    backend = TwilioStreamBackend.from_config(cfg, tts=TtsSettings(engine="none"),
                                              recording=rec)
    assert backend.tts is None
    assert isinstance(backend.stt, HttpTranscriber)
    assert backend.recordings_dir == tmp_path / "recordings" / "twiml"
    assert backend.api_base == "http://127.0.0.1:9999"
    plain = TwilioStreamBackend.from_config(cfg, tts=TtsSettings(engine="none"))
    assert plain.stt is None


async def test_redirect_loop_hangs_up_but_a_menu_loop_goes_on(tmp_path: Path) -> None:
    from audiosocket_gw.twilio.twiml_exec import MAX_REDIRECTS

    loop = VoiceResponse()
    loop.redirect("/loop")
    menu = VoiceResponse()
    menu.pause(length=0)  # plays (for 0 s): progress
    menu.redirect("/menu", method="GET")
    visits: list[int] = []

    def menu_page(form: dict[str, str]) -> str:
        visits.append(1)
        return str(menu) if len(visits) <= MAX_REDIRECTS + 3 else "<Response><Hangup/></Response>"

    for start, pages in (("/loop", {"/loop": str(loop)}), ("/menu", {"/menu": menu_page})):
        app = App(dict(pages))
        async with serve(app) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}{start}")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.wait_for(caller.closed.wait(), 3.0)
                n = len(app.requests)
                if start == "/loop":
                    assert n == MAX_REDIRECTS + 1
                else:
                    assert n == MAX_REDIRECTS + 4  # every visit ran, then <Hangup>
                    assert all(ok for _, _, ok in app.requests)
