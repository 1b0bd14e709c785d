"""Execute TwiML for one call against a small host protocol (the backend session).

Why: a Twilio voice app drives the call with TwiML documents: the voice webhook's
answer, then each ``action`` URL's (``<Gather>``, ``<Record>``, ``<Dial>``,
``<Connect>``), ``<Redirect>``, or a live update through the REST API. This module is the
interpreter; :mod:`.twiml` parses (pure), :mod:`.webhook` does the HTTP, and the
``twilio-stream`` session (:class:`TwimlHost`) plays audio, opens Media Streams, dials.

How: :class:`TwimlRunner` ``run(url)`` fetches a document (signed like Twilio) and runs its
verbs in order; a verb that hands over to a new document (``<Redirect>``, an ``action``)
returns the next request and the loop fetches it. The session feeds it the caller's
DTMF (:meth:`TwimlRunner.on_dtmf`) and audio (:meth:`TwimlRunner.on_audio`); they are
used only while a ``<Gather>`` or ``<Record>`` listens. Every request carries the call's
form (``CallSid``, ``AccountSid``, ``From``, ``To``, ``CallStatus``, ``Direction``,
``ApiVersion``) plus the verb's own fields. Exact behaviour per verb: docs/TWIML.md.

Limits: at most :data:`MAX_REDIRECTS` documents in a row that do nothing audible
(a redirect loop hangs up, reason ``twiml-redirect-loop``); ``<Pause>`` and
``<Play>``/``<Say>`` loops are capped; a recording is capped at ``maxLength`` (at most
3600 s) and keeps at most :data:`SPILL_BYTES` in memory (the rest goes to a 0600 part
file, turned into the WAV in a thread).

Callbacks (``recordingStatusCallback``, ``transcribeCallback``, ``<Stream
statusCallback>``) are sent from background tasks; :meth:`TwimlRunner.aclose` waits for
them (bounded) so they still go out when the call has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urljoin

import aiohttp
import numpy as np

from ..dial import DialRequest
from . import verbrec
from .ids import CALL_PREFIX, RECORDING_PREFIX, is_sid, recording_sid_for
from .twiml import (
    ConnectStream,
    Dial,
    Gather,
    Hangup,
    Pause,
    Play,
    PlayDigits,
    Prompt,
    Record,
    Redirect,
    Reject,
    Say,
    StartStream,
    StopStream,
    Verb,
)
from .webhook import WebhookError, fetch_audio_8k, fetch_twiml, signed_post

__all__ = [
    "DIAL_ACTION_KEY",
    "DIAL_CALL_SID_KEY",
    "DIAL_METHOD_KEY",
    "MAX_REDIRECTS",
    "RECORD_VERB_DIR",
    "SpeechSynth",
    "SpeechToText",
    "TwimlContext",
    "TwimlHost",
    "TwimlRunner",
    "beep_pcm",
    "dial_request",
    "record_verb_path",
    "trim_silence",
    "wav_bytes",
]

log = logging.getLogger("audiosocket_gw.twilio.twiml_exec")

RATE: Final = 8000
MAX_REDIRECTS: Final = 5
"""Most documents in a row that play nothing and wait for nothing (redirect loops)."""
MAX_PLAY_LOOPS: Final = 10
"""Most repetitions of one ``<Play>``/``<Say>`` (``loop="0"`` means 1000 at Twilio)."""
MAX_PAUSE_S: Final = 60
"""Longest ``<Pause>`` honoured."""
MAX_RECORD_S: Final = 3600
SILENCE_LEVEL: Final = 100.0
"""Mean ``|sample|`` of a 20 ms frame below which the caller is silent (<Record>, speech)."""
SPEECH_AUTO_S: Final = 1.5
"""``speechTimeout="auto"``: silence that ends an utterance."""
MAX_SPEECH_S: Final = 60.0
SPEECH_CONFIDENCE: Final = "0.9"
"""``Confidence`` sent with ``SpeechResult`` (transcription endpoints report none)."""
CALLBACK_TIMEOUT_S: Final = 10.0
SPILL_BYTES: Final = 256 * 1024
"""A ``<Record>`` keeps at most about this much audio in memory (8 s); the rest is
appended to ``.{RecordingSid}.pcm.part`` in the recordings folder."""
MAX_TRANSCRIBE_BYTES: Final = 25 * 1024 * 1024
"""Largest recording sent for transcription (the OpenAI endpoint's limit)."""

DIAL_ACTION_KEY: Final = "twiml_dial_action"
"""``DialRequest.metadata`` key: the ``<Dial action>`` URL (absolute)."""
DIAL_METHOD_KEY: Final = "twiml_dial_method"
"""``DialRequest.metadata`` key: its method (``POST``/``GET``)."""
DIAL_CALL_SID_KEY: Final = "twiml_call_sid"
"""``DialRequest.metadata`` key: the parent ``CallSid`` the app knows the call by."""
DIAL_FROM_KEY: Final = "twiml_from"
DIAL_TO_KEY: Final = "twiml_to"
DIAL_DIRECTION_KEY: Final = "twiml_direction"
DIAL_DOC_KEY: Final = "twiml_doc_url"


# -- what the runner needs ------------------------------------------------------------------


class TwimlHost(Protocol):
    """What executing TwiML needs from the call (the ``twilio-stream`` session)."""

    async def play_and_wait(self, pcm: bytes) -> None:
        """Queue ``pcm`` (8 kHz slin) and return once all of it has been written
        (or dropped by :meth:`stop_audio`)."""

    def stop_audio(self) -> None:
        """Drop queued audio now (a caller's digit interrupts a prompt)."""

    async def pause(self, seconds: float) -> None:
        """Let ``seconds`` of comfort silence go by."""

    def hangup(self, reason: str) -> None:
        """End the call."""

    def dial(self, request: DialRequest) -> None:
        """Hand the caller to the dialplan's ``Dial()`` (this AudioSocket leg ends)."""

    async def send_digits(self, digits: str) -> None:
        """``<Play digits>``: DTMF toward the caller's peer through call control (AMI
        ``PlayDTMF``, never 0x03 frames toward Asterisk); returns once they are played
        (about)."""

    async def connect_stream(self, verb: ConnectStream) -> bool:
        """Open the bidirectional Media Stream and return once it has ended.

        True: the app closed it (the TwiML continues); False: the call is over."""

    def app_closed(self) -> None:
        """A ``<Connect><Stream>`` without ``action`` ended with nothing after it: apply
        the agent's ``on_app_close``."""

    async def start_fork(self, verb: StartStream) -> None:
        """Start a one-way fork of the call's audio (``<Start><Stream>``)."""

    async def stop_fork(self, name: str | None) -> None:
        """Stop the fork called ``name`` (None: all of them)."""


class SpeechSynth(Protocol):
    """Text-to-speech (``audiosocket_gw.tts``)."""

    async def synthesize(self, text: str, *, voice: str = "", language: str = "") -> bytes: ...


class SpeechToText(Protocol):
    """A transcription client (``audiosocket_gw.recordings.transcribe``)."""

    async def transcribe(self, wav: bytes, filename: str) -> str: ...


@dataclass
class TwimlContext:
    """Everything per call the runner uses besides the host."""

    http: aiohttp.ClientSession
    call_id: str
    params: dict[str, str]
    """The call's form sent with every request (``CallSid``...); ``CallStatus`` is
    ``ringing`` for the first request and ``in-progress`` afterwards."""
    token: str | None
    time_limit: float
    call_log: logging.LoggerAdapter[logging.Logger] | logging.Logger = log
    tts: SpeechSynth | None = None
    stt: SpeechToText | None = None
    recordings_dir: Path | None = None
    recording_url: Callable[[str], str] = field(default=lambda sid: sid)
    observe_latency: Callable[[float], None] | None = None
    count: Callable[[str, str], None] = field(default=lambda what, label: None)
    """``count(event, label)``: metrics hook (``say-skipped``/reason, ``verb``/name...)."""


@dataclass(frozen=True)
class _Next:
    url: str
    method: str = "POST"
    extra: dict[str, str] = field(default_factory=dict)
    ignore_twiml: bool = False


# -- pure helpers -----------------------------------------------------------------------


RECORD_VERB_DIR: Final = Path("recordings") / "twiml"
"""Where ``<Record>`` files go, under the data directory."""


def record_verb_path(data_dir: Path, recording_sid: str) -> Path | None:
    """The WAV of ``<Record>`` recording ``recording_sid`` under ``data_dir`` (None when
    ``recording_sid`` is not an ``RE`` SID, so a client-supplied SID can never name
    another path). For the REST media URL ``.../Recordings/{RecordingSid}``."""
    if not is_sid(RECORDING_PREFIX, recording_sid):
        return None
    return data_dir / RECORD_VERB_DIR / f"{recording_sid}.wav"


def beep_pcm(ms: int = 500, freq_hz: float = 1000.0) -> bytes:
    """Twilio's ``<Record playBeep>`` beep: a ``ms`` tone at ``freq_hz`` (8 kHz slin)."""
    n = np.arange(ms * RATE // 1000, dtype=np.float64)
    tone = 0.35 * 32767.0 * np.sin(2.0 * math.pi * freq_hz * n / RATE)
    ramp = 40
    tone[:ramp] *= np.linspace(0.0, 1.0, ramp)
    tone[-ramp:] *= np.linspace(1.0, 0.0, ramp)
    return np.round(tone).astype("<i2").tobytes()


def _frame_levels(pcm: bytes, frame: int = 160) -> np.ndarray[Any, np.dtype[np.float64]]:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % (2 * frame)], dtype="<i2")
    if not samples.size:
        return np.zeros(0)
    frames = samples.reshape(-1, frame).astype(np.float64)
    levels: np.ndarray[Any, np.dtype[np.float64]] = np.abs(frames).mean(axis=1)
    return levels


def trim_silence(pcm: bytes, level: float = SILENCE_LEVEL) -> bytes:
    """``pcm`` without its leading and trailing silent 20 ms frames (``trim-silence``)."""
    levels = _frame_levels(pcm)
    loud = np.nonzero(levels >= level)[0]
    if not loud.size:
        return b""
    return pcm[int(loud[0]) * 320: (int(loud[-1]) + 1) * 320]


def wav_bytes(pcm: bytes) -> bytes:
    """A mono 16-bit 8 kHz WAV file holding ``pcm``."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def dial_request(verb: Dial, *, doc_url: str, params: Mapping[str, str]) -> DialRequest:
    """The :class:`DialRequest` for ``verb`` found in the document at ``doc_url``.

    With an ``action``, ``resume`` is set and the metadata carries what the resumed leg
    needs to continue the TwiML: the absolute action URL and method, and the parent
    call's ``CallSid``/``From``/``To``/``Direction`` the app knows.
    """
    metadata: dict[str, str] = {}
    if verb.action is not None:
        metadata = {
            DIAL_ACTION_KEY: urljoin(doc_url, verb.action),
            DIAL_METHOD_KEY: verb.method,
            DIAL_CALL_SID_KEY: params.get("CallSid", ""),
            DIAL_FROM_KEY: params.get("From", ""),
            DIAL_TO_KEY: params.get("To", ""),
            DIAL_DIRECTION_KEY: params.get("Direction", ""),
        }
    return DialRequest(
        targets=verb.targets,
        timeout_s=float(verb.timeout),
        caller_id=verb.caller_id,
        record=verb.record,
        hangup_on_star=verb.hangup_on_star,
        time_limit_s=float(verb.time_limit),
        resume=verb.action is not None,
        metadata=metadata,
    )


class _Listener:
    """What a ``<Gather>``/``<Record>`` hears: digits, and audio levels (and audio)."""

    def __init__(self, *, keep_audio: bool, max_bytes: int) -> None:
        self.digits: list[str] = []
        self.changed = asyncio.Event()
        self.audio = bytearray()
        self.keep_audio = keep_audio
        self.max_bytes = max_bytes
        now = time.monotonic()
        self.started = now
        self.last_voice = now
        self.last_digit = 0.0
        self.voice_frames = 0
        self.speech_started = False
        self.stored = 0  # bytes kept so far (``audio`` may have been spilled to disk)
        self.frames = 0  # 20 ms frames measured
        self.first_loud = -1  # frame indexes, for trim-silence
        self.last_loud = -1
        self._odd = bytearray()

    def digit(self, d: str) -> None:
        self.digits.append(d)
        self.last_digit = time.monotonic()
        self.changed.set()

    def audio_in(self, pcm: bytes) -> None:
        if self.keep_audio and self.stored < self.max_bytes:
            part = pcm[: self.max_bytes - self.stored]
            self.audio += part
            self.stored += len(part)
        buf = self._odd
        buf += pcm
        usable = len(buf) - len(buf) % 320
        if not usable:
            return
        levels = _frame_levels(bytes(buf[:usable]))
        del buf[:usable]
        now = time.monotonic()
        for lv in levels:
            index = self.frames
            self.frames += 1
            if lv >= SILENCE_LEVEL:
                if self.first_loud < 0:
                    self.first_loud = index
                self.last_loud = index
                self.last_voice = now
                self.voice_frames += 1
                if self.voice_frames >= 5 and not self.speech_started:  # 100 ms
                    self.speech_started = True
                    self.changed.set()
            else:
                self.voice_frames = 0


# -- the runner ------------------------------------------------------------------------


class TwimlRunner:
    """Runs one call's TwiML; see the module docstring."""

    def __init__(self, host: TwimlHost, ctx: TwimlContext) -> None:
        self.host = host
        self.ctx = ctx
        self.log = ctx.call_log
        self._listener: _Listener | None = None
        self._ended = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._records = 0
        self._first_request = True
        self._progress = 0  # verbs run that play or listen (redirect-loop detection)
        self.recording = False
        """True while a ``<Record>`` listens (the session lets it finish on hang-up)."""

    # -- inputs from the session -------------------------------------------------------

    def on_dtmf(self, digit: str) -> None:
        """A caller digit: used by a listening ``<Gather>``/``<Record>``, else ignored."""
        if self._listener is not None:
            self._listener.digit(digit)

    def on_audio(self, pcm: bytes) -> None:
        """Caller audio: used by a listening ``<Gather input=speech>``/``<Record>``."""
        if self._listener is not None:
            self._listener.audio_in(pcm)

    def call_ended(self) -> None:
        """The caller hung up: a ``<Record>`` in progress ends and is still delivered."""
        self._ended.set()
        if self._listener is not None:
            self._listener.changed.set()

    async def aclose(self, grace: float = CALLBACK_TIMEOUT_S) -> None:
        """Wait (at most ``grace`` s) for pending callbacks, then cancel them."""
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- requests ----------------------------------------------------------------------

    def form(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        params = dict(self.ctx.params)
        if self._first_request:
            self._first_request = False
        else:
            params["CallStatus"] = "in-progress"
        if extra:
            params.update(extra)
        return params

    async def fetch(self, url: str, method: str = "POST",
                    extra: Mapping[str, str] | None = None) -> list[Verb]:
        """Request ``url`` with the call's form (+ ``extra``) and parse the TwiML."""
        started = time.monotonic()
        verbs = await fetch_twiml(self.ctx.http, url, self.form(extra), self.ctx.token,
                                  self.ctx.time_limit, method=method)
        if self.ctx.observe_latency is not None:
            self.ctx.observe_latency(time.monotonic() - started)
        self.log.info("TwiML from %s: %s", url.split("?", 1)[0],
                      ", ".join(type(v).__name__ for v in verbs) or "empty")
        return verbs

    def callback(self, url: str, params: Mapping[str, str], method: str = "POST") -> None:
        """Send a status callback in the background (failures logged, never fatal)."""
        async def send() -> None:
            try:
                status, _ = await signed_post(self.ctx.http, url, params, self.ctx.token,
                                              CALLBACK_TIMEOUT_S, max_body=4096,
                                              method=method)
                if not 200 <= status < 300:
                    self.log.warning("callback answered HTTP %d", status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.log.warning("callback failed: %s", type(exc).__name__)

        self._spawn(send())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="twiml-callback")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the program -------------------------------------------------------------------

    async def run(self, url: str, method: str = "POST", *,
                  extra: Mapping[str, str] | None = None,
                  verbs: list[Verb] | None = None) -> None:
        """Run the document at ``url`` (or ``verbs``, already parsed, found at ``url``)
        and every document it leads to, until the call ends or is handed over.

        Raises :class:`WebhookError` when a fetch fails (the session applies the
        fallback).
        """
        doc_url = url
        if verbs is None:
            verbs = await self.fetch(url, method, extra)
        idle_docs = 0
        while True:
            before = self._progress
            nxt = await self._execute(verbs, doc_url)
            if nxt is None:
                return
            idle_docs = 0 if self._progress != before else idle_docs + 1
            if idle_docs > MAX_REDIRECTS:
                self.log.warning("more than %d TwiML documents without a verb that plays "
                                 "or listens: hanging up", MAX_REDIRECTS)
                self.host.hangup("twiml-redirect-loop")
                return
            verbs = await self.fetch(nxt.url, nxt.method, nxt.extra)
            if nxt.ignore_twiml or self._ended.is_set():
                return
            doc_url = nxt.url

    async def _execute(self, verbs: list[Verb], doc_url: str) -> _Next | None:
        host = self.host
        for i, verb in enumerate(verbs):
            if self._ended.is_set():
                return None
            name = type(verb).__name__
            self.ctx.count("verb", name)
            if isinstance(verb, ConnectStream):
                self._progress += 1
                resolved = replace(verb, status_callback=_abs(doc_url, verb.status_callback))
                if not await host.connect_stream(resolved):
                    return None
                if verb.action is not None:
                    return _Next(urljoin(doc_url, verb.action), verb.method)
                if i == len(verbs) - 1:
                    host.app_closed()
                    return None
            elif isinstance(verb, Hangup):
                host.hangup("twiml-hangup")
                return None
            elif isinstance(verb, Reject):
                host.hangup("twiml-reject")
                return None
            elif isinstance(verb, Pause | Play | Say):
                self._progress += 1
                await self._prompt(verb, doc_url)
            elif isinstance(verb, PlayDigits):
                self._progress += 1
                await host.send_digits(verb.digits)
            elif isinstance(verb, Redirect):
                return _Next(urljoin(doc_url, verb.url), verb.method)
            elif isinstance(verb, Gather):
                self._progress += 1
                nxt = await self._gather(verb, doc_url)
                if nxt is not None:
                    return nxt
            elif isinstance(verb, Record):
                self._progress += 1
                nxt = await self._record(verb, doc_url)
                if nxt is not None:
                    return nxt
            elif isinstance(verb, Dial):
                request = dial_request(verb, doc_url=doc_url, params=self.ctx.params)
                self.log.info("TwiML <Dial>: %d target(s), action %s", len(request.targets),
                              "yes" if request.resume else "no")
                host.dial(request)
                return None
            elif isinstance(verb, StartStream):
                self._progress += 1
                await host.start_fork(replace(
                    verb, status_callback=_abs(doc_url, verb.status_callback)))
            elif isinstance(verb, StopStream):
                await host.stop_fork(verb.name)
            else:
                self.log.warning("TwiML verb <%s> not supported: skipped",
                                 getattr(verb, "tag", name))
        self.log.info("TwiML ended: hanging up")
        host.hangup("twiml-end")
        return None

    # -- <Say> <Play> <Pause> ----------------------------------------------------------

    async def _prompt(self, verb: Prompt, doc_url: str) -> None:
        if isinstance(verb, Pause):
            await self.host.pause(min(verb.length, MAX_PAUSE_S))
            return
        times = MAX_PLAY_LOOPS if verb.loop == 0 else min(verb.loop, MAX_PLAY_LOOPS)
        if isinstance(verb, Play):
            try:
                pcm = await fetch_audio_8k(self.ctx.http, urljoin(doc_url, verb.url),
                                           self.ctx.time_limit)
            except WebhookError as exc:
                # Twilio reports an application error and moves on; so do we.
                self.log.warning("TwiML <Play> skipped: %s", exc)
                self.ctx.count("play-skipped", exc.reason)
                return
        else:
            pcm = await self._say_pcm(verb)
            if not pcm:
                return
        await self.host.play_and_wait(pcm * times)

    async def _say_pcm(self, verb: Say) -> bytes:
        if not verb.text:
            return b""
        tts = self.ctx.tts
        if tts is None:
            self.log.warning("TwiML <Say> skipped: no text-to-speech engine "
                             "(install espeak-ng or set AIGW_TTS_URL)")
            self.ctx.count("say-skipped", "no-engine")
            return b""
        try:
            return await tts.synthesize(verb.text, voice=verb.voice, language=verb.language)
        except Exception as exc:  # any engine failure: skip the verb, as Twilio moves on
            reason = str(getattr(exc, "reason", "error"))
            self.log.warning("TwiML <Say> skipped: %s", exc)
            self.ctx.count("say-skipped", reason)
            return b""

    async def _prompts(self, prompts: tuple[Prompt, ...], doc_url: str) -> None:
        for p in prompts:
            await self._prompt(p, doc_url)

    # -- <Gather> ----------------------------------------------------------------------

    async def _gather(self, verb: Gather, doc_url: str) -> _Next | None:
        want_dtmf = "dtmf" in verb.input
        want_speech = "speech" in verb.input and self.ctx.stt is not None
        if "speech" in verb.input and self.ctx.stt is None:
            self.log.warning("<Gather input=speech>: no transcription endpoint "
                             "(AIGW_TRANSCRIBE_URL): speech input ignored")
            self.ctx.count("speech-ignored", "no-engine")
        listener = _Listener(keep_audio=want_speech, max_bytes=int(MAX_SPEECH_S * RATE * 2))
        self._listener = listener
        prompts = asyncio.get_running_loop().create_task(
            self._prompts(verb.prompts, doc_url), name="twiml-prompts")
        prompts_end: float | None = None
        end_silence = verb.speech_timeout or SPEECH_AUTO_S
        finish_key = ""
        try:
            while not self._ended.is_set():
                digits = listener.digits if want_dtmf else []
                heard = bool(digits) or listener.speech_started
                if heard and not prompts.done():
                    prompts.cancel()
                    self.host.stop_audio()
                if digits and verb.finish_on_key and digits[-1] == verb.finish_on_key:
                    finish_key = digits.pop()
                    break
                if verb.num_digits is not None and len(digits) >= verb.num_digits:
                    break
                now = time.monotonic()
                if prompts.done() and prompts_end is None:
                    prompts_end = now
                if listener.speech_started and not digits:
                    if now - listener.last_voice >= end_silence \
                            or now - listener.started >= MAX_SPEECH_S:
                        break
                elif prompts_end is not None:
                    last = max(prompts_end, listener.last_digit if digits else 0.0,
                               listener.last_voice if want_speech else 0.0)
                    if now - last >= verb.timeout:
                        break
                listener.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.changed.wait(), 0.05)
        finally:
            self._listener = None
            if not prompts.done():
                prompts.cancel()
                self.host.stop_audio()
            with contextlib.suppress(asyncio.CancelledError):
                await prompts
        if self._ended.is_set():
            return None
        action = urljoin(doc_url, verb.action) if verb.action else doc_url
        got = "".join(listener.digits) if want_dtmf else ""
        if got or (finish_key and verb.action_on_empty_result):
            return _Next(action, verb.method, {"Digits": got, "FinishedOnKey": finish_key})
        if want_speech and listener.speech_started:
            text = await self._transcribe(bytes(listener.audio), "gather.wav")
            if text:
                return _Next(action, verb.method,
                             {"SpeechResult": text, "Confidence": SPEECH_CONFIDENCE})
        if verb.action_on_empty_result:
            return _Next(action, verb.method, {"Digits": ""} if want_dtmf else {})
        self.log.info("<Gather>: no input, continuing")
        return None

    async def _transcribe(self, pcm: bytes, filename: str) -> str:
        stt = self.ctx.stt
        if stt is None or not pcm:
            return ""
        try:
            wav = await asyncio.to_thread(wav_bytes, trim_silence(pcm) or pcm)
            return (await stt.transcribe(wav, filename)).strip()
        except Exception as exc:  # transcription is best effort, never fatal
            self.log.warning("transcription failed: %s", getattr(exc, "reason", type(exc)))
            self.ctx.count("transcription-failed", str(getattr(exc, "reason", "error")))
            return ""

    # -- <Record> ----------------------------------------------------------------------

    async def _record(self, verb: Record, doc_url: str) -> _Next | None:
        if verb.play_beep and not self._ended.is_set():
            await self.host.play_and_wait(beep_pcm())
        max_s = min(verb.max_length, MAX_RECORD_S)
        listener = _Listener(keep_audio=True, max_bytes=max_s * RATE * 2)
        sid = recording_sid_for(self.ctx.call_id, self._records + 1)
        folder = self.ctx.recordings_dir
        part = None if folder is None else folder / f".{sid}.pcm.part"
        if part is not None:
            await asyncio.to_thread(_create_private, part)
        self._listener = listener
        self.recording = True
        finish = ""
        try:
            while True:
                if part is not None and len(listener.audio) >= SPILL_BYTES:
                    chunk = bytes(listener.audio)  # bounded memory: spill to the part file
                    listener.audio.clear()
                    await asyncio.to_thread(_append, part, chunk)
                if self._ended.is_set():
                    finish = "hangup"
                    break
                keys = [d for d in listener.digits if d in verb.finish_on_key]
                if keys:
                    finish = keys[0]
                    break
                now = time.monotonic()
                if now - listener.started >= max_s:
                    break
                if verb.timeout and now - listener.last_voice >= verb.timeout:
                    break
                listener.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.changed.wait(), 0.05)
        finally:
            self._listener = None
            self.recording = False
        start, end = 0, listener.stored
        if verb.trim:
            if listener.first_loud < 0:
                start = end = 0
            else:
                start = listener.first_loud * 320
                end = min(end, (listener.last_loud + 1) * 320)
        tail = bytes(listener.audio)
        if part is None or folder is None:
            pcm_len = max(0, end - start)
            if not pcm_len:
                self.log.info("<Record>: nothing recorded, continuing")
                return None
            self._records += 1
            wav: bytes | None = wav_bytes(tail[start:end])
        else:
            if end <= start:
                await asyncio.to_thread(_unlink, part)
                self.log.info("<Record>: nothing recorded, continuing")
                return None
            self._records += 1
            pcm_len = await asyncio.to_thread(_finish_recording, part, tail, start, end,
                                              folder / f"{sid}.wav")
            wav = None
        url = self.ctx.recording_url(sid)
        seconds = pcm_len / (2 * RATE)
        call_sid = self.ctx.params.get("CallSid", "")
        if wav is None and folder is not None and is_sid(CALL_PREFIX, call_sid):
            try:  # what the REST API needs to serve it (twilio/verbrec.py)
                await asyncio.to_thread(verbrec.note, folder, sid, call_sid, seconds,
                                        time.time() - seconds)
            except OSError as exc:
                self.log.warning("<Record> %s: not listed for the REST API: %s", sid, exc)
        duration = str(int(round(seconds)))
        fields = {"RecordingUrl": url, "RecordingDuration": duration, "RecordingSid": sid}
        if finish:
            fields["Digits"] = finish
        self.log.info("<Record>: %s s recorded as %s", duration, sid)
        if verb.recording_status_callback:
            self.callback(urljoin(doc_url, verb.recording_status_callback), {
                "AccountSid": self.ctx.params.get("AccountSid", ""),
                "CallSid": self.ctx.params.get("CallSid", ""),
                "RecordingSid": sid, "RecordingUrl": url, "RecordingStatus": "completed",
                "RecordingDuration": duration, "RecordingChannels": "1",
                "RecordingSource": "RecordVerb",
                "RecordingStartTime": formatdate(time.time() - seconds, usegmt=True),
            }, verb.recording_status_callback_method)
        if verb.transcribe and verb.transcribe_callback:
            path = None if folder is None else folder / f"{sid}.wav"
            self._spawn(self._transcribe_callback(urljoin(doc_url, verb.transcribe_callback),
                                                  wav, path, sid, url))
        elif verb.transcribe:
            self.log.info("<Record transcribe> without transcribeCallback: nothing sent")
        action = urljoin(doc_url, verb.action) if verb.action else doc_url
        return _Next(action, verb.method, fields, ignore_twiml=finish == "hangup")

    async def _transcribe_callback(self, url: str, wav: bytes | None, path: Path | None,
                                   sid: str, rec_url: str) -> None:
        text = ""
        if self.ctx.stt is not None:
            if wav is None and path is not None:
                wav = await asyncio.to_thread(_read_limited, path, MAX_TRANSCRIBE_BYTES)
            if wav:
                try:
                    text = (await self.ctx.stt.transcribe(wav, f"{sid}.wav")).strip()
                except Exception as exc:  # best effort, never fatal
                    self.log.warning("transcription failed: %s",
                                     getattr(exc, "reason", type(exc)))
                    self.ctx.count("transcription-failed",
                                   str(getattr(exc, "reason", "error")))
            else:
                self.log.warning("<Record transcribe>: recording too large to transcribe")
        status = "completed" if text else "failed"
        if self.ctx.stt is None:
            self.log.warning("<Record transcribe>: no transcription endpoint "
                             "(AIGW_TRANSCRIBE_URL): transcribeCallback gets failed")
        params = {
            "AccountSid": self.ctx.params.get("AccountSid", ""),
            "CallSid": self.ctx.params.get("CallSid", ""),
            "RecordingSid": sid, "RecordingUrl": rec_url,
            "TranscriptionSid": "TR" + sid[2:], "TranscriptionStatus": status,
            "TranscriptionText": text, "TranscriptionType": "fast",
        }
        self.callback(url, params)


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _read_limited(path: Path, limit: int) -> bytes | None:
    try:
        if path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _finish_recording(part: Path, tail: bytes, start: int, end: int, wav_path: Path) -> int:
    """Append ``tail`` to the spilled ``part`` file, write bytes ``start:end`` of it as a
    mono 16-bit 8 kHz WAV at ``wav_path`` (mode 0600, atomically), remove ``part``;
    return the number of PCM bytes written. Runs in a thread; memory stays bounded."""
    import soundfile as sf

    _append(part, tail)
    tmp = wav_path.with_name(f".{wav_path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        with os.fdopen(fd, "wb") as raw, \
                sf.SoundFile(raw, "w", RATE, 1, "PCM_16", format="WAV") as out, \
                open(part, "rb") as src:
            src.seek(start)
            while written < end - start:
                block = src.read(min(SPILL_BYTES, end - start - written))
                if not block:
                    break
                block = block[: len(block) - len(block) % 2]
                out.write(np.frombuffer(block, dtype="<i2"))
                written += len(block)
        os.replace(tmp, wav_path)
    finally:
        _unlink(tmp)
        _unlink(part)
    return written


def _abs(doc_url: str, url: str | None) -> str | None:
    return None if url is None else urljoin(doc_url, url)
