"""``RolloutProvider``: a sticky share of new calls to the gateway, the rest to Twilio,
and Twilio whenever the gateway cannot take a call. Real gateway (AMI simulator), the
official Twilio SDK against a local Twilio REST server."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

pytest.importorskip("twilio")

from audiosocket_gw.provider import (  # noqa: E402
    AsteriskProvider,
    AsyncProvider,
    GatewayRolloutState,
    ProviderCounters,
    RolloutProvider,
    TwilioProvider,
    bucket,
    is_twilio_call_sid,
)

from .stack import base_url, gateway, originates  # noqa: E402
from .twilio_rest import twilio_rest_server  # noqa: E402


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"+1444{i:07d}" for i in range(start, start + n)]


async def place_all(p: AsyncProvider, tos: list[str], tenant: str = "acme", *,
                    parallel: int = 8) -> list[str]:
    sem = asyncio.Semaphore(parallel)

    async def one(to: str) -> str:
        async with sem:
            return await p.start_outbound_call(tenant, to, "+15551230000",
                                               {"url": "https://app.example.com/voice"})

    return list(await asyncio.gather(*(one(t) for t in tos)))


async def test_a_quarter_of_1000_calls_go_to_asterisk_sticky_per_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch) as (gw, sim), twilio_rest_server() as api:
        assert sim is not None
        async with aiohttp.ClientSession() as s:  # the gateway's rollout drives the app
            async with s.put(base_url(gw) + "/v1/rollout", json={"percent": 25}) as r:
                assert r.status == 200
        counters = ProviderCounters()
        gateway_client = AsteriskProvider(base_url(gw))
        rollout = RolloutProvider(
            gateway_client,
            TwilioProvider(api.account_sid, api.auth_token, api_base_url=api.base_url),
            state=GatewayRolloutState(gateway_client, ttl=0), counters=counters)
        p = AsyncProvider(rollout)
        tos = numbers(1000)
        ids = await place_all(p, tos)
        on_asterisk = [i for i in ids if not is_twilio_call_sid(i)]
        share = len(on_asterisk) / len(ids)
        assert 0.22 <= share <= 0.28, share
        assert sorted(originates(sim)) == sorted(on_asterisk)  # each placed once, there
        assert len(api.calls) == 1000 - len(on_asterisk) == len(set(api.calls))
        assert {c["to"] for c in api.calls.values()} == \
            {t for t, i in zip(tos, ids, strict=True) if is_twilio_call_sid(i)}
        snap = counters.snapshot()
        assert snap["calls"] == {"asterisk": len(on_asterisk),
                                 "twilio": 1000 - len(on_asterisk)}
        assert snap["fallbacks"] == {}
        assert snap["calls_by_reason"]["twilio/rollout_excluded"] == 1000 - len(on_asterisk)
        # sticky: the same destination takes the same path every time
        for to in [tos[0], tos[1], tos[2], *[t for t in tos if bucket(t) < 25][:2]]:
            again = await place_all(p, [to] * 5)
            expected = not is_twilio_call_sid(ids[tos.index(to)])
            assert [not is_twilio_call_sid(i) for i in again] == [expected] * 5
        # existing calls are routed by their id
        call = await p.get_call(on_asterisk[0])
        assert call is not None and call.provider == "asterisk"
        twilio_id = next(i for i in ids if is_twilio_call_sid(i))
        call = await p.get_call(twilio_id)
        assert call is not None and call.provider == "twilio"
        # rollback on the gateway: the next calls take the Twilio path
        async with aiohttp.ClientSession() as s:
            async with s.put(base_url(gw) + "/v1/rollout", json={"action": "rollback"}) as r:
                assert r.status == 200
        before = len(originates(sim))
        ids = await place_all(p, [t for t in tos if bucket(t) < 25][:20])
        assert all(is_twilio_call_sid(i) for i in ids) and len(originates(sim)) == before


async def test_with_the_gateway_stopped_every_call_goes_to_twilio_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with twilio_rest_server() as api:
        async with gateway(monkeypatch) as (gw, sim):
            url = base_url(gw)
            assert sim is not None
        counters = ProviderCounters()
        rollout = RolloutProvider(
            AsteriskProvider(url, timeout=0.5),
            TwilioProvider(api.account_sid, api.auth_token, api_base_url=api.base_url),
            percent=100, counters=counters)
        tos = numbers(200, start=5000)
        ids = await place_all(AsyncProvider(rollout), tos)
        assert all(is_twilio_call_sid(i) for i in ids)
        assert Counter(c["to"] for c in api.calls.values()) == Counter(tos)  # none twice
        snap = counters.snapshot()
        assert snap["calls"] == {"twilio": 200}
        assert snap["fallbacks"] == {"unhealthy": 200}
        assert all(r["fallback"] and r["reason"] == "unhealthy" for r in snap["recent"])
        assert rollout.last_decision is not None and rollout.last_decision.fallback
        assert originates(sim) == []


async def test_a_gateway_refusing_calls_falls_back_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch, ami=False) as (gw, _), twilio_rest_server() as api:
        counters = ProviderCounters()
        rollout = RolloutProvider(
            AsteriskProvider(base_url(gw), breaker_threshold=3),
            TwilioProvider(api.account_sid, api.auth_token, api_base_url=api.base_url),
            percent=100, overrides={"beta": 0}, counters=counters)
        ids = await place_all(AsyncProvider(rollout), numbers(5, start=9000), parallel=1)
        assert all(is_twilio_call_sid(i) for i in ids) and len(api.calls) == 5
        assert counters.snapshot()["fallbacks"] == {"http_503": 3, "circuit_open": 2}
        assert rollout.choose("beta", "+14440009000").reason == "rollout_excluded"
