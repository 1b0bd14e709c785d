"""Voice-webhook emulation over real sockets: gateway -> aiohttp TwiML app -> stream app."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from audiosocket_gw.testing.fakeapp import FakeTwilioApp
from audiosocket_gw.twilio.ids import call_sid_for
from audiosocket_gw.twilio.signature import validate_signature
from audiosocket_gw.twilio.webhook import decode_audio_8k
from tests.backends.test_twilio_stream import Caller, speech, tenants_toml
from tests.helpers import running_gateway

TOKEN = "test-auth-token"


class TwimlApp:
    """A Twilio voice app: answers TwiML per path, validates every signature."""

    def __init__(self, pages: dict[str, str | Callable[[], web.StreamResponse]]) -> None:
        self.pages = pages
        self.requests: list[tuple[str, dict[str, str], bool]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = str(request.url)
        ok = validate_signature(TOKEN, url, form, request.headers.get("X-Twilio-Signature", ""))
        self.requests.append((request.path, form, ok))
        page = self.pages[request.path]
        if callable(page):
            return page()
        return web.Response(text=page, content_type="text/xml")


@asynccontextmanager
async def serve(app: TwimlApp, wav: bytes | None = None) -> AsyncIterator[str]:
    web_app = web.Application()
    web_app.router.add_post("/{tail:.*}", app.handle)
    if wav is not None:
        async def get_wav(request: web.Request) -> web.Response:
            return web.Response(body=wav, content_type="audio/wav")

        web_app.router.add_get("/hello.wav", get_wav)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    app.url = f"http://127.0.0.1:{port}"
    try:
        yield app.url
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_TWILIO_AUTH_TOKEN", TOKEN)


def twiml(*verbs: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response>' + "".join(verbs) + "</Response>"


async def test_connect_stream_with_parameters_signed(tmp_path: Path) -> None:
    async with FakeTwilioApp() as stream_app:
        page = twiml("<Enqueue>support</Enqueue>",  # unsupported: skipped
                     f'<Connect><Stream url="{stream_app.url}" name="bot">'
                     '<Parameter name="lang" value="fr"/><Parameter name="tier" value="gold"/>'
                     "</Stream></Connect>")
        app = TwimlApp({"/voice": twiml("<Redirect>/voice2</Redirect>"), "/voice2": page})
        async with serve(app) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
                session = await stream_app.wait_for_session()
                await stream_app.wait_for(lambda: len(session.of_kind("media")) >= 3, 2.0)
                assert session.custom_parameters == {"lang": "fr", "tier": "gold"}
                assert session.violations == []
                assert [p for p, _, _ in app.requests] == ["/voice", "/voice2"]
                assert all(ok for _, _, ok in app.requests)
                form = app.requests[0][1]
                assert form["CallSid"] == call_sid_for(caller.call_id) == session.call_sid
                assert form["AccountSid"] == session.account_sid == "AC" + "ab" * 16
                assert form["CallStatus"] == "ringing"
                assert form["Direction"] == "inbound"
                assert form["ApiVersion"] == "2010-04-01"
                assert set(form) >= {"From", "To", "Caller", "Called"}
                lat = gw.backends["twilio-stream"].metrics.webhook_latency
                assert lat._sum.get() > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("verb", ["<Hangup/>", '<Reject reason="busy"/>', ""])
async def test_hangup_reject_and_end_of_document(tmp_path: Path, verb: str) -> None:
    app = TwimlApp({"/voice": twiml(verb)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.wait_for(caller.closed.wait(), 2.0)
            assert caller.hangup_at is not None
            assert caller.hangup_at - caller.t0 < 0.5
            assert app.requests and app.requests[0][2]


async def test_pause_then_connect(tmp_path: Path) -> None:
    async with FakeTwilioApp() as stream_app:
        page = twiml('<Pause length="1"/>', f'<Connect><Stream url="{stream_app.url}"/></Connect>')
        async with serve(TwimlApp({"/voice": page})) as base:
            cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
            async with running_gateway(config=cfg) as gw, \
                    Caller(gw.audiosocket.address, audio=None) as caller:
                session = await stream_app.wait_for_session(wait_s=3.0)
                await stream_app.wait_for(lambda: bool(session.events), 1.0)
                connected_at = session.events[0].at
                assert connected_at - caller.t0 >= 0.95
                # comfort silence meanwhile: the line stayed up
                assert caller.hangup_at is None and len(caller.frames) >= 40


def wav_bytes(rate: int, seconds: float) -> bytes:
    n = np.arange(int(rate * seconds))
    buf = io.BytesIO()
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 500 * n / rate)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_play_wav_url_then_hangup(tmp_path: Path) -> None:
    app = TwimlApp({"/voice": twiml("<Play>/hello.wav</Play>", "<Hangup/>")})
    async with serve(app, wav=wav_bytes(16000, 0.4)) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice")
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.wait_for(caller.closed.wait(), 3.0)
            assert caller.hangup_at is not None
            loud = caller.loud()
            assert 18 <= len(loud) <= 22  # 400 ms played whole before the hangup
            assert caller.hangup_at >= loud[-1][0]


@pytest.mark.parametrize("rate", [44100, 16000, 8000])
def test_decode_audio_8k_rates(rate: int) -> None:
    pcm = np.frombuffer(decode_audio_8k(wav_bytes(rate, 0.5)), dtype="<i2")
    assert abs(len(pcm) - 4000) <= 40
    mid = pcm[500:3500].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mid))
    assert abs(np.argmax(spectrum) * 8000 / len(mid) - 500) < 10
    assert 0.3 * 32767 < np.abs(mid).max() < 0.5 * 32767


def test_decode_audio_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        decode_audio_8k(b"not a wav at all")


@pytest.mark.parametrize("fallback", ["hangup", "announce"])
async def test_webhook_down_fallback(tmp_path: Path, fallback: str) -> None:
    app = TwimlApp({"/voice": lambda: web.Response(status=500)})
    async with serve(app) as base:
        cfg = tenants_toml(tmp_path, voice_url=f"{base}/voice", extra={"fallback": fallback})
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=None) as caller:
            await asyncio.wait_for(caller.closed.wait(), 3.0)
            assert caller.hangup_at is not None
            n = len(caller.loud())
            assert (25 <= n <= 35) if fallback == "announce" else n == 0
            fails = gw.backends["twilio-stream"].metrics.app_connect_failures
            assert fails.labels("http-5xx")._value.get() == 1  # type: ignore[attr-defined]


async def test_webhook_timeout_falls_back(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text=twiml())

    web_app = web.Application()
    web_app.router.add_post("/voice", slow)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        cfg = tenants_toml(tmp_path, voice_url=f"http://127.0.0.1:{port}/voice")
        async with running_gateway(config=cfg) as gw:
            gw.backend_for(gw.default_call_info("x")).webhook_timeout = 0.2  # type: ignore[attr-defined]
            async with Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.wait_for(caller.closed.wait(), 3.0)
                assert caller.hangup_at is not None
                assert caller.hangup_at - caller.t0 < 1.0
    finally:
        release.set()
        await runner.cleanup()
