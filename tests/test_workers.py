"""``serve --workers N``: N processes on one port pair, one PostgreSQL store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.metrics_merge import merge_expositions
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.testing.proc import GatewayProcess
from tests.helpers import MS, RawPeer
from tests.pgtest import temp_database

METRIC = "aigw_calls"

TOML = """
[tenants.acme]
max_concurrent_calls = 20

[agents.bot]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "bot"
"""


def calls_started(text: str) -> dict[str, float]:
    """``aigw_calls_total`` (finished AudioSocket calls), per worker."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == METRIC:
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    w = smp.labels["worker"]
                    out[w] = out.get(w, 0.0) + smp.value
    return out


def test_merge_expositions_labels_every_worker() -> None:
    a = "# HELP x_total X\n# TYPE x_total counter\nx_total{b=\"1\"} 2.0\n"
    b = "# HELP x_total X\n# TYPE x_total counter\nx_total{b=\"1\"} 3.0\n"
    text = merge_expositions({0: a, 1: b, 2: "garbage {{"}).decode()
    assert 'x_total{b="1",worker="0"} 2.0' in text
    assert 'x_total{b="1",worker="1"} 3.0' in text
    assert text.count("# TYPE x_total counter") == 1


def test_more_than_one_worker_refuses_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIGW_DATABASE_URL"}
    env["AIGW_DATA_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "audiosocket_gw", "serve", "--workers", "2"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "AIGW_DATABASE_URL" in r.stderr and "SQLite" in r.stderr


async def test_two_workers_share_the_ports_and_the_store() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aigw-workers-"))
    (tmp / "t.toml").write_text(TOML)
    async with temp_database() as url:
        env = dict(os.environ, AIGW_DATABASE_URL=url, AIGW_NODE_ID="host-a",
                   AIGW_CONFIG=str(tmp / "t.toml"), AIGW_DATA_DIR=str(tmp / "data"))
        env.pop("AIGW_AMI_HOST", None)
        gw = GatewayProcess("--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
                            "--workers", "2", env=env, log_path=str(tmp / "gw.log"))
        await gw.start(start_within=60)
        try:
            async with PostgresCallStore(url) as store, aiohttp.ClientSession() as s:
                ids = []
                for i in range(30):  # new connections: the kernel spreads them
                    body = {"did": "+15551230000", "caller": f"+1555000{i:04d}"}
                    async with aiohttp.ClientSession() as one, one.post(
                            f"http://127.0.0.1:{gw.http[1]}/v1/route", json=body) as r:
                        v = (await r.json())["variables"]
                    if v["AIGW_STATUS"] == "ok":
                        ids.append(v["AIGW_CALL_ID"])
                assert len(ids) == 20  # one limiter for both workers
                nodes = {(await store.get_call(c)).node_id for c in ids}  # type: ignore[union-attr]
                assert nodes == {"host-a.w0", "host-a.w1"}
                # Every AudioSocket is served, whichever worker routed the call.
                peers = []
                for cid in ids:
                    peer = await RawPeer.connect(gw.audiosocket)
                    peer.send_uuid(cid)
                    peer.send(asp.encode_audio(b"\0" * 320))
                    peers.append(peer)
                async with asyncio.timeout(20_000 * MS):
                    while len(await store.list_calls(CallStatus.IN_PROGRESS)) < 20:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                for peer in peers:
                    peer.send(asp.HANGUP_FRAME)
                for peer in peers:
                    await peer.read_until_closed(10_000 * MS)
                async with asyncio.timeout(20_000 * MS):
                    while await store.active_slots("acme") != 0:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                async with s.get(f"http://127.0.0.1:{gw.http[1]}/healthz") as r:
                    assert r.status == 200
                # One /metrics view: whichever worker answers, both workers' series,
                # and their calls add up to every call.
                async with asyncio.timeout(10_000 * MS):
                    while True:
                        async with s.get(f"http://127.0.0.1:{gw.http[1]}/metrics") as r:
                            text = await r.text()
                        per_worker = calls_started(text)
                        if sum(per_worker.values()) == 20:
                            break
                        await asyncio.sleep(0.2)
                assert set(per_worker) == {"0", "1"}
        finally:
            code = await gw.stop(stop_within=30)
        assert code == 0  # SIGTERM: every worker drained and exited, then the supervisor
