"""OpenAI Realtime API (GA shape) wire format: client event builders and server event parser.

Why: the gateway talks to OpenAI's Realtime WebSocket (and to the bundled
:mod:`audiosocket_gw.testing.localbot`). Keeping the JSON shapes in one pure module (no
I/O, no logging, no clock) makes them testable on their own and keeps the transport code
free of dictionary plumbing. Only the GA shape is produced: the beta shape (``OpenAI-Beta:
realtime=v1``, a top-level ``input_audio_format``, ``response.audio.delta``) is rejected by
OpenAI with ``beta_api_shape_disabled`` and close code 4000.

Client side: :func:`session_update` builds the ``session.update`` event from a
:class:`SessionConfig`; the other builders (:func:`input_audio_append`,
:func:`response_create`, :func:`item_truncate`, ...) each return one event as a JSON
string ready for ``websocket.send()``.

Server side: :func:`parse_server_event` turns one received message into a frozen
dataclass (see :data:`ServerEvent`). Event types the gateway does not act on come back as
:class:`Unknown` with the decoded dict, so new server events never break a session.

Error family:

* :class:`RealtimeError` - base class of every error raised by the realtime package.
* :class:`RealtimeProtocolError` (a :class:`RealtimeError`) - a received message could not
  be understood: invalid UTF-8 or JSON, a JSON value that is not an object, a missing or
  non-string ``type``, a known event type with a missing or mistyped required field, or an
  audio delta that is not valid base64. The message names the event type and the field.
  It concerns one message only: the caller is expected to log it, count it and keep
  reading.

An ``error`` event sent by the server is *not* raised: it is returned as
:class:`ErrorEvent`, because most of them are non-fatal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "AudioBufferCommitted",
    "AudioDelta",
    "AudioDone",
    "AudioFormat",
    "ErrorEvent",
    "FunctionCall",
    "InputTranscriptionCompleted",
    "ItemTruncated",
    "OutputTranscriptDelta",
    "OutputTranscriptDone",
    "RateLimitsUpdated",
    "RealtimeError",
    "RealtimeProtocolError",
    "ResponseCreated",
    "ResponseDone",
    "ServerEvent",
    "SessionConfig",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "Unknown",
    "conversation_item_create_assistant_text",
    "conversation_item_create_text",
    "function_call_output",
    "input_audio_append",
    "input_audio_clear",
    "input_audio_commit",
    "item_truncate",
    "parse_server_event",
    "response_cancel",
    "response_create",
    "session_dict",
    "session_update",
]

AudioFormat: TypeAlias = Literal["audio/pcmu", "audio/pcma", "audio/pcm"]
"""GA audio format names: G.711 mu-law / A-law at 8 kHz, or 16-bit PCM at ``rate`` Hz."""

_AUDIO_FORMATS: frozenset[str] = frozenset({"audio/pcmu", "audio/pcma", "audio/pcm"})


class RealtimeError(Exception):
    """Base class of every error raised by :mod:`audiosocket_gw.realtime`."""


class RealtimeProtocolError(RealtimeError):
    """A received Realtime message is malformed (bad JSON, missing or mistyped field).

    Concerns a single message: log it, count it and continue with the next one.
    """


# --------------------------------------------------------------------------- session


@dataclass(frozen=True)
class SessionConfig:
    """Everything the gateway puts in ``session.update`` (GA shape).

    ``input_format`` / ``output_format``: ``audio/pcmu`` (default, no resampling from 8 kHz
    slin), ``audio/pcma`` or ``audio/pcm``; ``rate`` is only sent for ``audio/pcm`` (OpenAI
    accepts 24000 only). ``transcription_model=None`` leaves input transcription off.
    ``turn_detection=False`` sends ``"turn_detection": null`` (no server VAD: the client
    must commit and call ``response.create`` itself); otherwise the ``server_vad`` fields
    ``vad_threshold`` (0..1), ``prefix_padding_ms``, ``silence_duration_ms``,
    ``create_response`` and ``interrupt_response`` are sent.
    """

    instructions: str = ""
    voice: str = "marin"
    input_format: AudioFormat = "audio/pcmu"
    output_format: AudioFormat = "audio/pcmu"
    rate: int = 24000
    transcription_model: str | None = "whisper-1"
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    turn_detection: bool = True
    tools: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    """Function tools (``{"type": "function", "name", "description", "parameters"}``)."""

    def __post_init__(self) -> None:
        for name in ("input_format", "output_format"):
            value = getattr(self, name)
            if value not in _AUDIO_FORMATS:
                raise ValueError(f"{name} must be one of {sorted(_AUDIO_FORMATS)}, got {value!r}")
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if not 0.0 <= self.vad_threshold <= 1.0:
            raise ValueError(f"vad_threshold must be within 0..1, got {self.vad_threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must not be negative")


def _format_dict(fmt: AudioFormat, rate: int) -> dict[str, Any]:
    if fmt == "audio/pcm":
        return {"type": fmt, "rate": rate}
    return {"type": fmt}


def session_dict(cfg: SessionConfig) -> dict[str, Any]:
    """The ``session`` object of :func:`session_update` as a dict (GA shape)."""
    audio_input: dict[str, Any] = {"format": _format_dict(cfg.input_format, cfg.rate)}
    if cfg.transcription_model is not None:
        audio_input["transcription"] = {"model": cfg.transcription_model}
    if cfg.turn_detection:
        audio_input["turn_detection"] = {
            "type": "server_vad",
            "threshold": cfg.vad_threshold,
            "prefix_padding_ms": cfg.prefix_padding_ms,
            "silence_duration_ms": cfg.silence_duration_ms,
            "create_response": cfg.create_response,
            "interrupt_response": cfg.interrupt_response,
        }
    else:
        audio_input["turn_detection"] = None
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": cfg.instructions,
        "audio": {
            "input": audio_input,
            "output": {
                "format": _format_dict(cfg.output_format, cfg.rate),
                "voice": cfg.voice,
            },
        },
    }
    if cfg.tools:
        session["tools"] = [dict(t) for t in cfg.tools]
        session["tool_choice"] = "auto"
    return session


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def session_update(cfg: SessionConfig) -> str:
    """``session.update`` in the GA shape (``session.type: "realtime"``, nested ``audio``)."""
    return _dump({"type": "session.update", "session": session_dict(cfg)})


# --------------------------------------------------------------------- client events


_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'


def input_audio_append(audio: bytes) -> str:
    """``input_audio_buffer.append`` carrying ``audio`` (already in the input format).

    Built on the audio path 25 times a second per call: the same text as ``_dump`` of
    the dict (tested), without the encoder's per-call cost.
    """
    return f'{_APPEND_HEAD}{binascii.b2a_base64(audio, newline=False).decode("ascii")}"}}'


def input_audio_commit() -> str:
    """``input_audio_buffer.commit`` (only needed without server VAD)."""
    return _dump({"type": "input_audio_buffer.commit"})


def input_audio_clear() -> str:
    """``input_audio_buffer.clear``: drop audio appended but not yet committed."""
    return _dump({"type": "input_audio_buffer.clear"})


def conversation_item_create_text(role: Literal["user", "system"], text: str) -> str:
    """``conversation.item.create`` with a user or system text message (``input_text``)."""
    if role not in ("user", "system"):
        raise ValueError(f"role must be 'user' or 'system', got {role!r}")
    return _dump(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": role,
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )


def conversation_item_create_assistant_text(text: str) -> str:
    """``conversation.item.create`` with an assistant text message (``output_text``).

    Used to replay what the bot already said into a fresh session after a reconnect.
    """
    return _dump(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            },
        }
    )


def function_call_output(call_id: str, output: str) -> str:
    """``conversation.item.create`` with the ``function_call_output`` of ``call_id``.

    ``output`` is a string (JSON text by convention); follow it with ``response.create``
    so the model speaks about the result.
    """
    return _dump(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    )


def response_create(instructions: str | None = None) -> str:
    """``response.create``, optionally overriding the instructions for this response only."""
    event: dict[str, Any] = {"type": "response.create"}
    if instructions is not None:
        event["response"] = {"instructions": instructions}
    return _dump(event)


def response_cancel(response_id: str | None = None) -> str:
    """``response.cancel`` for the active response (or the given ``response_id``)."""
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id is not None:
        event["response_id"] = response_id
    return _dump(event)


def item_truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
    """``conversation.item.truncate``: the caller heard only ``audio_end_ms`` of the item.

    ``audio_end_ms`` must not exceed the audio the server sent for the item, otherwise the
    server answers with an ``error`` whose message says "already shorter than".
    """
    if audio_end_ms < 0:
        raise ValueError(f"audio_end_ms must not be negative, got {audio_end_ms}")
    return _dump(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    )


# --------------------------------------------------------------------- server events


@dataclass(frozen=True)
class SessionCreated:
    """``session.created``: always the first server event; ``session`` is the raw object."""

    session: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class SessionUpdated:
    """``session.updated``: the effective session after a ``session.update``."""

    session: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class SpeechStarted:
    """``input_audio_buffer.speech_started`` (``audio_start_ms`` since the session began)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    """``input_audio_buffer.speech_stopped``."""

    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class AudioBufferCommitted:
    """``input_audio_buffer.committed``: the caller's turn became item ``item_id``."""

    item_id: str


@dataclass(frozen=True)
class ResponseCreated:
    """``response.created``."""

    response_id: str


@dataclass(frozen=True)
class AudioDelta:
    """``response.output_audio.delta``; ``audio`` is decoded (still in the output format)."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes


@dataclass(frozen=True)
class AudioDone:
    """``response.output_audio.done``."""

    response_id: str
    item_id: str


@dataclass(frozen=True)
class OutputTranscriptDelta:
    """``response.output_audio_transcript.delta``."""

    item_id: str
    delta: str


@dataclass(frozen=True)
class OutputTranscriptDone:
    """``response.output_audio_transcript.done``."""

    item_id: str
    transcript: str


@dataclass(frozen=True)
class InputTranscriptionCompleted:
    """``conversation.item.input_audio_transcription.completed``."""

    item_id: str
    transcript: str


@dataclass(frozen=True)
class ItemTruncated:
    """``conversation.item.truncated``."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class ResponseDone:
    """``response.done``: ``status`` completed|cancelled|failed|incomplete.

    ``reason`` is ``status_details.reason`` (e.g. ``turn_detected``, ``client_cancelled``)
    or None when the server gave none.
    """

    response_id: str
    status: str
    reason: str | None


@dataclass(frozen=True)
class FunctionCall:
    """A complete function call of the model: ``response.function_call_arguments.done``,
    or a ``response.output_item.done`` whose item is a ``function_call`` (both arrive
    for one call: deduplicate on ``call_id``). ``arguments`` is the raw JSON text."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RateLimitsUpdated:
    """``rate_limits.updated``; ``rate_limits`` is the raw list."""

    rate_limits: list[Any] = field(hash=False)


@dataclass(frozen=True)
class ErrorEvent:
    """``error``: ``type`` is ``error.type`` (e.g. ``invalid_request_error``), not the event."""

    type: str
    code: str | None
    message: str
    param: str | None


@dataclass(frozen=True)
class Unknown:
    """Any other server event: ``type`` and the whole decoded message."""

    type: str
    raw: dict[str, Any] = field(hash=False)


ServerEvent: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | AudioBufferCommitted
    | ResponseCreated
    | AudioDelta
    | AudioDone
    | OutputTranscriptDelta
    | OutputTranscriptDone
    | InputTranscriptionCompleted
    | ItemTruncated
    | ResponseDone
    | FunctionCall
    | RateLimitsUpdated
    | ErrorEvent
    | Unknown
)
"""Every value :func:`parse_server_event` can return."""


class _Fields:
    """Typed accessors over one decoded event that raise :class:`RealtimeProtocolError`."""

    def __init__(self, event_type: str, data: dict[str, Any], prefix: str = "") -> None:
        self._type = event_type
        self._data = data
        self._prefix = prefix

    def _fail(self, key: str, what: str) -> RealtimeProtocolError:
        return RealtimeProtocolError(
            f"Realtime event {self._type!r}: field '{self._prefix}{key}' {what}"
        )

    def _get(self, key: str) -> Any:
        if key not in self._data:
            raise self._fail(key, "is missing")
        return self._data[key]

    def req_str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {type(value).__name__}")
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, f"must be a string or null, got {type(value).__name__}")
        return value

    def req_int(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {type(value).__name__}")
        return value

    def obj(self, key: str) -> _Fields:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._fail(key, f"must be an object, got {type(value).__name__}")
        return _Fields(self._type, value, f"{self._prefix}{key}.")

    def opt_obj(self, key: str) -> _Fields | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, f"must be an object or null, got {type(value).__name__}")
        return _Fields(self._type, value, f"{self._prefix}{key}.")

    def raw_obj(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._fail(key, f"must be an object, got {type(value).__name__}")
        return value

    def req_list(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._fail(key, f"must be an array, got {type(value).__name__}")
        return value

    def b64(self, key: str) -> bytes:
        text = self.req_str(key)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._fail(key, f"is not valid base64 ({exc})") from None


def _response_done(f: _Fields) -> ResponseDone:
    response = f.obj("response")
    details = response.opt_obj("status_details")
    return ResponseDone(
        response_id=response.req_str("id"),
        status=response.req_str("status"),
        reason=details.opt_str("reason") if details is not None else None,
    )


def _error(f: _Fields) -> ErrorEvent:
    error = f.obj("error")
    return ErrorEvent(
        type=error.req_str("type"),
        code=error.opt_str("code"),
        message=error.req_str("message"),
        param=error.opt_str("param"),
    )


def _arguments_done(f: _Fields) -> FunctionCall:
    return FunctionCall(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        call_id=f.req_str("call_id"),
        name=f.opt_str("name") or "",
        arguments=f.req_str("arguments"),
    )


def _output_item_done(f: _Fields) -> ServerEvent:
    item = f.opt_obj("item")
    if item is None or item.opt_str("type") != "function_call":
        return Unknown("response.output_item.done", f._data)
    return FunctionCall(
        response_id=f.opt_str("response_id") or "",
        item_id=item.opt_str("id") or "",
        call_id=item.req_str("call_id"),
        name=item.req_str("name"),
        arguments=item.req_str("arguments"),
    )


_PARSERS: dict[str, Callable[[_Fields], ServerEvent]] = {
    "session.created": lambda f: SessionCreated(f.raw_obj("session")),
    "session.updated": lambda f: SessionUpdated(f.raw_obj("session")),
    "input_audio_buffer.speech_started": lambda f: SpeechStarted(
        f.req_int("audio_start_ms"), f.req_str("item_id")
    ),
    "input_audio_buffer.speech_stopped": lambda f: SpeechStopped(
        f.req_int("audio_end_ms"), f.req_str("item_id")
    ),
    "input_audio_buffer.committed": lambda f: AudioBufferCommitted(f.req_str("item_id")),
    "response.created": lambda f: ResponseCreated(f.obj("response").req_str("id")),
    "response.output_audio.delta": lambda f: AudioDelta(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        output_index=f.req_int("output_index"),
        content_index=f.req_int("content_index"),
        audio=f.b64("delta"),
    ),
    "response.output_audio.done": lambda f: AudioDone(
        f.req_str("response_id"), f.req_str("item_id")
    ),
    "response.output_audio_transcript.delta": lambda f: OutputTranscriptDelta(
        f.req_str("item_id"), f.req_str("delta")
    ),
    "response.output_audio_transcript.done": lambda f: OutputTranscriptDone(
        f.req_str("item_id"), f.req_str("transcript")
    ),
    "conversation.item.input_audio_transcription.completed": lambda f: InputTranscriptionCompleted(
        f.req_str("item_id"), f.req_str("transcript")
    ),
    "conversation.item.truncated": lambda f: ItemTruncated(
        f.req_str("item_id"), f.req_int("audio_end_ms")
    ),
    "response.done": _response_done,
    "response.function_call_arguments.done": _arguments_done,
    "response.output_item.done": _output_item_done,
    "rate_limits.updated": lambda f: RateLimitsUpdated(f.req_list("rate_limits")),
    "error": _error,
}


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Decode one Realtime server message (a WebSocket text or binary frame).

    Returns the matching dataclass, or :class:`Unknown` for event types not modelled here.
    Raises :class:`RealtimeProtocolError` for invalid UTF-8/JSON, a non-object, a missing
    or non-string ``type``, or a known event lacking a required field; nothing else.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RealtimeProtocolError(f"Realtime message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RealtimeProtocolError(
            f"Realtime message must be a JSON object, got {type(data).__name__}"
        )
    event_type = data.get("type")
    if not isinstance(event_type, str):
        raise RealtimeProtocolError("Realtime message has no string 'type' field")
    parser = _PARSERS.get(event_type)
    if parser is None:
        return Unknown(event_type, data)
    return parser(_Fields(event_type, data))
