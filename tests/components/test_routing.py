"""RoutingComponent alone: POST /v1/route on a real loopback port, expiry of unclaimed calls."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.routing import RoutingComponent
from tests.components.context import Harness, make_context, open_call

TOML = """
default_agent = "support"

[tenants.acme]
max_concurrent_calls = 2

[agents.support]
tenant = "acme"
backend = "echo"
record = true
recording_source = "mixmonitor"

[numbers."+15551230000"]
agent = "support"
"""

CALL = {"did": "+1 (555) 123-0000", "caller": "+15557654321", "uniqueid": "1760000000.7",
        "channel": "PJSIP/trunk-00000007"}


class Served:
    def __init__(self, h: Harness, comp: RoutingComponent, url: str,
                 session: aiohttp.ClientSession) -> None:
        self.h, self.comp, self.url, self.session = h, comp, url, session

    async def route(self, body: dict[str, str]) -> tuple[int, dict[str, str]]:
        async with self.session.post(self.url + "/v1/route", json=body) as r:
            data = await r.json()
            return r.status, data.get("variables", data)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with make_context(tmp_path, TOML) as h:
        comp = RoutingComponent(h.ctx)
        await comp.start()
        app = web.Application()
        app.router.add_routes(comp.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session:
                yield Served(h, comp, f"http://{host}:{port}", session)
        finally:
            await runner.cleanup()
            await comp.stop()


async def test_known_did_is_admitted(served: Served) -> None:
    h = served.h
    status, v = await served.route(CALL)
    assert status == 200
    cid = v["AIGW_CALL_ID"]
    assert str(uuid.UUID(cid)) == cid
    assert v == {
        "AIGW_STATUS": "ok", "AIGW_CALL_ID": cid, "AIGW_AUDIOSOCKET": "127.0.0.1:9092",
        "AIGW_AUDIOSOCKET_ALT": "", "AIGW_TENANT": "acme", "AIGW_AGENT": "support",
        "AIGW_RECORD": "1",
        "AIGW_RECORDING_FILE": f"/var/spool/asterisk/monitor/acme/{cid}.wav",
        "AIGW_FALLBACK": "",
    }
    rec = await h.store.get_call(cid)
    assert rec is not None
    assert (rec.status, rec.direction, rec.from_, rec.to, rec.created_at) == (
        CallStatus.RINGING, "inbound", "+15557654321", "+15551230000", h.clock.wall())
    assert h.ctx.registry.is_registered(cid)
    assert await h.store.active_slots("acme") == 1
    assert cid in served.comp.pending


async def test_tenant_at_its_limit_is_busy_and_unknown_did_is_unknown(served: Served) -> None:
    h = served.h
    for _ in range(2):
        _, ok = await served.route(CALL)
        assert ok["AIGW_STATUS"] == "ok"
    _, busy = await served.route(CALL)
    assert (busy["AIGW_STATUS"], busy["AIGW_TENANT"], busy["AIGW_CALL_ID"]) == (
        "busy", "acme", "")
    assert await h.store.active_slots("acme") == 2
    assert len(await h.store.list_calls()) == 2
    assert h.call_metrics.limiter_rejections.labels("acme", "inbound")._value.get() == 1

    _, unknown = await served.route({**CALL, "did": "+15550000000"})
    assert unknown["AIGW_STATUS"] == "unknown"
    assert unknown["AIGW_CALL_ID"] == unknown["AIGW_TENANT"] == ""
    assert len(await h.store.list_calls()) == 2


async def test_bad_body_is_400(served: Served) -> None:
    async with served.session.post(served.url + "/v1/route", data=b"[1]") as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "bad_request"


async def test_unclaimed_call_is_closed_after_the_registry_ttl(served: Served) -> None:
    h, comp = served.h, served.comp
    _, v = await served.route(CALL)
    lost = v["AIGW_CALL_ID"]
    _, v = await served.route(CALL)
    arrived = v["AIGW_CALL_ID"]
    call = await open_call(h, arrived)  # its AudioSocket came: events.started
    assert arrived not in comp.pending
    call.end("caller-hangup", outcome="completed", send_hangup=False)

    h.clock.advance(h.ctx.registry.ttl - 1)
    assert await comp.sweep() == 0  # not yet
    assert (await h.store.get_call(lost)).status is CallStatus.RINGING  # type: ignore[union-attr]

    h.clock.advance(2)
    assert await comp.sweep() == 1
    rec = await h.store.get_call(lost)
    assert rec is not None
    assert rec.status is CallStatus.FAILED
    assert rec.hangup_reason == "audiosocket-never-connected"
    assert not h.ctx.registry.is_registered(lost)
    assert lost not in comp.pending
    # The call that connected kept its record and its slot (its end is the tracker's).
    other = await h.store.get_call(arrived)
    assert other is not None and other.status is CallStatus.RINGING
    assert await h.store.active_slots("acme") == 1
    assert await comp.sweep() == 0
