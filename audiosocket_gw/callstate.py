"""The call state machine, as data (h11 ``_state.py`` style).

Statuses use Twilio's names and values exactly (docs/PROTOCOLS.md §8.5), so status callbacks
and the API can hand them out unchanged::

    queued --ROUTED_INBOUND / RINGING--> ringing --ANSWERED--> in-progress
       \\                                   |                        |
        +---- busy / no-answer / failed / canceled <---+   HANGUP / EOF / ... --> completed

Inputs (``CallInput``) name what the gateway observed, whatever its source:

=====================  ==========================================================
ORIGINATE_QUEUED       our AMI ``Originate`` (``Async: true``) was accepted
ROUTED_INBOUND         the route API accepted an inbound call (AGI ``/v1/route``)
RINGING                ``Newstate`` ChannelState 5 or ``DialState`` RINGING
ANSWERED               ``Newstate`` Up, ``OriginateResponse`` Reason 4, or the
                       AudioSocket UUID frame arrived
AUDIOSOCKET_EOF        Asterisk closed the AudioSocket connection
HANGUP                 AMI ``Hangup`` event (carries ``Cause``)
ORIGINATE_FAILED_BUSY  ``OriginateResponse`` Reason 5
ORIGINATE_NO_ANSWER    ``OriginateResponse`` Reason 3 (ring timeout) or 2
ORIGINATE_FAILED       ``OriginateResponse`` Reason 0, 1, 8 (congestion) or other
CANCELED               a hangup was requested (API) before the call was answered
GATEWAY_HANGUP         the gateway ended the call (bot hung up, watchdog, shutdown)
VANISHED               the channel was not found at AMI resync (``CoreShowChannels``)
=====================  ==========================================================

``TRANSITIONS`` lists every input that changes a status; everything else leaves the
status as it is. In particular terminal statuses absorb every input, so a duplicate
end (AMI ``Hangup`` *and* AudioSocket EOF, in either order) is counted once:
``is_transition`` tells a real change from an absorbed input. ``next_status`` never
raises: AMI events can arrive late or twice, and a late ``RINGING`` after
``ANSWERED`` must not crash the tracker.

An AMI ``Hangup`` before answer is refined by its cause (``next_status(...,
cause=17)`` gives busy) with Twilio's semantics, see ``status_for_hangup_before_answer``.

Pure: no I/O, no clock. The store (``audiosocket_gw.store``) applies it and keeps
timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, StrEnum
from types import MappingProxyType

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "TRANSITIONS",
    "CallInput",
    "CallStatus",
    "hangup_cause_text",
    "is_failure_cause",
    "is_transition",
    "next_status",
    "status_for_hangup_before_answer",
    "status_from_originate_reason",
]


class CallStatus(StrEnum):
    """Twilio's call statuses; the value (and ``str()``) is the exact Twilio string."""

    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """True for statuses a call never leaves."""
        return self in TERMINAL


class CallInput(Enum):
    """What happened to a call (see the module docstring for the sources)."""

    ORIGINATE_QUEUED = "originate_queued"
    ROUTED_INBOUND = "routed_inbound"
    RINGING = "ringing"
    ANSWERED = "answered"
    AUDIOSOCKET_EOF = "audiosocket_eof"
    HANGUP = "hangup"
    ORIGINATE_FAILED_BUSY = "originate_failed_busy"
    ORIGINATE_NO_ANSWER = "originate_no_answer"
    ORIGINATE_FAILED = "originate_failed"
    CANCELED = "canceled"
    GATEWAY_HANGUP = "gateway_hangup"
    VANISHED = "vanished"


S = CallStatus
I = CallInput  # noqa: E741 - table shorthand

TERMINAL: frozenset[CallStatus] = frozenset(
    {S.COMPLETED, S.BUSY, S.FAILED, S.NO_ANSWER, S.CANCELED}
)
"""Statuses a call never leaves."""

ACTIVE: frozenset[CallStatus] = frozenset(set(CallStatus) - TERMINAL)
"""Non-terminal statuses: queued, ringing, in-progress."""

# Inputs that end a call before it was answered, the same from queued and ringing.
_BEFORE_ANSWER_ENDS: dict[CallInput, CallStatus] = {
    I.ANSWERED: S.IN_PROGRESS,
    I.ORIGINATE_FAILED_BUSY: S.BUSY,
    I.ORIGINATE_NO_ANSWER: S.NO_ANSWER,
    I.ORIGINATE_FAILED: S.FAILED,
    I.CANCELED: S.CANCELED,
    I.GATEWAY_HANGUP: S.CANCELED,
    # Refined by the Hangup cause in next_status(); failed when the cause is unknown.
    I.HANGUP: S.FAILED,
    # An AudioSocket that closes before its UUID frame (channel never answered).
    I.AUDIOSOCKET_EOF: S.FAILED,
    # Lost while we were disconnected from AMI: we cannot know it was answered.
    I.VANISHED: S.FAILED,
}

_TABLE: dict[tuple[CallStatus, CallInput], CallStatus] = {
    **{(S.QUEUED, inp): out for inp, out in _BEFORE_ANSWER_ENDS.items()},
    (S.QUEUED, I.ROUTED_INBOUND): S.RINGING,
    (S.QUEUED, I.RINGING): S.RINGING,
    **{(S.RINGING, inp): out for inp, out in _BEFORE_ANSWER_ENDS.items()},
    (S.IN_PROGRESS, I.HANGUP): S.COMPLETED,
    (S.IN_PROGRESS, I.AUDIOSOCKET_EOF): S.COMPLETED,
    (S.IN_PROGRESS, I.GATEWAY_HANGUP): S.COMPLETED,
    (S.IN_PROGRESS, I.VANISHED): S.COMPLETED,
    # A cancel racing the answer: the call is up, so ending it completes it.
    (S.IN_PROGRESS, I.CANCELED): S.COMPLETED,
}

TRANSITIONS: Mapping[tuple[CallStatus, CallInput], CallStatus] = MappingProxyType(_TABLE)
"""Every (status, input) that changes the status. Absent pairs leave it unchanged."""

del S, I

_PRE_ANSWER: frozenset[CallStatus] = frozenset({CallStatus.QUEUED, CallStatus.RINGING})


def next_status(status: CallStatus, inp: CallInput, *, cause: int | None = None) -> CallStatus:
    """The status after ``inp``. Never raises.

    Terminal statuses absorb every input; inputs that do not apply (a late RINGING
    after ANSWERED, ORIGINATE_QUEUED twice) leave the status unchanged. ``cause`` is
    the AMI Hangup ``Cause``: for a ``HANGUP`` before answer it picks busy /
    no-answer / canceled / failed (``status_for_hangup_before_answer``).
    """
    if inp is CallInput.HANGUP and cause is not None and status in _PRE_ANSWER:
        return status_for_hangup_before_answer(cause)
    return TRANSITIONS.get((status, inp), status)


def is_transition(status: CallStatus, inp: CallInput, *, cause: int | None = None) -> bool:
    """True when ``inp`` changes ``status`` (False when absorbed or not applicable)."""
    return next_status(status, inp, cause=cause) is not status


def status_from_originate_reason(reason: int) -> CallInput:
    """The input for an ``OriginateResponse`` ``Reason`` (Asterisk's AST_CONTROL_* code).

    4 answered; 5 busy; 3 (ringing, then timeout) and 2 (ring) no answer; 0 (failed,
    e.g. unknown extension or ``Hangup(17)`` before answer), 1 (hung up while
    dialing), 8 (congestion) and anything else failed.
    """
    if reason == 4:
        return CallInput.ANSWERED
    if reason == 5:
        return CallInput.ORIGINATE_FAILED_BUSY
    if reason in (2, 3):
        return CallInput.ORIGINATE_NO_ANSWER
    return CallInput.ORIGINATE_FAILED


_CAUSES: Mapping[int, str] = MappingProxyType(
    {
        0: "Unknown (normal end, not a failure)",
        1: "Unallocated number",
        16: "Normal Clearing",
        17: "User busy",
        18: "No user responding",
        19: "No answer",
        21: "Call Rejected",
        27: "Destination out of order",
        34: "Circuit congestion",
        38: "Network out of order",
        41: "Temporary failure",
        127: "Interworking",
    }
)


def hangup_cause_text(code: int) -> str:
    """Text for a Q.850 hangup cause as used by Asterisk (docs/PROTOCOLS.md §2.6).

    Cause 0 is what a caller's SIP BYE and an originated Application ending give: it
    is a normal end, not a failure. Unlisted codes give ``"Cause <n>"``.
    """
    return _CAUSES.get(code, f"Cause {code}")


def is_failure_cause(code: int) -> bool:
    """False for the causes of a normal end (0 and 16), True for the others."""
    return code not in (0, 16)


def status_for_hangup_before_answer(cause: int) -> CallStatus:
    """The final status of a call whose channel hung up before it was answered.

    Twilio semantics: 17 busy; 18 and 19 no-answer; 16 and 0 (the caller simply
    hung up, e.g. an inbound caller giving up while it rang) canceled; anything else
    (21 rejected, 1, 27, 34, 38, 41, 127...) failed.
    """
    if cause == 17:
        return CallStatus.BUSY
    if cause in (18, 19):
        return CallStatus.NO_ANSWER
    if cause in (0, 16):
        return CallStatus.CANCELED
    return CallStatus.FAILED
