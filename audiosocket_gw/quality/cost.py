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

Errors: a rate that is not a non-negative finite number is refused by
``settings.CostSettings`` (the gateway fails at start, naming the variable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client import Counter, Gauge

from ..settings import CostSettings

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext

__all__ = ["FREE_BACKENDS", "CostMeter"]

FREE_BACKENDS: Final = frozenset({"echo"})
"""Backends that cost no AI minutes."""


class CostMeter:
    """Gateway component: call seconds and estimated cost by tenant."""

    def __init__(self, ctx: GatewayContext, settings: CostSettings) -> None:
        self.ctx = ctx
        self.trunk_per_min = settings.trunk_per_min
        self.ai_per_min = settings.ai_per_min
        self._unsubscribe: Callable[[], None] | None = None
        r = ctx.metrics.registry
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
        for tenant in ctx.tenants.tenants:
            self.seconds.labels(tenant)
            self.cost.labels(tenant)

    def call_cost(self, minutes: float, backend: str) -> float:
        """Estimated dollars for ``minutes`` on ``backend``."""
        rate = self.trunk_per_min + (0.0 if backend in FREE_BACKENDS else self.ai_per_min)
        return minutes * rate

    def call_ended(self, call: Call) -> None:
        seconds = max(0.0, self.ctx.clock.monotonic() - call.started_at)
        tenant = call.info.tenant
        self.seconds.labels(tenant).inc(seconds)
        self.cost.labels(tenant).inc(self.call_cost(seconds / 60.0, call.backend_name))

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        self._unsubscribe = self.ctx.events.ended.connect(self.call_ended)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
