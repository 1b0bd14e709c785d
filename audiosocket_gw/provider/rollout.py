"""``RolloutProvider``: a percentage of new calls to Asterisk, the rest to Twilio.

Choosing the path of a new call (``choose``):

1. the percentage: a per-tenant override given to the provider
   (``TELEPHONY_ROLLOUT_TENANTS="acme=50,beta=0"``) wins; else a fixed
   ``TELEPHONY_ROLLOUT_PERCENT`` when set (the app pins its own share); else the
   gateway's rollout state (``GET /v1/rollout``: the rule of the DID the call is
   placed from (``from_``), the tenant's, the global one), cached ``state_ttl``
   seconds, so ``audiosocket-gw rollout set`` and ``rollout rollback`` steer the app's
   outbound calls too. A gateway that cannot be
   asked counts as 0 % (Twilio), reason ``rollout_state_unavailable``.
2. stickiness: the key is the destination number (``sticky="to"``, default) or the
   tenant (``sticky="tenant"``); ``bucket(key)`` (sha256 -> 0..99) below the percentage
   takes the Asterisk path. The same number always takes the same path at a given
   percentage, and raising the percentage never moves a number back to Twilio.

Automatic fallback: on the Asterisk path, ``ProviderUnavailable`` (gateway down,
``/healthz`` failing, circuit open, HTTP 5xx/429, connection refused) places the call
on Twilio instead, counted with its reason. ``CallOutcomeUnknown`` is NOT a fallback
(the gateway may have placed the call; see ``AsteriskProvider``): it propagates.

Existing calls are routed by their id: a Twilio call SID goes to Twilio, anything else
to the gateway. Counters: ``counters.snapshot()`` (``ProviderCounters``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .asterisk_provider import AsteriskProvider
from .base import (
    Path,
    ProviderCall,
    ProviderRecording,
    ProviderUnavailable,
    TelephonyProvider,
    bucket,
    effective_percent,
    is_twilio_call_sid,
)
from .counters import ProviderCounters

__all__ = ["Decision", "GatewayRolloutState", "RolloutProvider"]

log = logging.getLogger("audiosocket_gw.provider")

Sticky = Literal["to", "tenant"]


@dataclass(frozen=True)
class Decision:
    """Where one new call went and why."""

    path: Path
    reason: str
    tenant: str
    bucket: int
    percent: int
    fallback: bool = False
    call_id: str = ""


class GatewayRolloutState:
    """The gateway's ``GET /v1/rollout`` document, cached ``ttl`` seconds."""

    def __init__(self, gateway: AsteriskProvider, *, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway, self.ttl, self.clock = gateway, ttl, clock
        self._cached: tuple[float, dict[str, Any] | None] | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any] | None:
        now = self.clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
        state = self.gateway.rollout_state()
        with self._lock:
            self._cached = (now, state)
        return state


class RolloutProvider:
    """``TelephonyProvider`` splitting new calls between Asterisk and Twilio."""

    name = "rollout"

    def __init__(self, asterisk: AsteriskProvider, twilio: TelephonyProvider, *,
                 percent: int | None = None, overrides: Mapping[str, int] | None = None,
                 sticky: Sticky = "to", state: GatewayRolloutState | None = None,
                 counters: ProviderCounters | None = None) -> None:
        for name, value in [("percent", percent), *(overrides or {}).items()]:
            if value is not None and not 0 <= value <= 100:
                raise ValueError(f"rollout percentage {name}: must be 0..100, got {value}")
        if sticky not in ("to", "tenant"):
            raise ValueError(f"sticky must be 'to' or 'tenant', got {sticky!r}")
        self.asterisk, self.twilio = asterisk, twilio
        self.percent = percent
        self.overrides = dict(overrides or {})
        self.sticky: Sticky = sticky
        self.state = state
        self.counters = counters or ProviderCounters()
        self.last_decision: Decision | None = None

    def percent_for(self, tenant_id: str, from_: str = "") -> tuple[int, str]:
        """(percentage, where it came from) for a new call of ``tenant_id``."""
        if tenant_id in self.overrides:
            return self.overrides[tenant_id], "override"
        if self.percent is not None:
            return self.percent, "fixed"
        if self.state is not None:
            doc = self.state.get()
            if doc is None:
                return 0, "rollout_state_unavailable"
            return effective_percent(doc, tenant_id, from_), "gateway"
        return 0, "default"

    def choose(self, tenant_id: str, to: str, from_: str = "") -> Decision:
        """The path a new call would take (no call placed)."""
        pct, source = self.percent_for(tenant_id, from_)
        b = bucket(to if self.sticky == "to" else tenant_id)
        if b < pct:
            return Decision("asterisk", "rollout", tenant_id, b, pct)
        reason = source if source == "rollout_state_unavailable" else "rollout_excluded"
        return Decision("twilio", reason, tenant_id, b, pct)

    def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                            metadata: Mapping[str, Any] | None = None) -> str:
        d = self.choose(tenant_id, to, from_)
        if d.path == "asterisk":
            try:
                call_id = self.asterisk.start_outbound_call(tenant_id, to, from_, metadata)
            except ProviderUnavailable as exc:
                self.counters.record_failure("asterisk", exc.reason)
                d = Decision("twilio", exc.reason, tenant_id, d.bucket, d.percent, True)
                log.warning("tenant %s: gateway unavailable (%s), call placed on Twilio",
                            tenant_id, exc.reason)
            else:
                return self._done(d, call_id)
        return self._done(d, self.twilio.start_outbound_call(tenant_id, to, from_, metadata))

    def _done(self, d: Decision, call_id: str) -> str:
        d = Decision(d.path, d.reason, d.tenant, d.bucket, d.percent, d.fallback, call_id)
        self.last_decision = d
        self.counters.record_call(d.path, d.reason, tenant=d.tenant, call_id=call_id,
                                  fallback=d.fallback)
        log.info("call %s of tenant %s via %s (%s, %d %%)", call_id, d.tenant, d.path,
                 d.reason, d.percent)
        return call_id

    def provider_of(self, call_id: str) -> TelephonyProvider:
        """The provider that owns ``call_id`` (by its shape)."""
        return self.twilio if is_twilio_call_sid(call_id) else self.asterisk

    def hangup(self, call_id: str) -> None:
        self.provider_of(call_id).hangup(call_id)

    def get_call(self, call_id: str) -> ProviderCall | None:
        return self.provider_of(call_id).get_call(call_id)

    def update_call(self, call_id: str, *, twiml: str | None = None,
                    url: str | None = None) -> None:
        self.provider_of(call_id).update_call(call_id, twiml=twiml, url=url)

    def get_recording(self, call_id: str) -> ProviderRecording | None:
        return self.provider_of(call_id).get_recording(call_id)
