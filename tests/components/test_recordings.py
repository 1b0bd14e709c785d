"""RecordingsComponent alone (local-only: no bucket): a real Call recorded by the
gateway's own tap, its file on the record, and the HTTP routes on a real loopback port."""

from __future__ import annotations

import asyncio
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
from aiohttp import web

from audiosocket_gw.recordings.component import RecordingsComponent
from tests.components.context import Harness, make_context, open_call, until_async

TOML = """
default_agent = "rec"

[tenants.acme]

[agents.rec]
tenant = "acme"
backend = "echo"
record = true
recording_source = "gateway"

[agents.plain]
tenant = "acme"
backend = "echo"
"""


@dataclass
class Served:
    h: Harness
    comp: RecordingsComponent
    base: str
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path) as r:
            return r.status, await r.json()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    async with make_context(tmp_path, TOML, {"AIGW_MIXMONITOR_DIR": str(monitor)}) as h:
        comp = RecordingsComponent(h.ctx, h.ctx.settings.recording)
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


async def admit(h: Harness, agent: str) -> str:
    adm = h.ctx.admission
    tenant, cfg = adm.resolve_outbound("acme", agent)
    return (await adm.admit(tenant, cfg, direction="inbound", from_="+15557654321",
                            to="+15551230000")).call_id


async def test_gateway_recording_of_a_real_call(served: Served) -> None:
    h = served.h
    cid = await admit(h, "rec")
    call = await open_call(h, cid)
    assert len(call.taps) == 1  # the recorder
    caller = (1000).to_bytes(2, "little", signed=True) * 160  # 20 ms at 8 kHz
    call.play(bytes(320) * 25)  # 500 ms of bot audio
    for _ in range(25):
        call.on_caller_audio(caller)
        call.on_tick()
        call.after_tick()  # as the pacer does, once every call of the tick has written
    call.end("caller-hangup", outcome="completed", send_hangup=False)

    async def referenced() -> bool:
        rec = await h.store.get_call(cid)
        return rec is not None and rec.recording_ref is not None

    await until_async(referenced, within=5.0)
    rec = await h.store.get_call(cid)
    assert rec is not None and rec.recording_ref is not None
    path = Path(urlparse(rec.recording_ref).path)
    root = h.ctx.settings.core.data_path / "recordings"
    assert path == (root / "acme" / f"{cid}.wav").resolve()
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        assert w.getnframes() == 25 * 160

    status, body = await served.request("GET", f"/v1/calls/{cid}/recording")
    assert status == 200
    assert (body["call_id"], body["source"], body["channels"]) == (cid, "gateway", 2)
    assert body["duration"] == pytest.approx(0.5, abs=0.001)
    assert body["size"] == await asyncio.to_thread(lambda: path.stat().st_size)
    labels = {"tenant": "acme", "source": "gateway"}
    for name in ("aigw_recording_calls_answered_total", "aigw_recordings_captured_total"):
        assert h.ctx.metrics.registry.get_sample_value(name, labels) == 1, name


async def test_agent_that_does_not_record_gets_no_tap(served: Served) -> None:
    call = await open_call(served.h, await admit(served.h, "plain"))
    assert call.taps == []
    call.end("caller-hangup", outcome="completed", send_hangup=False)
    status, body = await served.request("GET", f"/v1/calls/{call.call_id}/recording")
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_mixmonitor_done_checks_its_call_id(served: Served) -> None:
    status, body = await served.request("POST", "/v1/recordings/mixmonitor-done?call_id=../x")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await served.request(
        "POST", f"/v1/recordings/mixmonitor-done?call_id={uuid.uuid4()}")
    assert (status, body["error"]["code"]) == (404, "not_found")
