"""StatusCallbacks alone: status changes and real Calls -> signed form POSTs to a real
aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from audiosocket_gw.callstate import CallInput
from audiosocket_gw.twilio.callbacks import StatusCallbacks, rfc2822
from audiosocket_gw.twilio.ids import account_sid_for, call_sid_for
from audiosocket_gw.twilio.signature import SIGNATURE_HEADER, validate_signature
from tests.components.context import Harness, make_context, open_call

TOKEN = "s3cr3t-auth-token"


def toml(url: str) -> str:
    return f"""
default_agent = "dialer"

[tenants.acme]
max_concurrent_calls = 5

[agents.dialer]
tenant = "acme"
backend = "echo"
status_callback = "{url}"
status_events = ["initiated", "ringing", "answered", "completed"]

[agents.silent]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "dialer"
"""


@dataclass
class Receiver:
    url: str
    got: list[tuple[str, dict[str, str], str | None]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.got.append((str(request.url), form, request.headers.get(SIGNATURE_HEADER)))
        self.arrived.set()
        return web.Response(text="")

    async def wait_for(self, n: int) -> list[tuple[str, dict[str, str], str | None]]:
        async with asyncio.timeout(5.0):
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.01)  # and nothing more
        return sorted(self.got, key=lambda g: int(g[1]["SequenceNumber"]))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    rec = Receiver("")
    app.router.add_post("/status", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/status?app=1"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def signed(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Harness]:
    async with make_context(tmp_path, toml(receiver.url),
                            {"AIGW_TWILIO_AUTH_TOKEN": TOKEN}) as h:
        yield h


async def test_outbound_busy_call_gets_initiated_ringing_busy(
        signed: Harness, receiver: Receiver) -> None:
    h = signed
    comp = StatusCallbacks(h.ctx)
    await comp.start()
    try:
        adm = h.ctx.admission
        tenant, agent = adm.resolve_outbound("acme", "dialer")
        cid = (await adm.admit(tenant, agent, direction="outbound", from_="+15551230000",
                               to="+15557654321")).call_id
        await h.ctx.status.apply(cid, CallInput.ORIGINATE_QUEUED, {"source": "api"})
        h.clock.advance(1)
        await h.ctx.status.apply(cid, CallInput.RINGING)
        h.clock.advance(7)
        after = await h.ctx.status.apply(cid, CallInput.HANGUP, {"cause": 17})
        assert after is not None and after.status.value == "busy"
        got = await receiver.wait_for(3)
    finally:
        await comp.stop()
    assert len(got) == 3
    assert [g[1]["CallStatus"] for g in got] == ["initiated", "ringing", "busy"]
    assert [g[1]["SequenceNumber"] for g in got] == ["0", "1", "2"]
    start = h.clock.wall() - 8
    assert [g[1]["Timestamp"] for g in got] == [rfc2822(start), rfc2822(start + 1),
                                                rfc2822(start + 8)]
    account = account_sid_for("acme", tenant=tenant, agent=agent, env=h.ctx.settings.environ)
    for url, form, signature in got:
        assert url == receiver.url
        assert form["CallSid"] == call_sid_for(cid)
        assert form["AccountSid"] == account
        assert (form["From"], form["To"], form["Direction"]) == (
            "+15551230000", "+15557654321", "outbound-api")
        assert signature is not None and validate_signature(TOKEN, url, form, signature)
        assert not validate_signature("another-token", url, form, signature)
    assert got[2][1]["CallDuration"] == "0"
    assert comp.sent == 3 and comp.failed == comp.dropped == 0
    assert h.ctx.metrics.registry.get_sample_value(
        "aigw_status_callbacks_total", {"result": "sent"}) == 3


async def test_answered_call_gets_in_progress_then_completed_with_duration(
        tmp_path: Path, receiver: Receiver) -> None:
    async with make_context(tmp_path, toml(receiver.url)) as h:  # no token: unsigned
        comp = StatusCallbacks(h.ctx)
        await comp.start()
        try:
            found = h.ctx.admission.resolve_did("+15551230000")
            assert found is not None
            cid = (await h.ctx.admission.admit(*found, direction="inbound",
                                               from_="+15557654321",
                                               to="+15551230000")).call_id
            call = await open_call(h, cid)
            h.clock.advance(12.3)
            call.end("caller-hangup", outcome="completed", send_hangup=False)
            got = await receiver.wait_for(2)
        finally:
            await comp.stop()
    # Inbound: no "initiated"; the AudioSocket lifecycle gives answered and completed.
    assert [g[1]["CallStatus"] for g in got] == ["in-progress", "completed"]
    assert got[1][1]["CallDuration"] == "13"
    assert {g[1]["CallSid"] for g in got} == {call_sid_for(cid)}
    assert got[0][1]["Direction"] == "inbound"
    assert all(sig is None for _, _, sig in got)


async def test_agent_without_callback_sends_nothing(
        signed: Harness, receiver: Receiver) -> None:
    h = signed
    comp = StatusCallbacks(h.ctx)
    await comp.start()
    try:
        adm = h.ctx.admission
        tenant, agent = adm.resolve_outbound("acme", "silent")
        cid = (await adm.admit(tenant, agent, direction="outbound", from_="+15551230000",
                               to="+15557654321")).call_id
        await h.ctx.status.apply(cid, CallInput.ORIGINATE_QUEUED)
        await h.ctx.status.apply(cid, CallInput.HANGUP, {"cause": 17})
    finally:
        await comp.stop()
    assert receiver.got == [] and comp.sent == 0
