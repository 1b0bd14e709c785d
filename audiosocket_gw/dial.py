"""Moving a call elsewhere through the dialplan: the shared, pure types.

Asterisk does the bridge, not the gateway (docs/PROTOCOLS.md §4): to ``<Dial>`` a
number or a SIP URI, or to transfer to a human, the gateway sets channel variables
over AMI (``Setvar``), ends the AudioSocket leg with a hangup frame, and the included
dialplan continues into ``Dial()`` through the tenant's trunk. When the TwiML asks
for an ``action`` (or an agent tool wants the caller back after a failed transfer),
the dialplan opens a new AudioSocket leg with a pre-registered ``resume`` id once
``Dial()`` returns, and the outcome (``DialOutcome``) travels with it.

These types are shared by the TwiML interpreter (``<Dial>``), the Twilio REST
emulation, agent tools (``transfer_call``) and the AMI call controller
(``callcontrol.py``), which is the one place that talks to Asterisk about it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["CONSULT_METADATA_KEY", "DIAL_OUTCOME_WAIT_S", "DTMF_DIGITS_RE", "DTMF_PAUSE_S",
           "MOVED_END_REASON", "TRANSFER_METADATA_KEY", "TRANSFER_SUMMARY_KEY",
           "DialOutcome", "DialRequest", "DialStatus", "DialTarget"]

DTMF_DIGITS_RE: Final = re.compile(r"[0-9*#A-Dw]{1,64}")
"""Digits the gateway sends over AMI ``PlayDTMF`` (Twilio ``sendDigits``, ``<Play
digits>``, the agents' ``send_dtmf``): ``w`` is a pause of ``DTMF_PAUSE_S``."""
DTMF_PAUSE_S: Final = 0.5
"""A ``w`` in a digit string waits this long, as at Twilio."""
DIAL_OUTCOME_WAIT_S: Final = 5.0
"""Longest wait on a resumed leg for AMI to report how its Dial() ended (normally there
already, or a few ms behind the new AudioSocket connection)."""

MOVED_END_REASON: Final = "dial"
"""``Call.end_reason`` of an AudioSocket leg the gateway ended because the call moved
on in the dialplan (``Dial()``): the call itself goes on, in Asterisk."""

TRANSFER_METADATA_KEY: Final = "aigw_transfer"
"""``DialRequest.metadata`` key naming the agent's transfer destination: the AMI call
controller counts and logs the Dial's outcome as that transfer's, and the resumed leg's
backend session knows it comes back from a transfer."""

TRANSFER_SUMMARY_KEY: Final = "aigw_transfer_summary"
"""``DialRequest.metadata`` key of an attended transfer: what the person hears before
accepting (the model's ``summary`` argument); not carried to the resumed leg."""

CONSULT_METADATA_KEY: Final = "aigw_consult"
"""``CallInfo.metadata`` key of an attended transfer's consult leg (the person's
AudioSocket, value: the caller's call id): served by ``attended.ConsultBackend``,
never a call record of its own."""

DialStatus = Literal["completed", "answered", "busy", "no-answer", "failed", "canceled"]
"""Twilio's ``DialCallStatus`` values (mapped from Asterisk's ``DIALSTATUS``)."""


@dataclass(frozen=True)
class DialTarget:
    """One party to ring: an E.164 number (through the tenant's trunk), a SIP URI, or an
    ``extension@context`` of the deployment's own dialplan (a phone, a ring group, a
    queue: dialed as ``Local/extension@context``)."""

    kind: Literal["number", "sip", "extension"]
    address: str
    send_digits: str = ""
    """DTMF to send once this party answers (``<Number sendDigits>``)."""


@dataclass(frozen=True)
class DialRequest:
    """What ``<Dial>`` (or a transfer tool) asks for.

    Several targets ring at once (simultaneous dialing, first to answer wins), as
    Twilio does for several ``<Number>``/``<Sip>`` nouns.
    """

    targets: tuple[DialTarget, ...]
    timeout_s: float = 30.0
    caller_id: str = ""
    record: bool = False
    hangup_on_star: bool = False
    time_limit_s: float = 14400.0
    resume: bool = False
    """Bring the caller back to the gateway when ``Dial()`` returns (an ``action``
    URL, or a failed transfer back to the bot)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Carried to the resumed leg's ``CallInfo.metadata``."""


@dataclass(frozen=True)
class DialOutcome:
    """How ``Dial()`` ended, as Twilio reports it to a ``<Dial action>``."""

    status: DialStatus
    duration_s: int = 0
    """``DialCallDuration``: seconds the dialed party was connected."""
    dial_call_sid: str = ""
    """``DialCallSid``: the Twilio-shaped sid of the dialed leg."""
    asterisk_status: str = ""
    """Asterisk's raw ``DIALSTATUS`` (ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION...)."""
