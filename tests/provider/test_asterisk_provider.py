"""``AsteriskProvider`` (the app's client of /v1/calls) against a running gateway."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from audiosocket_gw.provider import (
    AsteriskProvider,
    AsyncProvider,
    CallOutcomeUnknown,
    ProviderUnavailable,
    RequestRejected,
)
from tests.helpers import MS

from .stack import HoldingProxy, base_url, gateway, originates


async def test_calls_through_the_gateway_api(monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch, api_token="s3cret-token-for-tests") as (gw, sim):
        assert sim is not None
        p = AsyncProvider(AsteriskProvider(base_url(gw), "s3cret-token-for-tests"))
        cid = await p.start_outbound_call("acme", "+15550001111", "+15551230000",
                                          {"agent": "bot", "timeout": 20, "crm_id": "42"})
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.metadata == {"crm_id": "42"} and rec.agent == "bot"
        assert originates(sim) == [cid]
        call = await p.get_call(cid)
        assert call is not None and call.provider == "asterisk" and call.to == "+15550001111"
        await p.hangup(cid)
        assert await p.get_call("no-such-call") is None
        assert await p.get_recording(cid) is None
        with pytest.raises(RequestRejected) as ended:  # not in progress any more
            await p.update_call(cid, twiml="<Response/>")
        assert ended.value.status == 409
        with pytest.raises(RequestRejected) as missing:
            await p.update_call("no-such-call", url="https://app.example.com/next")
        assert missing.value.status == 404
        with pytest.raises(RequestRejected) as bad:
            await p.start_outbound_call("acme", "not-a-number", "+15551230000")
        assert bad.value.status == 400
        with pytest.raises(RequestRejected) as unknown:
            await p.start_outbound_call("nobody", "+15550001111", "+15551230000")
        assert unknown.value.status == 404
        wrong = AsyncProvider(AsteriskProvider(base_url(gw), "wrong"))
        with pytest.raises(RequestRejected) as denied:
            await wrong.start_outbound_call("acme", "+15550001111", "+15551230000")
        assert denied.value.status == 401
        assert len(originates(sim)) == 1


async def test_the_same_idempotency_key_never_places_a_second_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch) as (gw, sim):
        assert sim is not None
        url = base_url(gw) + "/v1/calls"
        body = {"tenant": "acme", "to": "+15550002222", "from": "+15551230000"}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=body, headers={"Idempotency-Key": "k-1"}) as r:
                assert r.status == 201 and "Idempotent-Replayed" not in r.headers
                first = (await r.json())["id"]
            async with s.post(url, json=body, headers={"Idempotency-Key": "k-1"}) as r:
                assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
                assert (await r.json())["id"] == first
            async with s.post(url, json=body, headers={"Idempotency-Key": "k-2"}) as r:
                assert r.status == 201 and (await r.json())["id"] != first
            async with s.post(url, json=body, headers={"Idempotency-Key": "bad key"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
            # a refused create releases its key: the retry may place the call
            async with s.post(url, json={**body, "to": "x"},
                              headers={"Idempotency-Key": "k-3"}) as r:
                assert r.status == 400
            async with s.post(url, json=body, headers={"Idempotency-Key": "k-3"}) as r:
                assert r.status == 201
        assert len(originates(sim)) == 3


async def test_a_timeout_after_placing_is_retried_with_the_same_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch) as (gw, sim), \
            HoldingProxy(base_url(gw), hold_s=1500 * MS) as proxy:
        assert sim is not None
        p = AsteriskProvider(proxy.url, timeout=300 * MS, retry_backoff=10 * MS)
        cid = await asyncio.to_thread(p.start_outbound_call, "acme", "+15550003333",
                                      "+15551230000")
        keys = {k for k, _, _ in proxy.creates}
        assert len(proxy.creates) == 2 and len(keys) == 1 and None not in keys
        assert [json.loads(d)["id"] for _, _, d in proxy.creates] == [cid, cid]
        assert originates(sim) == [cid]
        assert len(await gw.store.list_calls(tenant="acme")) == 1


async def test_an_unsettled_timeout_is_never_a_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch) as (gw, sim), \
            HoldingProxy(base_url(gw), hold_s=1500 * MS) as proxy:
        assert sim is not None
        p = AsteriskProvider(proxy.url, timeout=300 * MS, retries=0)
        with pytest.raises(CallOutcomeUnknown):
            await asyncio.to_thread(p.start_outbound_call, "acme", "+15550004444",
                                    "+15551230000")
        assert len(originates(sim)) == 1  # placed once; the app must not place it again


async def test_gateway_errors_are_unavailable_and_open_the_breaker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(monkeypatch, ami=False) as (gw, _):
        p = AsteriskProvider(base_url(gw), breaker_threshold=3, breaker_cooldown=60)
        reasons = []
        for _ in range(4):
            with pytest.raises(ProviderUnavailable) as exc:
                await asyncio.to_thread(p.start_outbound_call, "acme", "+15550005555",
                                        "+15551230000")
            reasons.append(exc.value.reason)
        assert reasons == ["http_503", "http_503", "http_503", "circuit_open"]
        assert await gw.store.list_calls() == []
        port = gw.http_address[1]
        cached = AsteriskProvider(base_url(gw), health_ttl=60)
        assert await asyncio.to_thread(cached.healthy)  # cached while the gateway goes away
    stopped = AsteriskProvider(f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderUnavailable) as down:
        await asyncio.to_thread(stopped.start_outbound_call, "acme", "+15550005555", "+1555")
    assert down.value.reason == "unhealthy"
    with pytest.raises(ProviderUnavailable) as refused:
        await asyncio.to_thread(cached.start_outbound_call, "acme", "+15550005555", "+1555")
    assert refused.value.reason == "connection_refused"
