"""The one interface every backend implements, and what the call bridge offers it.

A backend is a factory (``Backend``) of per-call sessions (``BackendSession``). The
bridge (``audiosocket_gw.call.Call``) pushes caller audio and DTMF into the session;
the session pushes bot audio, marks, transcripts and hangups back through
``CallControl``. Both directions are plain method calls rather than queues of event
objects: the caller-audio path runs 50 times a second per call and must cost a
function call, not a task switch. Sessions that talk to the network own one task
(their socket reader) and bounded queues; they never block these methods.

Caller audio is 8 kHz 16-bit mono PCM (slin), in whatever frame sizes Asterisk sends
(320 bytes for 20 ms, 480 for 30 ms...). Bot audio handed to ``CallControl.play`` is
the same format; the pacer cuts it into 20 ms frames.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..dial import DialOutcome, DialRequest
from ..tenants import Agent

if TYPE_CHECKING:
    from ..dial import DialOutcome, DialRequest


class BackendError(Exception):
    """A backend could not serve the call. ``reason`` is a bounded metric label."""

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CallInfo:
    """What the gateway knows about a call when its AudioSocket arrives.

    ``agent_cfg`` is the agent's full configuration (backend, instructions, voice,
    stream URL, watchdog budgets...); ``metadata`` carries routing extras (Twilio
    custom parameters, Originate variables).
    """

    call_id: str
    tenant: str = "default"
    agent: str = "default"
    direction: str = "inbound"
    from_: str = ""
    to: str = ""
    agent_cfg: Agent | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """A call's logger: prefixes every line with the call id and carries ``call_id``,
    ``tenant`` and ``agent`` as record fields (the JSON log format prints them)."""

    @classmethod
    def for_call(cls, logger: logging.Logger, info: CallInfo) -> CallLog:
        return cls(logger, {"call_id": info.call_id, "tenant": info.tenant,
                            "agent": info.agent})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        given = kwargs.get("extra")
        if given:
            extra.update(given)
        kwargs["extra"] = extra
        return f"call {extra.get('call_id', '?')}: {msg}", kwargs


class AudioTap(Protocol):
    """Sees both directions of a call: debug dumps and the gateway's own recording."""

    def caller(self, pcm: bytes) -> None:
        """Caller audio as it arrives (8 kHz slin)."""

    def bot(self, frame: bytes | None) -> None:
        """The frame the pacer wrote this tick (None = silence)."""

    def close(self) -> None:
        """The call ended."""


class Subscription(Protocol):
    """A periodic callback on the gateway's clock (see ``Ticker.every``)."""

    def cancel(self) -> None:
        """Stop calling it (idempotent)."""


class Ticker(Protocol):
    """The gateway's one 20 ms clock (the pacer), for periodic work."""

    def every(self, n_ticks: int, fn: Callable[[float], None]) -> Subscription:
        """Call ``fn(now)`` every ``n_ticks`` pacer ticks (``now``: time.monotonic())."""


class CallControl(Protocol):
    """What a backend session may do to its call. Every method returns at once.

    This is the whole of what a backend sees of the bridge: backends never import
    ``audiosocket_gw.call`` nor read the bridge's attributes.
    """

    call_id: str

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The call's logger (every line prefixed with the call id)."""

    @property
    def ticker(self) -> Ticker:
        """The pacer's clock: periodic work subscribes here instead of running a loop."""

    def play(self, pcm: bytes, item_id: str | None = None) -> None:
        """Queue bot audio (8 kHz slin). Marks the bot stream as active."""

    def end_of_audio(self) -> None:
        """The current utterance is complete: a short tail is padded and played.

        Until then silent ticks are a possible gap in the utterance (an underrun, if
        more of it follows); after it the bot is idle. A backend that never calls this
        leaves every pause looking like a gap waiting to be judged.
        """

    def mark(self, name: str) -> None:
        """Echo ``name`` back (via ``on_marks``) once all audio queued so far is written."""

    def clear(self) -> None:
        """Drop queued bot audio on the next tick; pending marks are reported at once."""

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` already written to Asterisk."""

    @property
    def bot_audio_pending(self) -> bool:
        """True while bot audio is queued and not yet written."""

    def transcript(self, role: str, text: str) -> None:
        """Record a line of the conversation (role "caller" or "bot")."""

    def hangup(self, reason: str) -> None:
        """End the call (``00 00 00`` to Asterisk) with a bounded ``reason``."""

    def barge_in(self, source: str) -> None:
        """The caller spoke over the bot (``source``: bounded label, e.g. "server-vad").

        Drops queued bot audio on the next tick, counts the barge-in and then calls the
        session's ``on_barge_in`` (so ``played_ms`` is exact there). Nothing happens
        when no bot audio is queued or streaming.
        """

    def add_tap(self, tap: AudioTap) -> None:
        """Let ``tap`` see both directions of the call from now on (closed at the end)."""

    def backend_error(self, reason: str) -> None:
        """Count an error of this call's backend (``aigw_backend_errors_total``)."""

    def dial(self, request: DialRequest) -> None:
        """Hand the caller to Asterisk's ``Dial()`` (``<Dial>``, transfers): this
        AudioSocket leg ends; with ``request.resume`` the caller comes back on a new
        leg whose ``CallInfo.metadata`` holds ``parent_call_id`` and
        ``request.metadata``, and whose ``dial_outcome()`` tells how the Dial ended
        (callcontrol.py, docs/TWIML.md). Without AMI call control the call ends
        (``dial-unavailable``)."""

    def send_dtmf(self, digits: str) -> None:
        """Play DTMF to the caller's peer (``w`` = 0.5 s pause) through AMI PlayDTMF."""

    async def dial_outcome(self, timeout_s: float) -> DialOutcome | None:
        """On a leg resumed after ``dial()``: how that ``Dial()`` ended (Asterisk reports
        it over AMI around the time the leg connects: waits up to ``timeout_s``). None
        without call control, on any other leg, or when nothing came in time."""

    def agent_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """Record what the AI agent did in the call's event log (``GET /v1/calls/{id}``
        ``agent_events``) and count it: ``tool`` (``name``, ``outcome``, ``latency_ms``:
        ``aigw_tool_calls_total``, ``aigw_tool_latency_seconds``), ``transfer`` (``kind``,
        ``outcome``: ``aigw_transfers_total``), anything else is logged only. ``data``
        must be JSON-serialisable and free of secrets."""


class BackendSession(abc.ABC):
    """One call's connection to a backend."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect. Raise ``BackendError`` if the call cannot be served."""

    @abc.abstractmethod
    def on_audio(self, pcm: bytes) -> None:
        """Caller audio, 8 kHz slin. Must not block."""

    def on_dtmf(self, digit: str) -> None:  # noqa: B027 - optional hook
        """A DTMF digit from the caller."""

    def on_marks(self, names: list[str]) -> None:  # noqa: B027 - optional hook
        """Marks reached (audio written) or dropped by ``clear``, in order."""

    def on_dial_failed(self, reason: str) -> None:  # noqa: B027 - optional hook
        """Call control refused this call's last ``CallControl.dial`` (AMI down, channel
        unknown, invalid target): nothing was dialed and this leg is still up."""

    def on_barge_in(self) -> None:  # noqa: B027 - optional hook
        """The bridge cut bot audio because the caller spoke over it."""

    async def close(self, reason: str) -> None:  # noqa: B027 - optional hook
        """The call is over; release everything. Must not raise."""


class Backend(abc.ABC):
    """Factory of sessions; one per gateway process."""

    name: str = "backend"
    # Whether the bridge's own VAD may cut this backend's audio when the caller speaks
    # over it. A Twilio Media Streams app does its own barge-in (it sends ``clear``),
    # exactly as it did under Twilio, which never cut audio by itself.
    local_barge_in: bool = True

    @abc.abstractmethod
    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        """A session for ``call``, not yet started."""

    def check_agent(self, agent: Agent) -> None:  # noqa: B027 - optional hook
        """Validate ``agent``'s options for this backend at startup; raise
        ``ConfigError`` naming the key. No call is ever hung up for a bad setting."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources at shutdown."""
