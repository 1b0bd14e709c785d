"""Every dashboard and alert expression, evaluated by a real Prometheus.

A real gateway (in process) serves simulated calls; a real ``prometheus`` binary on a
free port scrapes it every second and loads ``grafana/alerts.yml``; then every PromQL
expression of the dashboards and alert rules goes through ``/api/v1/query`` and must
be valid and return at least one series. The calls exercise what only appears when a
feature runs: a recorded call (the agent records), a barge-in (a caller burst over
the echo), RTCP MOS (the recorded AMI events of tests/ami/fixtures fed to the
MosMonitor as the AMI client does). ``promtool check rules`` and ``promtool check
metrics`` (on the gateway's own /metrics) must pass too.

Skipped when the ``prometheus`` binary is absent (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.config import format_hostport
from audiosocket_gw.gateway import Gateway, call_info
from audiosocket_gw.quality.mos import MosMonitor
from audiosocket_gw.testing.localbot import LocalRealtimeBot
from audiosocket_gw.testing.simulator.pbx import run_simulation
from tests.helpers import MS, RawPeer, free_port, running_gateway
from tests.quality.test_mos_component import (
    CALL_ID,
    fixture_messages,
    split_at_hangup,
    until,
)
from tests.test_grafana import GRAFANA, alert_queries, dashboard_queries, write_tenants

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (apt-get install -y prometheus; .ci/run does): "
    "the real-Prometheus dashboard check cannot run",
)


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, target: str) -> AsyncIterator[str]:
    """A real Prometheus scraping ``target`` every second; yields its base URL."""
    assert PROMETHEUS is not None
    rules = tmp / "alerts.yml"
    shutil.copy(GRAFANA / "alerts.yml", rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "aigw", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn", stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.returncode is None, (tmp / "prometheus.log").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/-/ready") as r:
                        if r.status == 200:
                            break
                assert time.monotonic() < deadline, "prometheus not ready in 30 s"
                await asyncio.sleep(0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body: dict[str, Any] = await r.json()
    return body


async def wait_for_scrape_after(http: aiohttp.ClientSession, base: str, t: float,
                                scrapes: int = 3) -> None:
    """Until Prometheus holds ``scrapes`` successful scrapes later than ``t``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = await query(http, base, 'up{job="aigw"}[30s]')
        values = body["data"]["result"][0]["values"] if body["data"]["result"] else []
        if sum(1 for ts, v in values if float(ts) > t and v == "1") >= scrapes:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {scrapes} scrapes of the gateway after {t}")


async def place_calls(gw: Gateway) -> None:
    """Calls that make every feature's metrics appear."""
    host, port = gw.audiosocket.address
    sim = asyncio.create_task(run_simulation(host, port, calls=2, seconds=1.0))
    mon = next(c for c in gw.components if isinstance(c, MosMonitor))
    live, tail = split_at_hangup(fixture_messages())
    # RTCP call: the recorded AMI events of a real inbound call.
    rtcp = await RawPeer.connect((host, port))
    rtcp.send_uuid(CALL_ID)
    # Barge-in: the local Realtime bot greets, a loud burst over it is cut.
    burst_id = str(uuid.uuid4())
    gw.registry.register(call_info(gw.tenants.agents["talker"], burst_id))
    burst = await RawPeer.connect((host, port))
    burst.send_uuid(burst_id)
    loud = asp.encode_audio((8000).to_bytes(2, "little", signed=True) * 160)
    await until(lambda: CALL_ID in gw.audiosocket.calls and burst_id in gw.audiosocket.calls)
    await until(lambda: gw.audiosocket.calls[burst_id].playout.has_audio, within=10)
    for msg in live:
        mon.on_ami_event(msg)
    burst.send(loud * 25)
    await until(lambda: gw.audiosocket.calls[burst_id].barge_ins > 0, within=10)
    # The caller's turn ends: silence frames every 20 ms, as Asterisk sends them (all at
    # once, the bot's own VAD could answer before the gateway's sees the turn end).
    for _ in range(60):
        burst.send(asp.encode_audio(bytes(320)))
        await asyncio.sleep(20 * MS)
    await until(lambda: bool(gw.metrics.registry.get_sample_value(
        "aigw_response_latency_seconds_count", {"backend": "openai"})), within=10)
    report = await sim
    assert report.ok_calls == 2, report
    for peer in (rtcp, burst):
        peer.send(asp.encode_hangup())
        await peer.writer.drain()
    await until(lambda: not gw.audiosocket.calls)
    for msg in tail:
        mon.on_ami_event(msg)
    await mon.drain()
    for peer in (rtcp, burst):
        await peer.close()
    assert CALL_ID in mon.results and mon.results[CALL_ID].inbound is not None


async def test_dashboards_and_alerts_against_a_real_prometheus(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    check = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "rules", str(GRAFANA / "alerts.yml")],
        capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    async with LocalRealtimeBot(reply_ms=4000) as bot, \
            running_gateway(config=str(write_tenants(tmp_path)),
                            openai_url=f"ws://127.0.0.1:{bot.port}/v1/realtime") as gw, \
            prometheus(tmp_path, format_hostport(*gw.http_address)) as base, \
            aiohttp.ClientSession() as http:
        await wait_for_scrape_after(http, base, 0, scrapes=1)
        await place_calls(gw)
        await wait_for_scrape_after(http, base, time.time(), scrapes=3)

        failures = []
        for where, expr in dashboard_queries() + alert_queries():
            body = await query(http, base, expr)
            if body.get("status") != "success":
                failures.append(f"{where}: invalid: {body.get('error')}: {expr}")
            elif not body["data"]["result"]:
                failures.append(f"{where}: no series: {expr}")
        assert not failures, "\n".join(failures)

        # Prometheus itself evaluated the loaded rules without error.
        async with http.get(f"{base}/api/v1/rules") as r:
            groups = (await r.json())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == len(alert_queries())
        assert all(rule["health"] == "ok" for rule in rules), rules

        # The figures make sense: the fixture call's MOS went through Prometheus.
        body = await query(http, base, 'aigw_call_mos_count{direction="in"}')
        assert float(body["data"]["result"][0]["value"][1]) == 1

        async with http.get(f"http://{format_hostport(*gw.http_address)}/metrics") as r:
            exposition = await r.text()
    lint = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "metrics"], input=exposition,
        capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
