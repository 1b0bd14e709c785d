"""Pure decisions of the OpenAI Realtime backend: settings, reconnects, barge-in bookkeeping.

Why a separate module: the asyncio session (``backends/openai.py``) only moves bytes;
everything it has to *decide* lives here, free of sockets and clocks, so it can be
tested exhaustively and read in one place:

* :class:`OpenAISettings` and :func:`settings_for` - the per-agent settings (agent
  ``extra`` keys, documented below) validated once into a frozen dataclass.
* :class:`ReconnectPolicy` - which WebSocket endings are worth a retry and how long to
  wait before attempt *n* (exponential backoff, capped), and when to give up.
* :class:`TurnTracker` - what the server has sent for each response and item (active
  response, milliseconds of audio received per item, responses cut by a barge-in), and
  from it the exact barge-in plan: ``conversation.item.truncate`` with
  ``audio_end_ms = min(played, received)`` and ``response.cancel`` only while the
  response is still active (never after ``response.done``, never when the server's own
  ``interrupt_response`` cancels it, which would earn ``response_cancel_not_active``).
* :class:`ContextHistory` - the transcripts so far, bounded, replayed into a fresh
  session after a reconnect.

Agent ``extra`` keys read by the ``openai`` backend (all strings in TOML):

=========================  ==================================================  ==========
key                        meaning                                             default
=========================  ==================================================  ==========
``model``                  Realtime model for this agent (URL ``?model=``)     config
``audio_format``           ``pcmu`` (G.711, no resampling), ``pcma``, or       ``pcmu``
                           ``pcm24`` (24 kHz PCM via the streaming resampler)
``transcription_model``    input transcription model, ``none`` to disable      whisper-1
``turn_detection``         ``server_vad`` or ``none``                          server_vad
``vad_threshold``          server VAD threshold 0..1                           0.5
``prefix_padding_ms``      server VAD prefix padding                           300
``silence_duration_ms``    server VAD end-of-turn silence                      500
``create_response``        ``true``/``false``: server answers each turn        true
``interrupt_response``     ``true``/``false``: server cancels on speech        true
``append_ms``              caller audio per ``input_audio_buffer.append``      40
``reconnect_attempts``     consecutive failed connects before hanging up       3
``reconnect_base_ms``      first backoff delay (doubles each attempt)          250
``reconnect_max_ms``       backoff cap                                         4000
``connect_timeout_s``      WebSocket opening handshake timeout                 10
``replay_items``           transcripts replayed after a reconnect (latest N)   40
=========================  ==================================================  ==========
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..agenttools import tool_definitions
from ..config import ConfigError
from ..realtime.protocol import AudioFormat, SessionConfig
from ..tenants import Agent

__all__ = [
    "RECOVERABLE_CLOSE_CODES",
    "BargeInPlan",
    "ContextHistory",
    "OpenAISettings",
    "ReconnectPolicy",
    "TurnTracker",
    "settings_for",
]

RECOVERABLE_CLOSE_CODES: Final = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})
"""Close codes after which a new session is worth opening (docs/PROTOCOLS.md §7.7)."""

AUTH_STATUSES: Final = frozenset({401, 403})
"""HTTP statuses of the opening handshake that must not be retried."""

WireFormat = Literal["pcmu", "pcma", "pcm24"]
_WIRE_FORMATS: Final = ("pcmu", "pcma", "pcm24")
_FORMAT_NAMES: Final[dict[str, AudioFormat]] = {
    "pcmu": "audio/pcmu",
    "pcma": "audio/pcma",
    "pcm24": "audio/pcm",
}


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class OpenAISettings:
    """Everything one call's session needs to know, validated."""

    model: str | None = None
    audio_format: WireFormat = "pcmu"
    instructions: str = ""
    voice: str = "marin"
    greeting: str | None = None
    transcription_model: str | None = "whisper-1"
    turn_detection: bool = True
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    append_ms: int = 40
    reconnect_attempts: int = 3
    reconnect_base_ms: int = 250
    reconnect_max_ms: int = 4000
    connect_timeout_s: float = 10.0
    replay_items: int = 40
    tools: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    """Function tools declared in the session (``agenttools.tool_definitions``)."""

    @property
    def wire_rate(self) -> int:
        """Sample rate on the WebSocket (8000 for G.711, 24000 for ``pcm24``)."""
        return 24000 if self.audio_format == "pcm24" else 8000

    @property
    def wire_bytes_per_ms(self) -> float:
        """Bytes of wire audio per millisecond (8 for G.711, 48 for 24 kHz slin16)."""
        return 48.0 if self.audio_format == "pcm24" else 8.0

    def session_config(self) -> SessionConfig:
        """The ``session.update`` contents (GA shape) for these settings."""
        fmt = _FORMAT_NAMES[self.audio_format]
        return SessionConfig(
            instructions=self.instructions,
            voice=self.voice,
            input_format=fmt,
            output_format=fmt,
            rate=24000,
            transcription_model=self.transcription_model,
            vad_threshold=self.vad_threshold,
            prefix_padding_ms=self.prefix_padding_ms,
            silence_duration_ms=self.silence_duration_ms,
            create_response=self.create_response,
            interrupt_response=self.interrupt_response,
            turn_detection=self.turn_detection,
            tools=self.tools,
        )

    def policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(
            attempts=self.reconnect_attempts,
            base_s=self.reconnect_base_ms / 1000.0,
            max_s=self.reconnect_max_ms / 1000.0,
        )


def _bool(extra: Mapping[str, str], key: str, default: bool) -> bool:
    raw = extra.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"agent extra {key!r}: expected true or false, got {raw!r}")


def _int(extra: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = extra.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"agent extra {key!r}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"agent extra {key!r}: must be within {lo}..{hi}, got {value}")
    return value


def _float(extra: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = extra.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"agent extra {key!r}: expected a number, got {raw!r}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"agent extra {key!r}: must be within {lo}..{hi}, got {raw}")
    return value


def settings_for(agent: Agent | None) -> OpenAISettings:
    """Validate an agent's OpenAI settings; raise ``ConfigError`` naming the bad key."""
    if agent is None:
        return OpenAISettings()
    extra = agent.extra
    fmt = extra.get("audio_format", "pcmu").strip().lower()
    if fmt not in _WIRE_FORMATS:
        raise ConfigError(
            f"agent extra 'audio_format': {fmt!r} is not one of {', '.join(_WIRE_FORMATS)}"
        )
    td = extra.get("turn_detection", "server_vad").strip().lower()
    if td not in ("server_vad", "none"):
        raise ConfigError(f"agent extra 'turn_detection': {td!r} is not server_vad or none")
    transcription: str | None = extra.get("transcription_model", "whisper-1").strip()
    if transcription in ("", "none"):
        transcription = None
    base = _int(extra, "reconnect_base_ms", 250, 0, 60_000)
    return OpenAISettings(
        model=extra.get("model") or None,
        audio_format=fmt,  # type: ignore[arg-type]  # checked against _WIRE_FORMATS
        instructions=agent.instructions,
        voice=agent.voice,
        greeting=agent.greeting or None,
        transcription_model=transcription,
        turn_detection=td == "server_vad",
        vad_threshold=_float(extra, "vad_threshold", 0.5, 0.0, 1.0),
        prefix_padding_ms=_int(extra, "prefix_padding_ms", 300, 0, 10_000),
        silence_duration_ms=_int(extra, "silence_duration_ms", 500, 0, 10_000),
        create_response=_bool(extra, "create_response", True),
        interrupt_response=_bool(extra, "interrupt_response", True),
        append_ms=_int(extra, "append_ms", 40, 20, 1000),
        reconnect_attempts=_int(extra, "reconnect_attempts", 3, 0, 100),
        reconnect_base_ms=base,
        reconnect_max_ms=_int(extra, "reconnect_max_ms", max(base, 4000), base, 600_000),
        connect_timeout_s=_float(extra, "connect_timeout_s", 10.0, 0.01, 120.0),
        replay_items=_int(extra, "replay_items", 40, 0, 1000),
        tools=tool_definitions(agent),
    )


# ---------------------------------------------------------------------------- reconnect


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff over consecutive failures.

    ``attempts`` is how many reconnect attempts follow a failure before the call is
    given up (0: never reconnect). Attempt ``n`` (1-based) waits
    ``min(max_s, base_s * 2 ** (n - 1))``; a connection that reached ``session.created``
    resets the count.
    """

    attempts: int = 3
    base_s: float = 0.25
    max_s: float = 4.0

    def delay(self, attempt: int) -> float | None:
        """Seconds to wait before reconnect ``attempt`` (1-based), None = give up."""
        if attempt < 1 or attempt > self.attempts:
            return None
        return min(self.max_s, self.base_s * 2.0 ** (attempt - 1))

    @staticmethod
    def retry_close(code: int | None, *, expired: bool = False) -> bool:
        """Is a WebSocket that closed with ``code`` worth reconnecting?

        ``None`` (no close frame: the TCP connection died) counts as 1006; a session the
        server declared expired (``session_expired``) is always renewed.
        """
        if expired:
            return True
        return (1006 if code is None else code) in RECOVERABLE_CLOSE_CODES

    @staticmethod
    def retry_status(status: int) -> bool:
        """Is an HTTP status on the opening handshake worth a retry? (Not 401/403.)"""
        return status not in AUTH_STATUSES and (status >= 500 or status == 429)


# ---------------------------------------------------------------------------- barge-in


@dataclass(frozen=True)
class BargeInPlan:
    """What to tell the server after bot audio was cut for the caller.

    ``truncate``: ``(item_id, audio_end_ms)`` or None when no item was playing;
    ``cancel``: send ``response.cancel`` (the response is still active and the server
    will not cancel it by itself).
    """

    truncate: tuple[str, int] | None
    cancel: bool
    response_id: str | None = None
    """The response to cancel: named in ``response.cancel`` so a cancel that reaches the
    server late can never hit the next response."""


_MAX_TRACKED: Final = 32


class TurnTracker:
    """Per-session bookkeeping of responses and bot items, fed from server events.

    Audio received per item is counted in wire bytes and reported in whole
    milliseconds rounded down, exactly as the server counts what it may be truncated to.
    """

    def __init__(self, wire_bytes_per_ms: float) -> None:
        self._bytes_per_ms = wire_bytes_per_ms
        self.active_response: str | None = None
        self.current_item: str | None = None
        self._received: OrderedDict[str, int] = OrderedDict()
        self._cut: deque[str] = deque(maxlen=_MAX_TRACKED)

    def reset(self) -> None:
        """A new WebSocket session: nothing is active any more."""
        self.active_response = None
        self.current_item = None
        self._received.clear()
        self._cut.clear()

    def response_created(self, response_id: str) -> None:
        self.active_response = response_id

    def response_done(self, response_id: str) -> None:
        if self.active_response == response_id:
            self.active_response = None

    def is_cut(self, response_id: str) -> bool:
        """True for a response whose audio the caller interrupted (drop its deltas)."""
        return response_id in self._cut

    def audio(self, response_id: str, item_id: str, nbytes: int) -> bool:
        """Count a delta; returns False when it belongs to a cut response (drop it)."""
        if response_id in self._cut:
            return False
        received = self._received
        if item_id in received:
            received[item_id] += nbytes
        else:
            received[item_id] = nbytes
            if len(received) > _MAX_TRACKED:
                received.popitem(last=False)
        self.current_item = item_id
        return True

    def received_ms(self, item_id: str) -> int:
        return int(self._received.get(item_id, 0) // self._bytes_per_ms)

    def barge_in(self, played_ms: int, *, server_cancels: bool) -> BargeInPlan:
        """The caller interrupted: plan truncate/cancel and stop accepting this response.

        ``played_ms`` is what the pacer wrote of ``current_item``; ``server_cancels`` is
        True when the server's own VAD detected the speech with ``interrupt_response``
        on (it has cancelled the response already).
        """
        item = self.current_item
        truncate = None
        if item is not None:
            truncate = (item, max(0, min(played_ms, self.received_ms(item))))
        active = self.active_response
        cancel = active is not None and not server_cancels
        if active is not None:
            self._cut.append(active)
        self.current_item = None
        return BargeInPlan(truncate=truncate, cancel=cancel, response_id=active)


# ---------------------------------------------------------------------------- context


class ContextHistory:
    """The conversation so far as (role, text), newest last, at most ``limit`` lines."""

    def __init__(self, limit: int = 40) -> None:
        self._lines: deque[tuple[str, str]] = deque(maxlen=max(1, limit))
        self._enabled = limit > 0

    def add(self, role: str, text: str) -> None:
        text = text.strip()
        if self._enabled and text:
            self._lines.append((role, text))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._lines))

    def __len__(self) -> int:
        return len(self._lines)
