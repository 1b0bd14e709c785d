"""Transcription of finished recordings: per speaker when the file is stereo.

Engines:

- ``HttpTranscriber``: any OpenAI-compatible ``POST /v1/audio/transcriptions``
  (multipart form: ``file``, ``model``, ``response_format=json``; reply
  ``{"text": ...}``), bearer key optional. One request per channel.
- ``LocalWhisper``: ``faster-whisper`` when it is importable *and*
  ``AIGW_WHISPER_MODEL_PATH`` is set; otherwise ``build_transcriber`` skips it.

A stereo gateway recording is split into its channels (left = caller, right = bot) and
each is transcribed alone, which gives per-speaker text without diarisation; a mono
MixMonitor file gives one ``mixed`` text. Splitting is pure (``split_channels``).
These are the batch transcripts of the recording; the Realtime backend's live
transcripts (``Call.transcripts``) are kept separately.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any, Protocol

import aiohttp
import numpy as np

from .settings import RecordingSettings

SPEAKERS_STEREO = ("caller", "bot")


class TranscriptionError(Exception):
    """One attempt failed; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def split_channels(path: str) -> list[tuple[str, bytes, float]]:
    """[(speaker, mono 16-bit WAV bytes, seconds)] of a recording; silent channels kept."""
    import soundfile as sf

    data, rate = sf.read(path, dtype="int16", always_2d=True)
    names = SPEAKERS_STEREO if data.shape[1] == 2 else ("mixed",)
    out: list[tuple[str, bytes, float]] = []
    for i, name in enumerate(names):
        buf = io.BytesIO()
        sf.write(buf, np.ascontiguousarray(data[:, i]), rate, subtype="PCM_16", format="WAV")
        out.append((name, buf.getvalue(), len(data) / rate))
    return out


def is_silent(wav: bytes, threshold: float = 64.0) -> bool:
    """True when a channel holds no audible audio (no request needed for it)."""
    import soundfile as sf

    data, _ = sf.read(io.BytesIO(wav), dtype="int16")
    return data.size == 0 or float(np.abs(data.astype(np.int32)).mean()) < threshold


class Transcriber(Protocol):
    engine: str

    async def transcribe(self, wav: bytes, filename: str) -> str: ...

    async def aclose(self) -> None: ...


class HttpTranscriber:
    """An OpenAI-compatible transcription endpoint over aiohttp."""

    engine = "http"

    def __init__(self, url: str, model: str, key: str | None, timeout_s: float) -> None:
        self.url = url
        self.model = model
        self._key = key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def transcribe(self, wav: bytes, filename: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        form = aiohttp.FormData()
        form.add_field("file", wav, filename=filename, content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("response_format", "json")
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with self._session.post(self.url, data=form, headers=headers) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise TranscriptionError(f"http_{resp.status // 100}xx",
                                             f"HTTP {resp.status}: {body[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TranscriptionError("network", f"{type(exc).__name__}: {exc}") from exc
        try:
            reply: Any = json.loads(body)
            return str(reply["text"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise TranscriptionError("bad_reply", f"unexpected reply {body[:200]!r}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class LocalWhisper:
    """faster-whisper on the local CPU (model loaded once, runs in a thread)."""

    engine = "faster-whisper"

    def __init__(self, model_path: str) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(model_path, device="cpu", compute_type="int8")
        self._lock = asyncio.Lock()

    async def transcribe(self, wav: bytes, filename: str) -> str:
        def run() -> str:
            segments, _info = self._model.transcribe(io.BytesIO(wav))
            return " ".join(s.text.strip() for s in segments).strip()

        async with self._lock:  # one at a time: it uses every core already
            return await asyncio.to_thread(run)

    async def aclose(self) -> None:
        return None


def build_transcriber(settings: RecordingSettings) -> Transcriber | None:
    """The configured engine: the HTTP endpoint first, else local faster-whisper if usable."""
    if settings.transcribe_url:
        return HttpTranscriber(settings.transcribe_url, settings.transcribe_model,
                               settings.transcribe_key, settings.transcribe_timeout_s)
    if settings.whisper_model_path:
        try:
            return LocalWhisper(settings.whisper_model_path)
        except ImportError:
            return None
    return None
