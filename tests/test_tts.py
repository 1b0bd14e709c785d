"""Text-to-speech for <Say>: engine choice, the OpenAI-compatible endpoint over a real
loopback server, espeak-ng from the OS, the LRU + disk cache, and the settings."""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from audiosocket_gw.config import ConfigError
from audiosocket_gw.settings import TtsSettings
from audiosocket_gw.tts import (
    DEFAULT_OPENAI_VOICE,
    CachedTts,
    EspeakTts,
    OpenAiTts,
    TtsError,
    build_tts,
    espeak_voice,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")


def tone_wav(rate: int, seconds: float) -> bytes:
    n = np.arange(int(rate * seconds))
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * n / rate)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


class SpeechEndpoint:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, object]] = []
        self.auth: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.auth.append(request.headers.get("Authorization"))
        if self.status != 200:
            return web.Response(status=self.status, text="no")
        return web.Response(body=tone_wav(24000, 0.5), content_type="audio/wav")


async def serve_endpoint(ep: SpeechEndpoint) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/audio/speech", ep.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1/audio/speech"


async def test_openai_endpoint_and_cache(tmp_path: Path) -> None:
    ep = SpeechEndpoint()
    runner, url = await serve_endpoint(ep)
    tts = CachedTts(OpenAiTts(url, "tts-1", "sk-secret"), disk_dir=tmp_path / "cache")
    try:
        pcm = await tts.synthesize("Hello", voice="Polly.Joanna", language="en-US")
        assert abs(len(pcm) / 16000 - 0.5) < 0.01  # 24 kHz WAV -> 8 kHz slin
        again = await tts.synthesize("Hello", voice="Polly.Joanna", language="en-US")
        assert again == pcm and len(ep.bodies) == 1 and (tts.hits, tts.misses) == (1, 1)
        await tts.synthesize("Hello", voice="nova")
        assert ep.bodies[0] == {"model": "tts-1", "input": "Hello", "response_format": "wav",
                                "voice": DEFAULT_OPENAI_VOICE}
        assert ep.bodies[1]["voice"] == "nova"
        assert ep.auth[0] == "Bearer sk-secret"
        [cached, _] = sorted((tmp_path / "cache").iterdir())
        assert stat.S_IMODE(os.stat(cached).st_mode) == 0o600
        # a new process (empty memory) reads the disk cache, no request
        fresh = CachedTts(OpenAiTts(url, "tts-1", None), disk_dir=tmp_path / "cache")
        assert await fresh.synthesize("Hello", voice="Polly.Joanna", language="en-US") == pcm
        assert len(ep.bodies) == 2
        await fresh.aclose()
    finally:
        await tts.aclose()
        await runner.cleanup()


async def test_openai_endpoint_errors() -> None:
    ep = SpeechEndpoint(status=500)
    runner, url = await serve_endpoint(ep)
    tts = OpenAiTts(url, "tts-1", None)
    try:
        with pytest.raises(TtsError) as err:
            await tts.synthesize("Hello")
        assert err.value.reason == "http"
        with pytest.raises(TtsError) as err:
            await tts.synthesize("x" * 5000)
        assert err.value.reason == "too-long"
    finally:
        await tts.aclose()
        await runner.cleanup()


async def test_lru_is_bounded_by_bytes() -> None:
    class Fake:
        name = "fake"
        calls = 0

        async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes:
            Fake.calls += 1
            return b"\x01\x00" * 1000

        async def aclose(self) -> None:
            pass

    tts = CachedTts(Fake(), max_bytes=4000)
    for t in ("a", "b", "c"):
        await tts.synthesize(t)
    await tts.synthesize("c")
    await tts.synthesize("a")  # evicted by c
    assert Fake.calls == 4


@needs_espeak
async def test_espeak_languages_and_voices() -> None:
    tts = EspeakTts()
    en = await tts.synthesize("Press one for sales.", language="en-US")
    fr = await tts.synthesize("Appuyez sur un.", language="fr-FR", voice="woman")
    odd = await tts.synthesize("--help", language="zz-ZZ")  # unknown: English; not an option
    for pcm in (en, fr, odd):
        samples = np.frombuffer(pcm, dtype="<i2")
        assert len(samples) > 2000 and np.abs(samples).mean() > 200


def test_espeak_voice_names() -> None:
    assert espeak_voice("", "en-US") == ["en-us", "en"]
    assert espeak_voice("Polly.Joanna", "fr-FR") == ["fr-fr+f3", "fr+f3", "en+f3"]
    assert espeak_voice("man", "") == ["en-us", "en"]


def test_build_tts_choice(caplog: pytest.LogCaptureFixture) -> None:
    with_url = TtsSettings(url="http://127.0.0.1:1/v1/audio/speech")
    tts = build_tts(with_url, which=lambda _: None)
    assert tts is not None and tts.name == "openai"
    tts = build_tts(TtsSettings(), which=lambda _: "/usr/bin/espeak-ng")
    assert tts is not None and tts.name == "espeak"
    assert build_tts(TtsSettings(engine="none"), which=lambda _: "/x") is None
    with caplog.at_level(logging.WARNING, "audiosocket_gw.tts"):
        assert build_tts(TtsSettings(), which=lambda _: None) is None
    assert "<Say> will be skipped" in caplog.text


def test_tts_settings() -> None:
    s = TtsSettings.from_env({"AIGW_TTS_URL": "https://tts.example/v1/audio/speech",
                              "AIGW_TTS_KEY": "sk-1", "AIGW_TTS_ENGINE": "openai"})
    assert (s.engine, s.model) == ("openai", "tts-1")
    assert "sk-1" not in repr(s)
    for env, what in (({"AIGW_TTS_ENGINE": "festival"}, "AIGW_TTS_ENGINE"),
                      ({"AIGW_TTS_URL": "ftp://x"}, "AIGW_TTS_URL"),
                      ({"AIGW_TTS_ENGINE": "openai"}, "AIGW_TTS_URL")):
        with pytest.raises(ConfigError, match=what):
            TtsSettings.from_env(env)
