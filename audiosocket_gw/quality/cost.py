"""Call time and an estimated cost per minute, by tenant, from configured rates.

What: a gateway component that, when a call's AudioSocket closes, adds its duration
to ``aigw_call_seconds_total{tenant}`` and its estimated cost to
``aigw_call_cost_dollars_total{tenant}``, and exposes the configured rates as
``aigw_cost_per_minute_dollars{component="trunk"|"ai"}``. The cost per minute of the
traffic actually carried is then a PromQL ratio (the dashboards' and alerts' form)::

    sum(increase(aigw_call_cost_dollars_total[1h]))
      / (sum(increase(aigw_call_seconds_total[1h])) / 60)

Seconds, not minutes: the scheme (and ``promtool check metrics``) wants base units;
dashboards divide by 60.

Rates (US dollars per minute) come from ``AIGW_COST_TRUNK_PER_MIN`` (SIP trunk) and
``AIGW_COST_AI_PER_MIN`` (the AI backend); unset means 0 (unknown). The trunk rate
applies to every call, the AI rate to calls on a backend other than ``echo`` (a line
check costs no AI). Duration is the AudioSocket time, exact (no per-minute rounding):
the time both the trunk and the backend are engaged. An estimate, not an invoice.

Why counters and not a per-call gauge: the ratio of two counters stays correct across
restarts and aggregates across gateways and tenants.

Errors: a rate that is not a non-negative finite number raises ``ConfigError`` at
construction (the gateway fails at start, naming the variable).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge

from ..config import ConfigError

if TYPE_CHECKING:
    from ..app import Gateway
    from ..call import Call

__all__ = ["AI_RATE_ENV", "FREE_BACKENDS", "TRUNK_RATE_ENV", "CostMeter", "parse_rate"]

TRUNK_RATE_ENV: Final = "AIGW_COST_TRUNK_PER_MIN"
AI_RATE_ENV: Final = "AIGW_COST_AI_PER_MIN"
FREE_BACKENDS: Final = frozenset({"echo"})
"""Backends that cost no AI minutes."""


def parse_rate(env: Mapping[str, str], name: str) -> float:
    """A dollars-per-minute rate from ``env[name]``; 0.0 when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected dollars per minute, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a non-negative number, got {raw!r}")
    return value


class CostMeter:
    """Gateway component: call seconds and estimated cost by tenant."""

    def __init__(self, gateway: Gateway, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.trunk_per_min = parse_rate(env, TRUNK_RATE_ENV)
        self.ai_per_min = parse_rate(env, AI_RATE_ENV)
        r = gateway.metrics.registry
        self.seconds = Counter(
            "aigw_call_seconds",
            "Seconds of AudioSocket audio carried by finished calls, by tenant.",
            ["tenant"], registry=r,
        )
        self.cost = Counter(
            "aigw_call_cost_dollars",
            "Estimated cost of finished calls (trunk + AI rates), US dollars, by tenant.",
            ["tenant"], registry=r,
        )
        self.rate = Gauge(
            "aigw_cost_per_minute_dollars",
            "Configured cost per minute, US dollars, by component (trunk, ai).",
            ["component"], registry=r,
        )
        self.rate.labels("trunk").set(self.trunk_per_min)
        self.rate.labels("ai").set(self.ai_per_min)
        for tenant in gateway.tenants.tenants:
            self.seconds.labels(tenant)
            self.cost.labels(tenant)
        gateway.audiosocket.on_call_end.append(self.call_ended)

    def call_cost(self, minutes: float, backend: str) -> float:
        """Estimated dollars for ``minutes`` on ``backend``."""
        rate = self.trunk_per_min + (0.0 if backend in FREE_BACKENDS else self.ai_per_min)
        return minutes * rate

    def call_ended(self, call: Call) -> None:
        seconds = max(0.0, time.monotonic() - call.started_at)
        tenant = call.info.tenant
        self.seconds.labels(tenant).inc(seconds)
        self.cost.labels(tenant).inc(self.call_cost(seconds / 60.0, call.backend_name))

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""
