"""What a Twilio REST ``Calls.json`` create asks of one call, carried in its metadata.

Why: the REST emulation (:mod:`audiosocket_gw.twilio.rest`) places a call through the
one outbound path (``AsteriskProvider`` -> ``Admission.admit``), which carries a flat
``str -> str`` map to the call's ``CallInfo.metadata`` and the call record's
``metadata``. The parts that then act on the call read their per-call options back
from that map, here and only here:

* the ``twilio-stream`` backend session runs the request's TwiML (``twiml_url`` with
  ``twiml_method``, or the inline ``twiml``) instead of the agent's ``voice_url``;
* :class:`~audiosocket_gw.twilio.callbacks.StatusCallbacks` sends the request's status
  callbacks (``status_callback``, ``status_callback_method``, ``status_callback_event``)
  instead of the agent's;
* the outbound provider turns answering-machine detection on (``machine_detection``);
* ``send_digits`` waits for the call-control hook (see :data:`SEND_DIGITS`).

Keys (all strings; absent means "not asked"): see :data:`KEYS`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

__all__ = [
    "KEYS",
    "SEND_DIGITS",
    "CallOptions",
    "StatusCallbackTarget",
    "status_callback_target",
]

TWIML_URL: Final = "twiml_url"
TWIML_METHOD: Final = "twiml_method"
TWIML: Final = "twiml"
STATUS_CALLBACK: Final = "status_callback"
STATUS_CALLBACK_METHOD: Final = "status_callback_method"
STATUS_CALLBACK_EVENT: Final = "status_callback_event"
SEND_DIGITS: Final = "send_digits"
"""Digits to play once the call is answered (Twilio ``SendDigits``). Recorded here for
the call-control component (PlayDTMF, docs/PROTOCOLS.md §3); until it reads them they
are stored with the call and not played (docs/TWILIO.md says so)."""


@dataclass(frozen=True)
class CallOptions:
    """The per-call options of a REST-created call (empty strings: not given)."""

    twiml_url: str = ""
    twiml_method: str = ""
    twiml: str = ""
    status_callback: str = ""
    status_callback_method: str = ""
    status_callback_event: str = ""
    record: str = ""
    recording_status_callback: str = ""
    recording_status_callback_method: str = ""
    recording_status_callback_event: str = ""
    send_digits: str = ""
    machine_detection: str = ""
    machine_detection_timeout: str = ""
    async_amd: str = ""
    async_amd_status_callback: str = ""
    async_amd_status_callback_method: str = ""
    caller_id: str = ""

    def to_metadata(self) -> dict[str, str]:
        """The non-empty options as call metadata."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> CallOptions:
        """The options found in ``metadata`` (other keys and non-strings ignored)."""
        values = {k: v for k in KEYS if isinstance(v := metadata.get(k), str)}
        return cls(**values)

    @property
    def has_twiml(self) -> bool:
        return bool(self.twiml_url or self.twiml)


KEYS: Final = frozenset(f.name for f in fields(CallOptions))
"""Every metadata key this module owns."""


@dataclass(frozen=True)
class StatusCallbackTarget:
    """Where and how a call's status callbacks go."""

    url: str
    method: str
    events: frozenset[str]


def status_callback_target(metadata: Mapping[str, object],
                           agent_url: str | None,
                           agent_events: frozenset[str] | tuple[str, ...] | list[str],
                           ) -> StatusCallbackTarget | None:
    """The call's own ``StatusCallback`` (REST create) wins over the agent's.

    A REST ``StatusCallback`` without ``StatusCallbackEvent`` gets ``completed`` only,
    as at Twilio; the method defaults to POST.
    """
    opts = CallOptions.from_metadata(metadata)
    if opts.status_callback:
        events = frozenset(opts.status_callback_event.split()) or frozenset({"completed"})
        return StatusCallbackTarget(opts.status_callback,
                                    (opts.status_callback_method or "POST").upper(), events)
    if agent_url:
        return StatusCallbackTarget(agent_url, "POST", frozenset(agent_events))
    return None
