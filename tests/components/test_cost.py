"""CostMeter alone: real Calls ending add seconds and cost to their tenant's counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiosocket_gw.quality.cost import CostMeter
from tests.components.context import Harness, make_context, open_call

TOML = """
default_agent = "bot"

[tenants.acme]
[tenants.globex]

[agents.bot]
tenant = "acme"
backend = "echo"

[agents.g]
tenant = "globex"
backend = "openai"
"""

ENV = {"AIGW_COST_TRUNK_PER_MIN": "0.012", "AIGW_COST_AI_PER_MIN": "0.06"}


def value(h: Harness, name: str, **labels: str) -> float | None:
    return h.ctx.metrics.registry.get_sample_value(name, labels)


async def call_for(h: Harness, agent: str, backend: str, seconds: float) -> float:
    """Admit, connect and end a call of ``seconds``; the duration the meter saw."""
    adm = h.ctx.admission
    tenant_id = h.agent(agent).tenant
    tenant, cfg = adm.resolve_outbound(tenant_id, agent)
    admitted = await adm.admit(tenant, cfg, direction="inbound", from_="+15557654321",
                               to="+15551230000")
    call = await open_call(h, admitted.call_id, backend_name=backend)
    h.clock.advance(seconds)
    call.end("caller-hangup", outcome="completed", send_hangup=False)
    return h.clock.monotonic() - call.started_at


async def test_ended_calls_add_seconds_and_cost_by_tenant(tmp_path: Path) -> None:
    async with make_context(tmp_path, TOML, ENV) as h:
        meter = CostMeter(h.ctx, h.ctx.settings.cost)
        # Every tenant's series exists from the start; the rates are exposed.
        for tenant in ("acme", "globex"):
            assert value(h, "aigw_call_seconds_total", tenant=tenant) == 0
            assert value(h, "aigw_call_cost_dollars_total", tenant=tenant) == 0
        assert value(h, "aigw_cost_per_minute_dollars", component="trunk") == 0.012
        assert value(h, "aigw_cost_per_minute_dollars", component="ai") == 0.06

        # Not subscribed before start(): a call ending now is not counted.
        await call_for(h, "bot", "echo", 10)
        assert value(h, "aigw_call_seconds_total", tenant="acme") == 0

        await meter.start()
        ai = await call_for(h, "g", "openai", 90)
        assert ai == 90  # the call is on the context's clock
        assert value(h, "aigw_call_seconds_total", tenant="globex") == pytest.approx(ai)
        assert value(h, "aigw_call_cost_dollars_total", tenant="globex") == pytest.approx(
            ai / 60 * (0.012 + 0.06))

        echo = await call_for(h, "bot", "echo", 30)  # a line check: no AI minutes
        assert value(h, "aigw_call_seconds_total", tenant="acme") == pytest.approx(echo)
        assert value(h, "aigw_call_cost_dollars_total", tenant="acme") == pytest.approx(
            echo / 60 * 0.012)
        assert value(h, "aigw_call_seconds_total", tenant="globex") == pytest.approx(ai)

        await meter.stop()
        await call_for(h, "bot", "echo", 30)
        assert value(h, "aigw_call_seconds_total", tenant="acme") == pytest.approx(echo)


async def test_no_rates_count_time_at_no_cost(tmp_path: Path) -> None:
    async with make_context(tmp_path, TOML) as h:
        meter = CostMeter(h.ctx, h.ctx.settings.cost)
        await meter.start()
        seconds = await call_for(h, "g", "openai", 60)
        assert value(h, "aigw_call_seconds_total", tenant="globex") == pytest.approx(seconds)
        assert value(h, "aigw_call_cost_dollars_total", tenant="globex") == 0
        await meter.stop()
