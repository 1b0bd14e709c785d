"""The provider library's interface, errors and pure helpers (standard library only).

``TelephonyProvider`` (sync) and ``AsyncTelephonyProvider`` (asyncio) are what the
application calls; ``TwilioProvider``, ``AsteriskProvider`` and ``RolloutProvider``
implement them. Call ids say which side owns a call: a Twilio call SID (``CA`` + 32
hex digits) belongs to Twilio, anything else (the gateway's UUIDs) to Asterisk, so a
``RolloutProvider`` routes ``hangup``/``get_call``/... without remembering anything.

Errors (``ProviderError`` root):

- ``ProviderUnavailable``: the call was definitely NOT placed (connection refused,
  HTTP 5xx/429 from the gateway, ``/healthz`` failing, circuit open); ``reason`` says
  which. The rollout falls back to Twilio on it.
- ``CallOutcomeUnknown``: the request may have placed a call (a timeout after the
  request was sent, and retries with the same ``Idempotency-Key`` did not settle it).
  Never falls back: a call is never placed twice.
- ``RequestRejected``: the request itself is wrong (HTTP 4xx: bad number, unknown
  tenant...); falling back would only fail again.
- ``UnsupportedOperation``: this provider cannot do that (yet).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

__all__ = [
    "CallOutcomeUnknown",
    "Path",
    "ProviderCall",
    "ProviderError",
    "ProviderRecording",
    "ProviderUnavailable",
    "RequestRejected",
    "UnsupportedOperation",
    "bucket",
    "is_twilio_call_sid",
]

Path = Literal["asterisk", "twilio"]
_CALL_SID: Final = re.compile(r"CA[0-9a-fA-F]{32}")


class ProviderError(Exception):
    """Root of the provider library's errors."""


class ProviderUnavailable(ProviderError):
    """The call was not placed: the provider cannot take it now (``reason`` says why).

    Not to be confused with the gateway-internal ``audiosocket_gw.telephony
    .ProviderUnavailable`` (AMI down), which the gateway answers as HTTP 503.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class CallOutcomeUnknown(ProviderError):
    """The request may or may not have placed a call; do not place it elsewhere."""

    def __init__(self, idempotency_key: str, message: str = "") -> None:
        super().__init__(message or f"outcome unknown (Idempotency-Key {idempotency_key})")
        self.idempotency_key = idempotency_key


class RequestRejected(ProviderError):
    """The provider refused the request itself (HTTP 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class UnsupportedOperation(ProviderError):
    """The provider does not support this operation."""


@dataclass(frozen=True)
class ProviderCall:
    """A call as a provider reports it (Twilio's status vocabulary on both sides)."""

    id: str
    provider: Path
    status: str
    to: str = ""
    from_: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ProviderRecording:
    """A call's recording: where to fetch it, and how long it is."""

    call_id: str
    provider: Path
    status: str
    url: str | None = None
    duration_s: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False)


def is_twilio_call_sid(call_id: str) -> bool:
    """True for a Twilio call SID (``CA`` + 32 hex digits)."""
    return _CALL_SID.fullmatch(call_id) is not None


def bucket(key: str) -> int:
    """A stable bucket 0..99 for ``key`` (sha256; same on every host and process).

    The gateway's inbound webhook and the app's ``RolloutProvider`` use this same
    function: a key in bucket ``b`` takes the Asterisk path when ``b < percent``, so
    raising the percentage only moves keys from Twilio to Asterisk, never back.
    """
    digest = hashlib.sha256(key.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


class TelephonyProvider(Protocol):
    """Place, end, steer and look up calls (the application's one telephony interface)."""

    name: str

    def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                            metadata: Mapping[str, Any] | None = None) -> str:
        """Place a call; returns its id."""
        ...

    def hangup(self, call_id: str) -> None:
        """End the call (no error if it already ended)."""
        ...

    def get_call(self, call_id: str) -> ProviderCall | None:
        """The call, or None if the provider does not know it."""
        ...

    def update_call(self, call_id: str, *, twiml: str | None = None,
                    url: str | None = None) -> None:
        """Steer a live call with new TwiML (inline ``twiml=`` or fetched ``url=``)."""
        ...

    def get_recording(self, call_id: str) -> ProviderRecording | None:
        """The call's recording, or None when it has none."""
        ...


class AsyncTelephonyProvider(Protocol):
    """The asyncio variant of ``TelephonyProvider`` (same methods, awaitable)."""

    name: str

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None) -> str: ...

    async def hangup(self, call_id: str) -> None: ...

    async def get_call(self, call_id: str) -> ProviderCall | None: ...

    async def update_call(self, call_id: str, *, twiml: str | None = None,
                          url: str | None = None) -> None: ...

    async def get_recording(self, call_id: str) -> ProviderRecording | None: ...


def check_update(twiml: str | None, url: str | None) -> None:
    """Exactly one of ``twiml`` and ``url``."""
    if (twiml is None) == (url is None):
        raise ValueError("update_call needs exactly one of twiml= or url=")


def effective_percent(state: Mapping[str, Any], tenant: str, did: str = "") -> int:
    """The Asterisk share for a call of ``tenant`` on ``did`` in a rollout state.

    ``state`` is the gateway's ``GET /v1/rollout`` document: ``{"percent": N,
    "tenants": {tenant: N}, "dids": {did: {"percent": N, ...}}}``. The most specific
    rule wins: the DID's, then the tenant's, then the global percentage.
    """
    dids = state.get("dids") or {}
    rule = dids.get(did) if did else None
    if isinstance(rule, Mapping) and isinstance(rule.get("percent"), int):
        return int(rule["percent"])
    tenants = state.get("tenants") or {}
    if isinstance(tenants.get(tenant), int):
        return int(tenants[tenant])
    pct = state.get("percent", 0)
    return int(pct) if isinstance(pct, int) else 0
