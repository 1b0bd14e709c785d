"""A real gateway for the console tests: routing (POST /v1/route), a bearer token, gateway
recordings, and an echo backend that also speaks transcript lines; calls are placed by
the PBX simulator over real AudioSocket TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from audiosocket_gw.backends.base import BackendSession, CallControl, CallInfo
from audiosocket_gw.backends.echo import EchoBackend
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.testing.simulator.audio import speech_like
from audiosocket_gw.testing.simulator.pbx import CallPlan, SimulationReport, run_simulation
from tests.helpers import MS, make_config

TOKEN = "console-test-token-0123456789"
BOT_LINE = "Hello from the console test, how can I help?"
CALLER_LINE = "A table for two at eight, please."
CALLER = "+15557654321"
DID = "+15551230000"

TENANTS = f"""
default_agent = "support"
[tenants.acme]
[agents.support]
tenant = "acme"
backend = "echo"
record = true
recording_source = "gateway"
[numbers."{DID}"]
agent = "support"
"""


class TalkingEcho(EchoBackend):
    """The echo backend, plus one line each way in the call's transcript."""

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        control.transcript("bot", BOT_LINE)
        control.transcript("caller", CALLER_LINE)
        return super().create(call, control)


@asynccontextmanager
async def console_gateway(tmp_path: Path, **overrides: Any) -> AsyncIterator[Gateway]:
    toml = tmp_path / "tenants.toml"
    toml.write_text(TENANTS)
    kw: dict[str, Any] = dict(config=str(toml), allow_unregistered=False, api_token=TOKEN,
                              data_dir=str(tmp_path / "data"))
    kw.update(overrides)
    gw = Gateway(make_config(**kw), backend=TalkingEcho(delay_ms=0))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown(grace=0)


def base_url(gw: Gateway) -> str:
    return "http://{}:{}".format(*gw.http_address)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def route_call(gw: Gateway) -> str:
    """Asterisk's AGI step: the gateway admits the call and names its id."""
    body = {"did": DID, "caller": CALLER, "uniqueid": f"{time.time():.1f}",
            "channel": "PJSIP/trunk-00000001"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url(gw)}/v1/route", json=body, headers=auth()) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["variables"]["AIGW_CALL_ID"])


async def simulate(gw: Gateway, call_id: str, seconds: float) -> SimulationReport:
    """The PBX simulator's channel enters AudioSocket() for ``seconds`` and hangs up."""
    host, port = gw.audiosocket.address
    plan = CallPlan(seconds=seconds, audio=speech_like(seconds + 1.0), call_id=call_id)
    return await run_simulation(host, port, plans=[plan])


async def wait_recording(gw: Gateway, call_id: str, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{base_url(gw)}/v1/calls/{call_id}/recording",
                                headers=auth()) as r:
                if r.status == 200:
                    body: dict[str, Any] = await r.json()
                    return body
            assert time.monotonic() < deadline, "no recording"
            await asyncio.sleep(50 * MS)
