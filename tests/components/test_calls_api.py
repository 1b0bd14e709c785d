"""CallsApi over AsteriskProvider alone (no AMI client), served on a real loopback port
with the gateway's own middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.httpapi import auth_middleware, error_middleware
from audiosocket_gw.telephony import AsteriskProvider
from tests.components.context import Harness, make_context

CALL = {"to": "+15557654321", "from": "+15551230000", "tenant": "acme"}


@dataclass
class Api:
    h: Harness
    base: str
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, *, json: Any = None,
                      data: bytes | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self.session.request(method, self.base + path, json=json, data=data,
                                        headers=headers) as r:
            return r.status, await r.json(), r


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with make_context(tmp_path) as h:
        tracker = CallTracker(h.ctx, None, h.call_metrics)
        provider = AsteriskProvider(h.ctx, None, tracker, h.call_metrics,
                                    h.ctx.settings.outbound)
        comp = CallsApi(h.ctx, provider)
        await comp.start()
        app = web.Application(middlewares=[error_middleware, auth_middleware(None)])
        app.router.add_routes(comp.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session:
                yield Api(h, f"http://{host}:{port}", session)
        finally:
            await runner.cleanup()
            await comp.stop()


def is_error(body: Any, code: str) -> bool:
    """The one error shape: exactly ``{"error": {"code", "message"}}``."""
    return (isinstance(body, dict) and set(body) == {"error"}
            and set(body["error"]) == {"code", "message"} and body["error"]["code"] == code
            and isinstance(body["error"]["message"], str) and body["error"]["message"] != "")


async def test_create_with_ami_down_is_503_and_admits_nothing(api: Api) -> None:
    status, body, r = await api.request("POST", "/v1/calls", json=CALL)
    assert status == 503
    assert is_error(body, "unavailable")
    assert r.headers["Retry-After"] == "2"
    assert await api.h.store.list_calls() == []
    assert await api.h.store.active_slots("acme") == 0


async def test_wrong_requests_are_named_before_the_pbx_is_asked(api: Api) -> None:
    status, body, _ = await api.request("POST", "/v1/calls", json={**CALL, "tenant": "nope"})
    assert (status, is_error(body, "unknown")) == (404, True)
    status, body, _ = await api.request("POST", "/v1/calls", json={**CALL, "to": "12"})
    assert (status, is_error(body, "invalid_number")) == (400, True)
    status, body, _ = await api.request("POST", "/v1/calls", json={**CALL, "to": 5})
    assert (status, is_error(body, "bad_request")) == (400, True)


@pytest.mark.parametrize("raw", [
    b'{"to": "+15557654321", "tenant": "acme", "metadata": {"x": NaN}}',
    b'{"to": "+15557654321", "tenant": "acme", "metadata": {"x": -Infinity}}',
    b'{"to": "+15557654321", "tenant": "acme", "metadata": {"x": 1e400}}',
    b'{"to": "+15557654321", "tenant": "acme", "metadata": ' + b"[" * 20 + b"]" * 20 + b"}",
    b'{"to": "+15557654321", "tenant": "acme", "metadata": ' + b"[" * 9000 + b"]" * 9000
    + b"}",
    b'{"to": "+15557654321", "tenant": ',
    b"[]",
], ids=["nan", "infinity", "overflow", "deep", "very-deep", "truncated", "array"])
async def test_bad_json_is_400_never_500(api: Api, raw: bytes) -> None:
    status, body, _ = await api.request("POST", "/v1/calls", data=raw)
    assert status == 400
    assert is_error(body, "bad_json")


async def test_get_an_admitted_call_and_an_unknown_one(api: Api) -> None:
    h = api.h
    adm = h.ctx.admission
    tenant, agent = adm.resolve_outbound("acme", None)
    cid = (await adm.admit(tenant, agent, direction="outbound", from_="+15551230000",
                           to="+15557654321", metadata={"crm": "42"})).call_id
    status, body, _ = await api.request("GET", f"/v1/calls/{cid}")
    assert status == 200
    assert {k: body[k] for k in ("id", "tenant", "agent", "direction", "from", "to",
                                 "status", "created_at", "metadata")} == {
        "id": cid, "tenant": "acme", "agent": "bot", "direction": "outbound",
        "from": "+15551230000", "to": "+15557654321", "status": "queued",
        "created_at": h.clock.wall(), "metadata": {"crm": "42"}}
    status, listed, _ = await api.request("GET", "/v1/calls?status=queued&tenant=acme")
    assert [c["id"] for c in listed["calls"]] == [cid]

    status, body, _ = await api.request("GET", "/v1/calls/0b8e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b")
    assert (status, is_error(body, "not_found")) == (404, True)
    status, body, _ = await api.request("GET", "/v1/calls?status=bogus")
    assert (status, is_error(body, "bad_request")) == (400, True)


async def test_hangup_of_a_queued_call_cancels_it_and_frees_its_slot(api: Api) -> None:
    h = api.h
    adm = h.ctx.admission
    tenant, agent = adm.resolve_outbound("acme", None)
    cid = (await adm.admit(tenant, agent, direction="outbound", from_="+15551230000",
                           to="+15557654321")).call_id
    assert await h.store.active_slots("acme") == 1
    status, body, _ = await api.request("POST", f"/v1/calls/{cid}/hangup")
    assert status == 200
    assert (body["status"], body["hangup_reason"]) == ("canceled", "api-hangup")
    assert await h.store.active_slots("acme") == 0
    assert not h.ctx.registry.is_registered(cid)
    rec = await h.store.get_call(cid)
    assert rec is not None and rec.status is CallStatus.CANCELED
    status, body, _ = await api.request(
        "POST", "/v1/calls/0b8e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b/hangup")
    assert (status, is_error(body, "not_found")) == (404, True)
