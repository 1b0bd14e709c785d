"""A local, OpenAI-Realtime-compatible voice bot server (GA shape) for tests and demos.

Why: users can check an Asterisk + gateway set-up end to end without a cloud key, and the
project's own tests and demo drive the real ``openai`` backend against it. It follows the
GA wire format described in docs/PROTOCOLS.md §7, including the failure modes
the gateway must survive (beta shape rejected, 401 on a bad key, dropped and expired
sessions, truncation limits).

What it does, per WebSocket connection on ``/v1/realtime?model=...``:

* ``Authorization: Bearer <key>`` is required when ``api_key`` is set (HTTP 401 otherwise);
  a missing ``model`` query parameter gives HTTP 400, another path HTTP 404.
* The beta shape is rejected: an ``OpenAI-Beta: realtime=v1`` header, or a
  ``session.update`` with ``input_audio_format`` (or other beta keys) directly in the
  session, gets an ``error`` event with code ``beta_api_shape_disabled`` and close 4000.
* ``session.created`` is sent first. Until a ``session.update`` arrives the session uses
  the same defaults as :class:`~audiosocket_gw.realtime.protocol.SessionConfig` (pcmu both
  ways, whisper-1 transcription, server VAD creating and interrupting responses).
* ``input_audio_buffer.append`` audio is decoded (pcmu, pcma or 24 kHz pcm) and run
  through an energy VAD in 20 ms windows: mean |sample| >= ``vad_threshold`` is speech.
  Speech gives ``input_audio_buffer.speech_started`` with ``audio_start_ms`` counted in
  audio appended since the session began minus the session's ``prefix_padding_ms`` (as
  OpenAI does; floored at 0). If a response is playing and ``interrupt_response`` is on,
  it is cancelled (``response.done`` status ``cancelled``, reason ``turn_detected``).
  ``silence_ms`` of silence ends the turn: ``speech_stopped``, ``committed``, the input
  transcription (``"(caller spoke 1.2 s)"``) and, with ``create_response``, a response.
  The session's own ``threshold`` and ``silence_duration_ms`` are recorded, not used.
* A response is ``response.created``, ``rate_limits.updated``, the output item events,
  ``reply_ms`` of a speech-like tone (300 Hz + 2 harmonics, amplitude-modulated at 4 Hz)
  in ``chunk_ms`` ``response.output_audio.delta`` events in the session's output format,
  transcript deltas, then ``.done`` events and ``response.done`` status ``completed``.
  Deltas go out as fast as possible (OpenAI also sends faster than real time) unless
  ``send_realtime`` is set, in which case they are paced at real time (after a first
  ``realtime_lead_ms`` sent at once). A long ``reply_ms`` so paced is a bot talking for
  the whole call (``make bench``'s steady state); ``listen=False`` then skips decoding
  and the VAD of appended audio, to keep the bot cheap.
* ``response.create`` speaks ``response.instructions`` if given, else ``greeting_text``;
  ``response.cancel`` stops the active response (reason ``client_cancelled``) or answers
  ``response_cancel_not_active``; ``conversation.item.truncate`` fails for an unknown
  item, a non-assistant item, or ``audio_end_ms`` beyond the audio sent for the item
  ("Audio content of N ms is already shorter than M ms"), else ``conversation.item.truncated``;
  ``conversation.item.create`` answers ``conversation.item.added`` and ``.done``; any other
  client event gets an ``invalid_request_error`` and the connection stays open.
* Function calls (GA shape, docs/PROTOCOLS.md §7.6): with a ``script`` of
  :class:`ScriptStep`, each response the bot starts (on any connection) takes the next
  step: ``say`` replaces its words (None: no audio item at all) and ``call`` adds a
  ``function_call`` item after the audio (``call_id``, ``name``, ``arguments``), streamed
  as ``response.output_item.added``, ``response.function_call_arguments.delta``/``.done``
  and ``response.output_item.done``, all before ``response.done``. The client answers
  with ``conversation.item.create`` of a ``function_call_output`` (recorded in
  ``BotSession.items``) and ``response.create``. When the script is used up the bot
  answers as usual.
* ``drop_after_ms`` closes the socket with 1011 after that long; ``expire_after_ms`` sends
  ``error`` code ``session_expired`` and closes with 1001.

Everything a client sent is recorded per connection in :attr:`LocalRealtimeBot.sessions`
(:class:`BotSession`), with bounded event logs. Each response is also recorded as a
:class:`BotResponse` with its ``time.monotonic()`` timestamps (created, end of the caller's
turn that triggered it, first audio delta handed to the socket), so a benchmark in the
same machine can split a latency into the bot's share and the gateway's: monotonic time
is system-wide, so it compares across processes too.

Run it stand-alone with ``audiosocket-gw mock-realtime --listen 127.0.0.1:8765`` (see
:mod:`audiosocket_gw.testing.mock_realtime`) or ``python -m audiosocket_gw.testing.localbot``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import hmac
import itertools
import json
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from audiosocket_gw.dsp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from audiosocket_gw.dsp.vad import frame_level
from audiosocket_gw.realtime.protocol import SessionConfig, session_dict

__all__ = ["BotResponse", "BotSession", "LocalRealtimeBot", "ReceivedEvent", "ScriptStep",
           "main"]

REALTIME_PATH = "/v1/realtime"
"""The only path served (as OpenAI: ``/v1/realtime?model=...``)."""

CLOSE_BETA_SHAPE = 4000
CLOSE_DROPPED = 1011
CLOSE_EXPIRED = 1001

_VAD_WINDOW_MS = 20
_MIN_COMMIT_MS = 100
_PCM_RATE = 24000
_G711_RATE = 8000
_BETA_SESSION_KEYS = (
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "modalities",
)
_FORMATS = ("audio/pcmu", "audio/pcma", "audio/pcm")


_QUOTED = re.compile(r'exactly:?\s*"([^"]+)"')


@dataclass(frozen=True)
class ScriptStep:
    """What one response of the bot does (see the module docstring).

    ``say``: the words of its audio ("" = the usual words, None = no audio item);
    ``call``: a function to call after the audio, with ``arguments`` (a JSON object);
    ``more_calls``: further ``(name, arguments)`` calls in the same response (the model
    may call several functions at once).
    """

    say: str | None = ""
    call: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    more_calls: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass(frozen=True)
class ReceivedEvent:
    """One client event as received: ``type``, the decoded JSON object, ``time.monotonic()``."""

    type: str
    data: dict[str, Any]
    at: float


@dataclass
class BotResponse:
    """One response of the bot, with ``time.monotonic()`` timestamps (for latency splits).

    ``trigger`` is ``"response.create"`` (the client asked, e.g. a greeting) or ``"turn"``
    (the bot's VAD ended the caller's turn: ``speech_end_seen_at`` is when the append
    holding the first silent window after the caller's last speech arrived,
    ``turn_ended_at`` when the last of ``silence_ms`` of silence did, ending the turn).
    ``first_delta_sent_at - speech_end_seen_at`` is the bot's whole share of a response
    latency (its VAD wait and its processing). ``first_delta_sent_at`` is when
    the first ``response.output_audio.delta`` was handed to the socket (None if none was).
    ``status`` is ``in_progress``, ``completed`` or ``cancelled``.
    """

    response_id: str
    item_id: str
    trigger: str
    created_at: float
    speech_end_seen_at: float | None = None
    turn_ended_at: float | None = None
    first_delta_sent_at: float | None = None
    audio_ms_sent: int = 0
    status: str = "in_progress"


def _response_log() -> deque[BotResponse]:
    return deque(maxlen=1000)


@dataclass
class BotSession:
    """What one WebSocket connection sent and how it ended (for assertions in tests).

    ``events`` and ``sent_types`` keep only the most recent ``max_recorded_events``
    entries. ``truncates`` and ``cancels`` record every request received, valid or not.
    ``session_config`` is the latest ``session`` object received in a ``session.update``.
    ``response_log`` holds a :class:`BotResponse` per response (latest 1000), in order.
    """

    session_id: str
    model: str
    headers: dict[str, str]
    started_at: float
    events: deque[ReceivedEvent]
    sent_types: deque[str]
    truncates: list[tuple[str, int]] = field(default_factory=list)
    cancels: list[str | None] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    response_log: deque[BotResponse] = field(default_factory=_response_log)
    session_config: dict[str, Any] | None = None
    audio_in_ms: float = 0.0
    ended_at: float | None = None
    close_code: int | None = None

    def event_types(self) -> list[str]:
        """Types of the recorded client events, oldest first."""
        return [event.type for event in self.events]


class _SessionError(Exception):
    """A ``session.update`` that cannot be applied (reported as an ``error`` event)."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class _Settings:
    """The parts of the effective session the bot acts on."""

    input_format: str
    output_format: str
    turn_detection: bool
    create_response: bool
    interrupt_response: bool
    prefix_padding_ms: int
    transcription: bool


def _child(obj: Any, key: str, param: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, dict):
        raise _SessionError("invalid_type", f"'{param}' must be an object.", param)
    return value


def _format_of(audio: dict[str, Any], direction: str) -> str:
    param = f"session.audio.{direction}.format"
    fmt = _child(_child(audio, direction, f"session.audio.{direction}"), "format", param)
    kind = fmt.get("type")
    if kind not in _FORMATS:
        raise _SessionError(
            "invalid_value",
            f"Invalid value: {kind!r}. Supported values are: {', '.join(_FORMATS)}.",
            f"{param}.type",
        )
    if kind == "audio/pcm" and fmt.get("rate", _PCM_RATE) != _PCM_RATE:
        raise _SessionError(
            "invalid_value",
            f"Invalid value: {fmt.get('rate')!r}. Supported values are: {_PCM_RATE}.",
            f"{param}.rate",
        )
    return str(kind)


def _settings_from(session: dict[str, Any]) -> _Settings:
    """Validate an effective session object; raise :class:`_SessionError` if unusable."""
    audio = _child(session, "audio", "session.audio")
    input_format = _format_of(audio, "input")
    output_format = _format_of(audio, "output")
    audio_input = _child(audio, "input", "session.audio.input")
    td = audio_input.get("turn_detection")
    if td is not None and not isinstance(td, dict):
        raise _SessionError(
            "invalid_type",
            "'session.audio.input.turn_detection' must be an object or null.",
            "session.audio.input.turn_detection",
        )
    td = td or {}
    if audio_input.get("turn_detection") is not None and td.get("type") not in (
        "server_vad",
        "semantic_vad",
    ):
        raise _SessionError(
            "invalid_value",
            f"Invalid value: {td.get('type')!r}. Supported values are: server_vad, semantic_vad.",
            "session.audio.input.turn_detection.type",
        )
    padding = td.get("prefix_padding_ms", 300)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise _SessionError(
            "invalid_value",
            "'prefix_padding_ms' must be a non-negative integer.",
            "session.audio.input.turn_detection.prefix_padding_ms",
        )
    return _Settings(
        input_format=input_format,
        output_format=output_format,
        turn_detection=audio_input.get("turn_detection") is not None,
        create_response=bool(td.get("create_response", True)),
        interrupt_response=bool(td.get("interrupt_response", True)),
        prefix_padding_ms=padding,
        transcription=audio_input.get("transcription") is not None,
    )


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (an explicit null replaces)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _rate(fmt: str) -> int:
    return _PCM_RATE if fmt == "audio/pcm" else _G711_RATE


def _decode(fmt: str, data: bytes) -> bytes:
    if fmt == "audio/pcmu":
        return ulaw_decode(data)
    if fmt == "audio/pcma":
        return alaw_decode(data)
    return data[: len(data) & ~1]


def _encode(fmt: str, pcm: bytes) -> bytes:
    if fmt == "audio/pcmu":
        return ulaw_encode(pcm)
    if fmt == "audio/pcma":
        return alaw_encode(pcm)
    return pcm


_TONE_PERIODS: dict[tuple[int, float], bytes] = {}


def _tone_period(rate: int, peak: float) -> bytes:
    """One second of the tone (it repeats every second: every component is a whole
    number of hertz), computed once per rate and peak."""
    key = (rate, peak)
    if key not in _TONE_PERIODS:
        t = np.arange(rate, dtype=np.float64) / rate
        carrier = (
            np.sin(2 * math.pi * 300 * t)
            + 0.5 * np.sin(2 * math.pi * 600 * t)
            + 0.25 * np.sin(2 * math.pi * 900 * t)
        ) / 1.75
        envelope = 0.6 + 0.4 * np.sin(2 * math.pi * 4 * t)
        _TONE_PERIODS[key] = np.round(peak * carrier * envelope).astype("<i2").tobytes()
    return _TONE_PERIODS[key]


class _Tone:
    """Speech-like test signal: 300 Hz + 2 harmonics, amplitude-modulated at 4 Hz."""

    def __init__(self, rate: int, peak: float = 9000.0) -> None:
        self._period = _tone_period(rate, peak)
        self._n = 0  # byte offset into the period

    def next(self, samples: int) -> bytes:
        """The next ``samples`` samples as slin16 LE, phase-continuous across calls
        (sliced from the cached one-second period: a long stream costs no maths)."""
        want = 2 * samples
        out = bytearray()
        while len(out) < want:
            take = min(want - len(out), len(self._period) - self._n)
            out += self._period[self._n : self._n + take]
            self._n = (self._n + take) % len(self._period)
        return bytes(out)


class _Stopped(Exception):
    """The response was cancelled; its task must not send anything more."""


@dataclass
class _Response:
    response_id: str
    item_id: str
    transcript: str
    output_format: str
    record: BotResponse
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent_transcript: str = ""
    audio: bool = True
    calls: list[_Call] = field(default_factory=list)


@dataclass(frozen=True)
class _Call:
    name: str
    arguments: str
    item_id: str
    call_id: str


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class _Connection:
    """State machine of one WebSocket session."""

    def __init__(self, bot: LocalRealtimeBot, ws: ServerConnection, record: BotSession) -> None:
        self._bot = bot
        self._ws = ws
        self._record = record
        self._send_lock = asyncio.Lock()
        self._event_ids = itertools.count(1)
        self._session: dict[str, Any] = {
            "object": "realtime.session",
            "id": record.session_id,
            "model": record.model,
            **session_dict(SessionConfig()),
        }
        self._settings = _settings_from(self._session)
        self._closing = False
        self._closer: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # input side
        self._appended_ms = 0.0
        self._buffered_ms = 0.0
        self._pending = b""
        self._vad_ms = 0.0
        self._in_speech = False
        self._speech_start_ms = 0.0
        self._speech_end_ms = 0.0
        self._silence_ms = 0.0
        self._silence_seen_at = 0.0  # monotonic arrival of the current trailing silence
        self._user_item: str | None = None
        # conversation
        self._items: dict[str, str] = {}  # item_id -> role
        self._audio_ms: dict[str, int] = {}  # assistant item_id -> audio ms sent (or truncated)
        self._last_item: str | None = None
        self._active: _Response | None = None

    # ------------------------------------------------------------------ plumbing

    async def _send(
        self, event: dict[str, Any], resp: _Response | None = None, finish: bool = False
    ) -> None:
        """Send one server event; with ``resp``, only while that response is not stopped."""
        async with self._send_lock:
            if resp is not None:
                if resp.stop.is_set():
                    raise _Stopped
                if finish:
                    self._active = None
            event = {"event_id": f"event_{next(self._event_ids):06d}", **event}
            await self._ws.send(json.dumps(event, separators=(",", ":")))
            self._record.sent_types.append(str(event["type"]))

    async def _error(
        self,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        await self._send(
            {
                "type": "error",
                "error": {
                    "type": error_type,
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": event_id,
                },
            }
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        self._closer = asyncio.current_task()
        if self._active is not None:
            self._active.stop.set()
            self._active = None
        await self._ws.close(code, reason)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Serve the connection until it closes; never raises on a closed socket."""
        try:
            if self._ws.request is not None and "realtime=v1" in ",".join(
                self._ws.request.headers.get_all("OpenAI-Beta")
            ):
                await self._reject_beta("The OpenAI-Beta: realtime=v1 header is not supported.")
                return
            await self._send({"type": "session.created", "session": self._session})
            if self._bot.drop_after_ms is not None:
                self._spawn(self._later(self._bot.drop_after_ms, self._drop))
            if self._bot.expire_after_ms is not None:
                self._spawn(self._later(self._bot.expire_after_ms, self._expire))
            async for message in self._ws:
                if self._closing:
                    break
                await self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            if self._active is not None:
                self._active.stop.set()
                self._active = None
            current = asyncio.current_task()
            pending = [task for task in self._tasks if task is not current]
            for task in pending:
                if task is not self._closer:
                    task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._record.ended_at = time.monotonic()
            self._record.close_code = self._ws.close_code

    async def _later(self, delay_ms: int, action: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(delay_ms / 1000)
        with contextlib.suppress(ConnectionClosed):
            await action()

    async def _drop(self) -> None:
        await self._close(CLOSE_DROPPED, "local bot: simulated server error")

    async def _expire(self) -> None:
        await self._error(
            "session_expired",
            "Your session hit the maximum duration of 60 minutes.",
        )
        await self._close(CLOSE_EXPIRED, "session expired")

    async def _reject_beta(self, message: str) -> None:
        await self._error(
            "beta_api_shape_disabled",
            f"{message} The beta Realtime API shape is disabled; use the GA shape.",
        )
        await self._close(CLOSE_BETA_SHAPE, "beta api shape disabled")

    async def _dispatch(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._error("invalid_json", "Binary frames are not supported; send JSON text.")
            return
        try:
            data = json.loads(message)
        except (ValueError, RecursionError) as exc:
            await self._error("invalid_json", f"The server could not parse the JSON: {exc}")
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            await self._error(
                "missing_required_parameter", "Missing required parameter: 'type'.", param="type"
            )
            return
        event_type: str = data["type"]
        self._record.events.append(ReceivedEvent(event_type, data, time.monotonic()))
        client_event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        handler = _HANDLERS.get(event_type)
        if handler is None:
            await self._error(
                "invalid_value",
                f"Invalid value: {event_type!r}. Supported values are: "
                f"{', '.join(sorted(_HANDLERS))}.",
                param="type",
                event_id=client_event_id,
            )
            return
        await handler(self, data, client_event_id)

    # ------------------------------------------------------------------ session

    async def _on_session_update(self, data: dict[str, Any], event_id: str | None) -> None:
        session = data.get("session")
        if any(key in data for key in _BETA_SESSION_KEYS) or (
            isinstance(session, dict) and any(key in session for key in _BETA_SESSION_KEYS)
        ):
            await self._reject_beta("session.update uses beta fields (input_audio_format).")
            return
        if not isinstance(session, dict):
            await self._error(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
                event_id=event_id,
            )
            return
        self._record.session_config = session
        if session.get("type") != "realtime":
            if "type" not in session:
                code, message = "missing_required_parameter", "Missing required parameter: "
                message += "'session.type'."
            else:
                code = "invalid_value"
                message = f"Invalid value: {session.get('type')!r}. Supported values are: realtime."
            await self._error(code, message, param="session.type", event_id=event_id)
            return
        merged = _merge(self._session, session)
        merged["id"], merged["object"] = self._session["id"], "realtime.session"
        try:
            settings = _settings_from(merged)
        except _SessionError as exc:
            await self._error(exc.code, exc.message, param=exc.param, event_id=event_id)
            return
        if settings.input_format != self._settings.input_format:
            self._flush_pending()
        self._session, self._settings = merged, settings
        if not settings.turn_detection:
            self._in_speech = False
        await self._send({"type": "session.updated", "session": self._session})

    # ------------------------------------------------------------------ input audio

    def _flush_pending(self) -> None:
        rate = _rate(self._settings.input_format)
        self._vad_ms += (len(self._pending) // 2) * 1000 / rate
        self._pending = b""

    async def _on_append(self, data: dict[str, Any], event_id: str | None) -> None:
        audio_b64 = data.get("audio")
        try:
            if not isinstance(audio_b64, str):
                raise ValueError("not a string")
            audio = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            await self._error(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                param="audio",
                event_id=event_id,
            )
            return
        fmt = self._settings.input_format
        rate = _rate(fmt)
        if not self._bot.listen:  # counted, not decoded nor run through the VAD
            added_ms = len(audio) * 1000 / rate / (2 if fmt == "audio/pcm" else 1)
            self._appended_ms += added_ms
            self._buffered_ms += added_ms
            self._record.audio_in_ms = self._appended_ms
            return
        pcm = _decode(fmt, audio)
        added_ms = (len(pcm) // 2) * 1000 / rate
        self._appended_ms += added_ms
        self._buffered_ms += added_ms
        self._record.audio_in_ms = self._appended_ms
        window = rate * _VAD_WINDOW_MS // 1000 * 2
        buf = self._pending + pcm
        offset = 0
        while len(buf) - offset >= window:
            await self._vad_window(buf[offset : offset + window])
            offset += window
        self._pending = buf[offset:]

    async def _vad_window(self, pcm: bytes) -> None:
        start_ms = self._vad_ms
        self._vad_ms += _VAD_WINDOW_MS
        if not self._settings.turn_detection:
            return
        speech = frame_level(pcm) >= self._bot.vad_threshold
        if not self._in_speech:
            if not speech:
                return
            self._in_speech = True
            self._speech_start_ms = start_ms
            self._speech_end_ms = self._vad_ms
            self._silence_ms = 0.0
            self._user_item = _new_id("item")
            audio_start = max(0, round(start_ms) - self._settings.prefix_padding_ms)
            await self._send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": audio_start,
                    "item_id": self._user_item,
                }
            )
            if self._active is not None and self._settings.interrupt_response:
                await self._cancel_active("turn_detected")
            return
        if speech:
            self._silence_ms = 0.0
            self._speech_end_ms = self._vad_ms
            return
        if self._silence_ms == 0.0:
            self._silence_seen_at = time.monotonic()
        self._silence_ms += _VAD_WINDOW_MS
        if self._silence_ms >= self._bot.silence_ms:
            await self._end_turn()

    async def _end_turn(self) -> None:
        ended_at = time.monotonic()
        item_id = self._user_item or _new_id("item")
        self._in_speech = False
        self._user_item = None
        await self._send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": round(self._speech_end_ms),
                "item_id": item_id,
            }
        )
        spoken_s = (self._speech_end_ms - self._speech_start_ms) / 1000
        await self._commit(item_id, f"(caller spoke {spoken_s:.1f} s)")
        if self._settings.create_response and self._active is None:
            await self._start_response(
                f"You spoke for {spoken_s:.1f} seconds. This is the local test bot.",
                trigger="turn",
                speech_end_seen_at=self._silence_seen_at,
                turn_ended_at=ended_at,
            )

    async def _commit(self, item_id: str, transcript: str) -> None:
        previous = self._last_item
        self._items[item_id] = "user"
        self._last_item = item_id
        self._buffered_ms = 0.0
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        await self._send(
            {
                "type": "conversation.item.added",
                "previous_item_id": previous,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            }
        )
        if self._settings.transcription:
            await self._send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": transcript,
                }
            )

    async def _on_commit(self, data: dict[str, Any], event_id: str | None) -> None:
        if self._buffered_ms < _MIN_COMMIT_MS:
            await self._error(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {self._buffered_ms:.2f}ms "
                f"of audio.",
                event_id=event_id,
            )
            return
        spoken_s = self._buffered_ms / 1000
        item_id = self._user_item or _new_id("item")
        self._in_speech = False
        self._user_item = None
        await self._commit(item_id, f"(caller spoke {spoken_s:.1f} s)")

    async def _on_clear(self, data: dict[str, Any], event_id: str | None) -> None:
        self._buffered_ms = 0.0
        self._in_speech = False
        self._user_item = None
        await self._send({"type": "input_audio_buffer.cleared"})

    # ------------------------------------------------------------------ conversation

    async def _on_item_create(self, data: dict[str, Any], event_id: str | None) -> None:
        item = data.get("item")
        if not isinstance(item, dict) or item.get("type") not in (
            "message",
            "function_call",
            "function_call_output",
        ):
            await self._error(
                "invalid_value",
                "Invalid 'item': expected an object with type message, function_call or "
                "function_call_output.",
                param="item",
                event_id=event_id,
            )
            return
        role = item.get("role", "")
        if item["type"] == "message" and role not in ("user", "system", "assistant"):
            await self._error(
                "invalid_value",
                f"Invalid value: {role!r}. Supported values are: user, system, assistant.",
                param="item.role",
                event_id=event_id,
            )
            return
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            item_id = _new_id("item")
        if item_id in self._items:
            await self._error(
                "item_id_already_exists",
                f"Item with id {item_id!r} already exists.",
                param="item.id",
                event_id=event_id,
            )
            return
        stored = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        self._record.items.append(stored)
        self._items[item_id] = str(role)
        if role == "assistant":
            self._audio_ms[item_id] = 0
        previous = self._last_item
        self._last_item = item_id
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": stored}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": stored}
        )

    async def _on_truncate(self, data: dict[str, Any], event_id: str | None) -> None:
        item_id = data.get("item_id")
        audio_end_ms = data.get("audio_end_ms")
        content_index = data.get("content_index", 0)
        if not isinstance(item_id, str):
            await self._error(
                "missing_required_parameter",
                "Missing required parameter: 'item_id'.",
                param="item_id",
                event_id=event_id,
            )
            return
        if isinstance(audio_end_ms, bool) or not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            await self._error(
                "invalid_value",
                "Invalid 'audio_end_ms': expected a non-negative integer.",
                param="audio_end_ms",
                event_id=event_id,
            )
            return
        self._record.truncates.append((item_id, audio_end_ms))
        role = self._items.get(item_id)
        if role is None:
            await self._error(
                "invalid_value",
                f"Item with item_id {item_id!r} not found.",
                param="item_id",
                event_id=event_id,
            )
            return
        if role != "assistant":
            await self._error(
                "invalid_value",
                "Only assistant message items can be truncated.",
                param="item_id",
                event_id=event_id,
            )
            return
        if content_index != 0:
            await self._error(
                "invalid_value",
                f"Invalid 'content_index': {content_index!r}; the item has one content part.",
                param="content_index",
                event_id=event_id,
            )
            return
        available = self._audio_ms.get(item_id, 0)
        if audio_end_ms > available:
            await self._error(
                "invalid_value",
                f"Audio content of {available}ms is already shorter than {audio_end_ms}ms",
                param="audio_end_ms",
                event_id=event_id,
            )
            return
        self._audio_ms[item_id] = audio_end_ms
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    # ------------------------------------------------------------------ responses

    async def _on_response_create(self, data: dict[str, Any], event_id: str | None) -> None:
        if self._active is not None:
            await self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: "
                f"{self._active.response_id}. Wait until the response is finished before "
                f"creating a new one.",
                event_id=event_id,
            )
            return
        options = data.get("response")
        instructions = options.get("instructions") if isinstance(options, dict) else None
        if isinstance(instructions, str) and instructions:
            # 'Say exactly: "..."' (how a greeting is asked for): speak the quoted words.
            quoted = _QUOTED.search(instructions)
            await self._start_response(quoted.group(1) if quoted else instructions)
        else:
            await self._start_response(self._bot.greeting_text)

    async def _on_response_cancel(self, data: dict[str, Any], event_id: str | None) -> None:
        wanted = data.get("response_id")
        wanted_id = wanted if isinstance(wanted, str) else None
        self._record.cancels.append(wanted_id)
        active = self._active
        if active is None or (wanted_id is not None and wanted_id != active.response_id):
            await self._error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                event_id=event_id,
            )
            return
        await self._cancel_active("client_cancelled")

    async def _start_response(
        self,
        transcript: str,
        *,
        trigger: str = "response.create",
        speech_end_seen_at: float | None = None,
        turn_ended_at: float | None = None,
    ) -> None:
        """Send ``response.created`` (before any cancel can happen), then stream it."""
        step = self._bot.script.popleft() if self._bot.script else None
        if step is not None and step.say:
            transcript = step.say
        response_id, item_id = _new_id("resp"), _new_id("item")
        record = BotResponse(
            response_id=response_id,
            item_id=item_id,
            trigger=trigger,
            created_at=time.monotonic(),
            speech_end_seen_at=speech_end_seen_at,
            turn_ended_at=turn_ended_at,
        )
        resp = _Response(
            response_id=response_id,
            item_id=item_id,
            transcript=transcript,
            output_format=self._settings.output_format,
            record=record,
            audio=step is None or step.say is not None,
        )
        if step is not None:
            wanted = ([(step.call, step.arguments)] if step.call else []) + list(step.more_calls)
            resp.calls = [_Call(name, json.dumps(args, separators=(",", ":")),
                                _new_id("item"), _new_id("call")) for name, args in wanted]
        self._active = resp
        self._record.responses.append(resp.response_id)
        self._record.response_log.append(record)
        self._items[resp.item_id] = "assistant"
        self._audio_ms[resp.item_id] = 0
        await self._send(
            {"type": "response.created", "response": self._response_obj(resp, "in_progress")}
        )
        self._spawn(self._run_response(resp))

    def _item_obj(self, resp: _Response, status: str) -> dict[str, Any]:
        return {
            "id": resp.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": resp.sent_transcript}],
        }

    @staticmethod
    def _call_obj(call: _Call, status: str, arguments: str) -> dict[str, Any]:
        return {"id": call.item_id, "object": "realtime.item", "type": "function_call",
                "status": status, "name": call.name, "call_id": call.call_id,
                "arguments": arguments}

    def _outputs(self, resp: _Response, status: str) -> list[dict[str, Any]]:
        out = [self._item_obj(resp, status)] if resp.audio else []
        out += [self._call_obj(call, status, call.arguments) for call in resp.calls]
        return out

    def _response_obj(
        self, resp: _Response, status: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        item_status = {"in_progress": "in_progress", "completed": "completed"}.get(
            status, "incomplete"
        )
        return {
            "object": "realtime.response",
            "id": resp.response_id,
            "status": status,
            "status_details": details,
            "output": [] if status == "in_progress" else self._outputs(resp, item_status),
            "conversation_id": self._record.session_id,
            "output_modalities": ["audio"],
            "audio": {"output": {"format": {"type": resp.output_format}}},
        }

    async def _cancel_active(self, reason: str) -> None:
        resp = self._active
        if resp is None:
            return
        self._active = None
        resp.stop.set()
        resp.record.status = "cancelled"
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": resp.response_id,
                "output_index": 0,
                "item": self._item_obj(resp, "incomplete"),
            }
        )
        await self._send(
            {
                "type": "response.done",
                "response": self._response_obj(
                    resp, "cancelled", {"type": "cancelled", "reason": reason}
                ),
            }
        )

    def _chunks(self) -> Iterator[int]:
        remaining = self._bot.reply_ms
        while remaining > 0:
            step = min(self._bot.chunk_ms, remaining)
            remaining -= step
            yield step

    async def _run_response(self, resp: _Response) -> None:
        with contextlib.suppress(_Stopped, ConnectionClosed):
            await self._stream_response(resp)

    async def _stream_response(self, resp: _Response) -> None:
        if resp.audio:
            await self._stream_audio(resp)
        else:
            await self._rate_limits(resp)
        for n, call in enumerate(resp.calls):
            await self._stream_call(resp, call, n + (1 if resp.audio else 0))
        await self._send(
            {"type": "response.done", "response": self._response_obj(resp, "completed")},
            resp,
            finish=True,
        )
        resp.record.status = "completed"

    async def _rate_limits(self, resp: _Response) -> None:
        await self._send(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
                    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
                ],
            },
            resp,
        )

    async def _stream_call(self, resp: _Response, call: _Call, index: int) -> None:
        """One ``function_call`` item of a scripted step (GA event sequence)."""
        rid, iid, cid, name = resp.response_id, call.item_id, call.call_id, call.name
        arguments = call.arguments
        self._items[iid] = "assistant"
        await self._send({"type": "response.output_item.added", "response_id": rid,
                          "output_index": index,
                          "item": self._call_obj(call, "in_progress", "")}, resp)
        await self._send({"type": "conversation.item.added", "previous_item_id":
                          self._last_item, "item": self._call_obj(call, "in_progress", "")},
                         resp)
        self._last_item = iid
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            if part:
                await self._send({"type": "response.function_call_arguments.delta",
                                  "response_id": rid, "item_id": iid, "output_index": index,
                                  "call_id": cid, "delta": part}, resp)
        await self._send({"type": "response.function_call_arguments.done", "response_id": rid,
                          "item_id": iid, "output_index": index, "call_id": cid,
                          "name": name, "arguments": arguments}, resp)
        await self._send({"type": "response.output_item.done", "response_id": rid,
                          "output_index": index,
                          "item": self._call_obj(call, "completed", arguments)}, resp)

    async def _stream_audio(self, resp: _Response) -> None:
        rid, iid, fmt = resp.response_id, resp.item_id, resp.output_format
        base = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        await self._send(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
                    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
                ],
            },
            resp,
        )
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": self._item_obj(resp, "in_progress"),
            },
            resp,
        )
        await self._send(
            {
                "type": "conversation.item.added",
                "previous_item_id": self._last_item,
                "item": self._item_obj(resp, "in_progress"),
            },
            resp,
        )
        self._last_item = iid
        await self._send(
            {
                "type": "response.content_part.added",
                **base,
                "part": {"type": "audio", "transcript": ""},
            },
            resp,
        )
        chunks = list(self._chunks())
        words = resp.transcript.split(" ")
        per_chunk = max(1, math.ceil(len(words) / max(1, len(chunks))))
        tone = _Tone(_rate(fmt))
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset_ms = 0
        for index, chunk_ms in enumerate(chunks):
            if self._bot.send_realtime and offset_ms > self._bot.realtime_lead_ms:
                delay = start + (offset_ms - self._bot.realtime_lead_ms) / 1000 - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(resp.stop.wait(), delay)
            pcm = tone.next(_rate(fmt) * chunk_ms // 1000)
            delta = base64.b64encode(_encode(fmt, pcm)).decode("ascii")
            await self._send({"type": "response.output_audio.delta", **base, "delta": delta}, resp)
            if resp.record.first_delta_sent_at is None:
                resp.record.first_delta_sent_at = time.monotonic()
            resp.record.audio_ms_sent += chunk_ms
            offset_ms += chunk_ms
            self._audio_ms[iid] = self._audio_ms.get(iid, 0) + chunk_ms
            text_words = words[index * per_chunk : (index + 1) * per_chunk]
            if text_words:
                text = (" " if resp.sent_transcript else "") + " ".join(text_words)
                resp.sent_transcript += text
                await self._send(
                    {"type": "response.output_audio_transcript.delta", **base, "delta": text}, resp
                )
            if not self._bot.send_realtime:
                await asyncio.sleep(0)
        if resp.sent_transcript != resp.transcript:
            rest = resp.transcript[len(resp.sent_transcript) :]
            resp.sent_transcript = resp.transcript
            await self._send(
                {"type": "response.output_audio_transcript.delta", **base, "delta": rest}, resp
            )
        await self._send({"type": "response.output_audio.done", **base}, resp)
        await self._send(
            {
                "type": "response.output_audio_transcript.done",
                **base,
                "transcript": resp.transcript,
            },
            resp,
        )
        await self._send(
            {
                "type": "response.content_part.done",
                **base,
                "part": {"type": "audio", "transcript": resp.transcript},
            },
            resp,
        )
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": rid,
                "output_index": 0,
                "item": self._item_obj(resp, "completed"),
            },
            resp,
        )


_HANDLERS = {
    "session.update": _Connection._on_session_update,
    "input_audio_buffer.append": _Connection._on_append,
    "input_audio_buffer.commit": _Connection._on_commit,
    "input_audio_buffer.clear": _Connection._on_clear,
    "conversation.item.create": _Connection._on_item_create,
    "conversation.item.truncate": _Connection._on_truncate,
    "response.create": _Connection._on_response_create,
    "response.cancel": _Connection._on_response_cancel,
}


class LocalRealtimeBot:
    """A local Realtime GA server speaking a test tone (see the module docstring).

    Use ``await bot.start()`` / ``await bot.stop()`` or ``async with LocalRealtimeBot() as
    bot:``; connect to :attr:`url`. Each connection appends a :class:`BotSession` to
    :attr:`sessions` (only the latest ``max_sessions`` are kept).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reply_ms: int = 1500,
        greeting_text: str = "Hello, this is the local test bot. How can I help you?",
        vad_threshold: float = 600.0,
        silence_ms: int = 500,
        chunk_ms: int = 100,
        send_realtime: bool = False,
        realtime_lead_ms: int = 0,
        listen: bool = True,
        drop_after_ms: int | None = None,
        expire_after_ms: int | None = None,
        max_recorded_events: int = 10_000,
        max_sessions: int = 1000,
        script: Sequence[ScriptStep] = (),
    ) -> None:
        if reply_ms < 0:
            raise ValueError(f"reply_ms must not be negative, got {reply_ms}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        if silence_ms < 0 or vad_threshold < 0:
            raise ValueError("silence_ms and vad_threshold must not be negative")
        for name, value in (("drop_after_ms", drop_after_ms), ("expire_after_ms", expire_after_ms)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if max_recorded_events <= 0 or max_sessions <= 0:
            raise ValueError("max_recorded_events and max_sessions must be positive")
        self.api_key = api_key
        self.reply_ms = reply_ms
        self.greeting_text = greeting_text
        self.vad_threshold = vad_threshold
        self.silence_ms = silence_ms
        self.chunk_ms = chunk_ms
        self.send_realtime = send_realtime
        self.realtime_lead_ms = max(0, realtime_lead_ms)
        """With ``send_realtime``: this much audio goes out at once, the rest at real time
        (the stream stays that far ahead of the listener, as a real bot does)."""
        self.listen = listen
        """False: appended audio is counted, not decoded or run through the VAD (a cheap
        peer for benchmarks with silent callers; no turn ever ends)."""
        self.drop_after_ms = drop_after_ms
        self.expire_after_ms = expire_after_ms
        self.max_recorded_events = max_recorded_events
        self.max_sessions = max_sessions
        self.sessions: list[BotSession] = []
        self.script: deque[ScriptStep] = deque(script)
        """Steps still to play (tests may append more while the bot runs)."""
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._live: dict[ServerConnection, None] = {}  # open connections, oldest first

    async def __aenter__(self) -> LocalRealtimeBot:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/v1/realtime?model=local-bot`` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("LocalRealtimeBot is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self._port}{REALTIME_PATH}?model=local-bot"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("LocalRealtimeBot is already started")
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,
            max_size=2**24,
        )
        self._host = host
        self._port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != REALTIME_PATH:
            return connection.respond(404, "Not Found\n")
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            expected = f"Bearer {self.api_key}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                return connection.respond(401, "Incorrect API key provided.\n")
        if not parse_qs(url.query).get("model"):
            return connection.respond(400, "Missing required parameter: 'model'.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        model = "local-bot"
        headers: dict[str, str] = {}
        if ws.request is not None:
            model = parse_qs(urlsplit(ws.request.path).query).get("model", [model])[0]
            headers = {name: value for name, value in ws.request.headers.raw_items()}
        record = BotSession(
            session_id=_new_id("sess"),
            model=model,
            headers=headers,
            started_at=time.monotonic(),
            events=deque(maxlen=self.max_recorded_events),
            sent_types=deque(maxlen=self.max_recorded_events),
        )
        self.sessions.append(record)
        del self.sessions[: -self.max_sessions]
        self._live[ws] = None
        try:
            await _Connection(self, ws, record).run()
        finally:
            self._live.pop(ws, None)

    @property
    def live_connections(self) -> int:
        """Connections open right now."""
        return len(self._live)

    def drop_live(self, count: int) -> int:
        """Abort up to ``count`` open connections, oldest first, without a close frame
        (a crashed server or a network cut: the client sees 1006); returns how many."""
        victims = list(self._live)[:max(0, count)]
        for ws in victims:
            ws.transport.abort()
        return len(victims)


def main(argv: list[str] | None = None) -> None:
    """Command line: run a local bot until interrupted."""
    parser = argparse.ArgumentParser(description="Local OpenAI-Realtime-compatible test bot")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--reply-ms", type=int, default=1500)
    parser.add_argument("--realtime", action="store_true", help="pace audio at real time")
    args = parser.parse_args(argv)

    async def _run() -> None:
        bot = LocalRealtimeBot(
            api_key=args.api_key, reply_ms=args.reply_ms, send_realtime=args.realtime
        )
        await bot.start(args.host, args.port)
        print(f"local realtime bot listening on {bot.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await bot.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run())


if __name__ == "__main__":
    main()
