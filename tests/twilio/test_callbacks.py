"""Status callbacks over real sockets: gateway + echo calls -> an aiohttp status endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from audiosocket_gw.backends.base import CallInfo
from audiosocket_gw.tenants import Agent
from audiosocket_gw.twilio.callbacks import StatusCallbacks, rfc2822, status_params
from audiosocket_gw.twilio.ids import call_sid_for
from audiosocket_gw.twilio.signature import validate_signature
from tests.backends.test_twilio_stream import Caller
from tests.helpers import running_gateway, until

TOKEN = "cb-token"


def config(tmp_path: Path, url: str, events: str) -> str:
    path = tmp_path / "tenants.toml"
    path.write_text(f"""default_agent = "bot"
[tenants.acme]
[agents.bot]
tenant = "acme"
backend = "echo"
status_callback = "{url}"
status_events = {events}
[agents.bot.extra]
auth_token_env = "ACME_TOKEN"
""")
    return str(path)


async def test_answered_and_completed_signed_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN", TOKEN)
    received: list[tuple[dict[str, str], bool]] = []
    statuses = [500]  # the first request fails, then everything succeeds

    async def status(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        sig = request.headers.get("X-Twilio-Signature", "")
        received.append((form, validate_signature(TOKEN, str(request.url), form, sig)))
        return web.Response(status=statuses.pop(0) if statuses else 204)

    app = web.Application()
    app.router.add_post("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    try:
        cfg = config(tmp_path, url, '["answered", "completed"]')
        async with running_gateway(config=cfg) as gw:
            comp = next(c for c in gw.components if isinstance(c, StatusCallbacks))
            comp.backoff_s = 0.05
            async with Caller(gw.audiosocket.address, audio=None) as caller:
                await asyncio.sleep(0.2)
            await until(lambda: comp.sent >= 2)
        assert all(ok for _, ok in received)
        forms = [f for f, _ in received]
        assert [f["CallStatus"] for f in forms] == ["in-progress", "in-progress", "completed"]
        assert [f["SequenceNumber"] for f in forms] == ["0", "0", "1"]  # retry: same request
        assert {f["CallSid"] for f in forms} == {call_sid_for(caller.call_id)}
        done = forms[-1]
        assert done["CallDuration"] in ("1", "2") and done["Direction"] == "inbound"
        assert done["ApiVersion"] == "2010-04-01" and done["AccountSid"].startswith("AC")
        assert done["Timestamp"].endswith(" +0000")
        assert comp.failed == 0
    finally:
        await runner.cleanup()


def test_status_params_and_subscription() -> None:
    info = CallInfo(call_id="c1", from_="+15550001111", to="+15550002222")
    p = status_params(info, "completed", sequence=3, account_sid="AC1", at=1730721600,
                      duration_s=12.2)
    assert p["CallStatus"] == "completed" and p["SequenceNumber"] == "3"
    assert p["CallDuration"] == "13" and p["Timestamp"] == "Mon, 04 Nov 2024 12:00:00 +0000"
    assert p["From"] == p["Caller"] == "+15550001111" and p["To"] == p["Called"] == "+15550002222"
    assert status_params(info, "answered", sequence=0, account_sid="AC1", at=0)[
        "CallStatus"] == "in-progress"
    out = CallInfo(call_id="c2", direction="outbound")
    assert status_params(out, "ringing", sequence=0, account_sid="A", at=0)[
        "Direction"] == "outbound-api"
    assert rfc2822(0) == "Thu, 01 Jan 1970 00:00:00 +0000"


async def test_notify_only_subscribed_events(tmp_path: Path) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9/status", '["completed"]')
    async with running_gateway(config=cfg) as gw:
        comp = next(c for c in gw.components if isinstance(c, StatusCallbacks))
        comp.attempts = 1
        agent = gw.tenants.agents["bot"]
        info = CallInfo(call_id="c3", tenant="acme", agent="bot", agent_cfg=agent)
        assert comp.notify(info, "ringing") is False
        assert comp.notify(info, "completed", status="no-answer") is True
        bare = CallInfo(call_id="c4", agent_cfg=Agent(name="x", tenant="acme", backend="echo"))
        assert comp.notify(bare, "completed") is False  # no status_callback URL
        await until(lambda: comp.failed >= 1)  # port 9 refuses: failed after 1 attempt


async def test_outbound_busy_gets_initiated_ringing_and_completed_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outbound calls driven by AMI: the tracker's transitions reach the app as Twilio's
    initiated / ringing / completed(busy) callbacks, though no AudioSocket ever starts."""
    from audiosocket_gw.api import CallsApi
    from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
    from tests.helpers import ami_gateway

    received: list[dict[str, str]] = []

    async def status(request: web.Request) -> web.Response:
        received.append({k: str(v) for k, v in (await request.post()).items()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    cfg = config(tmp_path, url, '["initiated", "ringing", "answered", "completed"]')
    sim = AmiSimulator(ring_s=0.05, outcomes={"+15550007777": Outcome("busy")})
    try:
        async with sim, ami_gateway(monkeypatch, sim.address, config=cfg) as gw:
            provider = gw.component(CallsApi).provider
            cid = await provider.start_outbound_call("acme", "+15550007777", "+15559990000")
            await until(lambda: any(r.get("CallStatus") == "busy" for r in received))
            # Like Twilio's, callbacks may be delivered out of order: SequenceNumber orders them.
            events = sorted((int(r["SequenceNumber"]), r["CallStatus"]) for r in received)
            assert [s for _, s in events] == ["initiated", "ringing", "busy"]
            assert [n for n, _ in events] == [0, 1, 2]
            assert all(r["CallSid"] == call_sid_for(cid) for r in received)
            assert all(r["Direction"] == "outbound-api" for r in received)
    finally:
        await runner.cleanup()
