"""Text-to-speech for TwiML ``<Say>``: pluggable engines behind one cache.

Why: Twilio speaks ``<Say>`` itself; a migrated IVR expects the same. Two engines:

* :class:`OpenAiTts`: any OpenAI-compatible ``POST .../v1/audio/speech`` endpoint
  (JSON ``model``, ``input``, ``voice``, ``response_format=wav``; bearer key optional).
  Twilio voice names (``alice``, ``Polly.Joanna``...) mean nothing there: a ``voice`` that
  is one of the endpoint's own voices (:data:`OPENAI_VOICES`) is passed through, anything
  else becomes :data:`DEFAULT_OPENAI_VOICE`.
* :class:`EspeakTts`: the embedded default, espeak-ng from the OS (``espeak-ng --stdout
  -v <voice>``, the text on stdin so that no text is ever read as an option). The
  ``language`` (``en-US`` -> ``en-us``, falling back to the bare language ``en``, then
  English) picks the espeak voice; Twilio's ``woman``/``alice``/``Polly.*`` female voices
  get espeak's ``+f3`` variant.

Both return 8 kHz mono slin, converted with :func:`~audiosocket_gw.twilio.webhook.
decode_audio_8k`. :class:`CachedTts` wraps either: a bounded in-memory LRU (by bytes) and,
when given a directory (``<data dir>/tts-cache``), files named by the SHA-256 of
engine + voice + language + text (mode 0600), so a prompt is synthesized once.

:func:`build_tts` picks the engine from :class:`~audiosocket_gw.settings.TtsSettings`
(``AIGW_TTS_ENGINE=auto|espeak|openai|none``) and logs a warning at startup when there is
none (``<Say>`` is then skipped at call time, with a warning, and counted).

Errors: :class:`TtsError` with a bounded ``reason`` (``timeout``, ``engine``, ``http``,
``decode``, ``too-long``). The key is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

import aiohttp

from .settings import TtsSettings
from .twilio.webhook import decode_audio_8k

__all__ = [
    "DEFAULT_OPENAI_VOICE",
    "MAX_TEXT_CHARS",
    "OPENAI_VOICES",
    "CachedTts",
    "EspeakTts",
    "OpenAiTts",
    "TtsEngine",
    "TtsError",
    "build_tts",
    "espeak_voice",
]

log = logging.getLogger("audiosocket_gw.tts")

MAX_TEXT_CHARS: Final = 4096
"""Longest ``<Say>`` text synthesized (Twilio's limit too)."""
MAX_AUDIO_BYTES: Final = 16 * 1024 * 1024
OPENAI_VOICES: Final = frozenset({
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
    "verse"})
DEFAULT_OPENAI_VOICE: Final = "alloy"
_FEMALE: Final = ("woman", "alice", "polly.joanna", "polly.amy", "polly.emma",
                  "polly.kendra", "polly.kimberly", "polly.salli", "polly.ivy")


class TtsError(Exception):
    """Synthesis failed; ``reason`` is a bounded metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TtsEngine(Protocol):
    """Turns text into 8 kHz mono slin."""

    name: str

    async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes:
        """The speech for ``text``; raises :class:`TtsError`."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


def _check_text(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise TtsError(f"<Say> text longer than {MAX_TEXT_CHARS} characters", reason="too-long")


async def _decode(data: bytes) -> bytes:
    try:
        return await asyncio.to_thread(decode_audio_8k, data)
    except ValueError as exc:
        raise TtsError(f"TTS audio unreadable: {exc}", reason="decode") from None


# -- espeak-ng -------------------------------------------------------------------------


def espeak_voice(voice: str, language: str) -> list[str]:
    """espeak-ng voice names to try, best first, for a Twilio ``voice``/``language``."""
    lang = (language or "en-US").strip().lower().replace("_", "-")
    names = [lang]
    if "-" in lang:
        names.append(lang.split("-", 1)[0])
    if "en" not in names:
        names.append("en")
    if voice.strip().lower().startswith(_FEMALE):
        names = [n + "+f3" for n in names]
    return names


class EspeakTts:
    """espeak-ng from the OS, one subprocess per (uncached) prompt."""

    name = "espeak"

    def __init__(self, binary: str = "espeak-ng", timeout_s: float = 10.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    async def _run(self, text: str, voice: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--stdout", "-v", voice,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(self.timeout_s):
                out, _ = await proc.communicate(text.encode("utf-8"))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TtsError("espeak-ng timed out", reason="timeout") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out

    async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes:
        _check_text(text)
        for name in espeak_voice(voice, language):
            try:
                rc, out = await self._run(text, name)
            except OSError as exc:
                raise TtsError(f"cannot run espeak-ng: {exc}", reason="engine") from None
            if rc == 0 and out:
                return await _decode(out)
        raise TtsError("espeak-ng failed for every voice tried", reason="engine")

    async def aclose(self) -> None:
        return None


# -- OpenAI-compatible endpoint ----------------------------------------------------------


class OpenAiTts:
    """An OpenAI-compatible ``/v1/audio/speech`` endpoint over aiohttp."""

    name = "openai"

    def __init__(self, url: str, model: str, key: str | None, timeout_s: float = 15.0) -> None:
        self.url = url
        self.model = model
        self._key = key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes:
        _check_text(text)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        chosen = voice.strip().lower()
        body = {"model": self.model, "input": text, "response_format": "wav",
                "voice": chosen if chosen in OPENAI_VOICES else DEFAULT_OPENAI_VOICE}
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with self._session.post(self.url, json=body, headers=headers) as resp:
                data = await resp.content.read(MAX_AUDIO_BYTES + 1)
                if resp.status >= 400:
                    raise TtsError(f"TTS endpoint answered HTTP {resp.status}", reason="http")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TtsError(f"TTS endpoint unreachable: {type(exc).__name__}",
                           reason="http") from None
        if len(data) > MAX_AUDIO_BYTES:
            raise TtsError("TTS audio too large", reason="decode")
        return await _decode(data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- cache -------------------------------------------------------------------------------


class CachedTts:
    """An engine behind a bounded LRU (bytes) and an optional on-disk cache."""

    def __init__(self, engine: TtsEngine, *, max_bytes: int = 32 * 1024 * 1024,
                 disk_dir: Path | None = None) -> None:
        self.engine = engine
        self.name = engine.name
        self.max_bytes = max_bytes
        self.disk_dir = disk_dir
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def _key(self, text: str, voice: str, language: str) -> str:
        raw = "\x00".join((self.engine.name, voice, language, text))
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def _remember(self, key: str, pcm: bytes) -> None:
        if len(pcm) > self.max_bytes:
            return
        old = self._lru.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._lru[key] = pcm
        self._size += len(pcm)
        while self._size > self.max_bytes:
            _, dropped = self._lru.popitem(last=False)
            self._size -= len(dropped)

    def _disk_path(self, key: str) -> Path | None:
        return None if self.disk_dir is None else self.disk_dir / f"{key}.slin"

    def _disk_read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError:
            return None

    def _disk_write(self, path: Path, pcm: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pcm)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("TTS cache not written: %s", exc)

    async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes:
        key = self._key(text, voice, language)
        pcm = self._lru.get(key)
        if pcm is not None:
            self._lru.move_to_end(key)
            self.hits += 1
            return pcm
        path = self._disk_path(key)
        if path is not None:
            pcm = await asyncio.to_thread(self._disk_read, path)
            if pcm:
                self.hits += 1
                self._remember(key, pcm)
                return pcm
        self.misses += 1
        pcm = await self.engine.synthesize(text, voice=voice, language=language)
        self._remember(key, pcm)
        if path is not None:
            await asyncio.to_thread(self._disk_write, path, pcm)
        return pcm

    async def aclose(self) -> None:
        await self.engine.aclose()


def build_tts(
    settings: TtsSettings,
    data_dir: Path | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
) -> CachedTts | None:
    """The engine ``settings`` select, cached; None (with a startup warning) when none is.

    ``auto``: the endpoint when ``AIGW_TTS_URL`` is set, else espeak-ng when on the PATH.
    """
    engine: TtsEngine | None = None
    if settings.engine in ("auto", "openai") and settings.url:
        engine = OpenAiTts(settings.url, settings.model, settings.key, settings.timeout_s)
    elif settings.engine in ("auto", "espeak"):
        binary = which("espeak-ng")
        if binary is not None:
            engine = EspeakTts(binary)
        elif settings.engine == "espeak":
            log.warning("AIGW_TTS_ENGINE=espeak but espeak-ng is not installed: "
                        "TwiML <Say> will be skipped")
    if engine is None:
        if settings.engine != "none":
            log.warning("no text-to-speech engine (install espeak-ng or set AIGW_TTS_URL): "
                        "TwiML <Say> will be skipped, with a warning per call")
        return None
    log.info("text-to-speech for TwiML <Say>: %s", engine.name)
    return CachedTts(engine, disk_dir=None if data_dir is None else data_dir / "tts-cache")
