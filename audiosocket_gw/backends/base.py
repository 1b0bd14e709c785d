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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..dial import DialRequest
from ..tenants import Agent


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


class CallControl(Protocol):
    """What a backend session may do to its call. Every method returns at once."""

    call_id: str

    def play(self, pcm: bytes, item_id: str | None = None) -> None:
        """Queue bot audio (8 kHz slin). Marks the bot stream as active."""

    def end_of_audio(self) -> None:
        """The current utterance is complete: a short tail is padded, not an underrun."""

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

    def dial(self, request: DialRequest) -> None:
        """Connect the caller to ``request``'s targets through the dialplan's ``Dial()``.

        This AudioSocket leg ends; with ``request.resume`` the caller comes back on a new
        leg whose ``CallInfo.metadata`` holds ``parent_call_id``, ``dial_status``,
        ``dial_duration``, ``dial_call_sid`` and ``request.metadata`` (docs/TWIML.md).
        """


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
