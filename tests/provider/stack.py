"""A gateway with the AMI simulator and a tenants file with numbers, for these tests."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from audiosocket_gw.gateway import Gateway
from audiosocket_gw.testing.simulator.ami import AmiSimulator
from tests.helpers import MS, ami_gateway, running_gateway

APP_TOKEN = "acme-twilio-auth-token"
ORIGINAL_URL = "https://app.example.com/twilio/voice?x=1&y=2"
DIDS = ["+15551230000", "+15551230001", "+15551230002"]

TOML = f"""default_agent = "bot"
[tenants.acme]
max_concurrent_calls = 5000
twilio_auth_token_env = "ACME_TWILIO_TOKEN"

[tenants.beta]
max_concurrent_calls = 10

[agents.bot]
tenant = "acme"
backend = "echo"
voice_url = "{ORIGINAL_URL}"

[agents.beta-bot]
tenant = "beta"
backend = "echo"
voice_url = "https://beta.example.com/voice"
""" + "".join(f'\n[numbers."{d}"]\nagent = "bot"\n' for d in DIDS) + \
    '\n[numbers."+15557770000"]\nagent = "beta-bot"\n'


def tenants_file() -> str:
    path = Path(tempfile.mkdtemp(prefix="aigw-rollout-")) / "tenants.toml"
    path.write_text(TOML)
    return str(path)


def base_url(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.http_address[1]}"


@asynccontextmanager
async def gateway(monkeypatch: pytest.MonkeyPatch, *, ami: bool = True,
                  **overrides: Any) -> AsyncIterator[tuple[Gateway, AmiSimulator | None]]:
    """A started gateway (with the AMI simulator when ``ami``); numbers ``DIDS``."""
    monkeypatch.setenv("ACME_TWILIO_TOKEN", APP_TOKEN)
    if not ami:
        monkeypatch.delenv("AIGW_AMI_HOST", raising=False)
        async with running_gateway(config=tenants_file(), allow_unregistered=False,
                                   **overrides) as gw:
            yield gw, None
        return
    async with AmiSimulator(ring_s=5 * MS, talk_s=20 * MS) as sim, ami_gateway(
            monkeypatch, sim.address, config=tenants_file(), allow_unregistered=False,
            **overrides) as gw:
        yield gw, sim


def originates(sim: AmiSimulator) -> list[str]:
    """The ChannelIds (call ids) of every Originate the simulator received."""
    return [str(a.get("ChannelId")) for a in sim.actions if a.get("Action") == "Originate"]


class HoldingProxy:
    """A real HTTP proxy in front of the gateway that withholds the answer to the first
    ``POST /v1/calls`` for ``hold_s`` (after the gateway has placed the call), the way a
    network timeout would."""

    def __init__(self, target: str, hold_s: float) -> None:
        self.target, self.hold_s = target, hold_s
        self.creates: list[tuple[str | None, int, bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> HoldingProxy:
        import aiohttp

        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k in ("Authorization", "Content-Type", "Idempotency-Key")}
        async with self._session.request(request.method, self.target + request.path_qs,
                                         data=body, headers=headers) as r:
            data, status = await r.read(), r.status
        if request.method == "POST" and request.path == "/v1/calls":
            self.creates.append((request.headers.get("Idempotency-Key"), status, data))
            if len(self.creates) == 1:
                await asyncio.sleep(self.hold_s)
        return web.Response(body=data, status=status, content_type="application/json")
