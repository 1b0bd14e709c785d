"""Three gateway processes on one PostgreSQL database (issue 14's acceptance).

Real processes (``testing.proc.GatewayProcess``), a real database per test, real
HTTP and AudioSocket over loopback: the limiter admits exactly the limit across the
nodes, leaks no slot, an AudioSocket reaching another node than the one that routed
it is served, and a node killed with SIGKILL has its calls closed by a survivor at
their last-alive time with its slots freed, while the survivor's own calls keep
their 20 ms pace (no gap over 40 ms).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.testing.proc import GatewayProcess
from audiosocket_gw.testing.simulator.pbx import run_simulation
from tests.helpers import GAP_MS, MS, RawPeer, until
from tests.pgtest import temp_database

TOML = """
[tenants.acme]
max_concurrent_calls = 50

[agents.bot]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "bot"
"""

LEASE_S = 3.0
ALIVE_INTERVAL_S = CallTracker.alive_interval_s


@asynccontextmanager
async def cluster(url: str, n: int = 3) -> AsyncIterator[list[GatewayProcess]]:
    tmp = Path(tempfile.mkdtemp(prefix="aigw-cluster-"))
    (tmp / "t.toml").write_text(TOML)
    async with AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            env = dict(os.environ, AIGW_DATABASE_URL=url, AIGW_NODE_ID=f"node-{i}",
                       AIGW_NODE_LEASE_S=str(LEASE_S), AIGW_CONFIG=str(tmp / "t.toml"),
                       AIGW_DATA_DIR=str(tmp / f"data{i}"))
            env.pop("AIGW_AMI_HOST", None)
            gw = GatewayProcess("--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
                                "--allow-unregistered", env=env,
                                log_path=str(tmp / f"node{i}.log"))
            nodes.append(await stack.enter_async_context(gw))
        yield nodes


async def route(s: aiohttp.ClientSession, gw: GatewayProcess, caller: str) -> dict[str, str]:
    body = {"did": "+15551230000", "caller": caller, "uniqueid": caller, "channel": "PJSIP/x"}
    async with s.post(f"http://127.0.0.1:{gw.http[1]}/v1/route", json=body) as r:
        assert r.status == 200, await r.text()
        variables: dict[str, str] = (await r.json())["variables"]
        return variables


async def test_three_nodes_limit_exactly_and_release_every_slot() -> None:
    async with temp_database() as url, cluster(url) as nodes, \
            PostgresCallStore(url) as store, aiohttp.ClientSession() as s:
        answers = await asyncio.gather(
            *(route(s, nodes[i % 3], f"+1555000{i:04d}") for i in range(200)))
        ok = [a for a in answers if a["AIGW_STATUS"] == "ok"]
        assert len(ok) == 50
        assert sum(a["AIGW_STATUS"] == "busy" for a in answers) == 150
        assert await store.active_slots("acme") == 50
        # Each admitted call's AudioSocket goes to the *next* node (not the one that
        # routed it): the id is found in the shared store; then the caller hangs up.
        peers = []
        for a in ok:
            owner = next(n for n in nodes if a["AIGW_AUDIOSOCKET"].endswith(
                f":{n.audiosocket[1]}"))
            other = nodes[(nodes.index(owner) + 1) % 3]
            peer = await RawPeer.connect(other.audiosocket)
            peer.send_uuid(a["AIGW_CALL_ID"])
            peer.send(asp.encode_audio(b"\0" * 320))
            peers.append(peer)

        async def all_answered() -> bool:
            return len(await store.list_calls(CallStatus.IN_PROGRESS, limit=1000)) == 50

        await until(all_answered, within=20.0, step=50 * MS)
        for peer in peers:
            peer.send(asp.HANGUP_FRAME)
        for peer in peers:
            await peer.read_until_closed(10_000 * MS)

        async def all_free() -> bool:
            return await store.active_slots("acme") == 0

        await until(all_free, within=20.0, step=50 * MS)
        again = await asyncio.gather(
            *(route(s, nodes[i % 3], f"+1555100{i:04d}") for i in range(60)))
        assert sum(a["AIGW_STATUS"] == "ok" for a in again) == 50


async def test_kill9_node_calls_closed_by_a_survivor() -> None:
    async with temp_database() as url, cluster(url) as nodes, \
            PostgresCallStore(url) as store, aiohttp.ClientSession() as s:
        victim, survivor = nodes[0], nodes[1]
        ids, peers = [], []
        for i in range(5):
            a = await route(s, victim, f"+1555200{i:04d}")
            assert a["AIGW_STATUS"] == "ok"
            peer = await RawPeer.connect(victim.audiosocket)
            peer.send_uuid(a["AIGW_CALL_ID"])
            peer.send(asp.encode_audio(b"\0" * 320))
            ids.append(a["AIGW_CALL_ID"])
            peers.append(peer)
        mine = await route(s, survivor, "+15552990000")  # a survivor's call: untouched

        async def answered() -> bool:
            calls = await store.active_calls("node-0")
            return len(calls) == 5 and all(c.status is CallStatus.IN_PROGRESS for c in calls)

        await until(answered, within=20.0, step=50 * MS)
        # Two calls on the survivor run through the kill and the takeover.
        on_survivor = asyncio.create_task(
            run_simulation(*survivor.audiosocket, calls=2, seconds=LEASE_S * 2 + 2))
        await asyncio.sleep(1.0)
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        await victim.proc.wait()

        async def taken_over() -> bool:
            return await store.active_calls("node-0") == []

        await until(taken_over, within=LEASE_S * 4 + 20.0, step=50 * MS)
        for cid in ids:
            rec = await store.get_call(cid)
            assert rec is not None and rec.status is CallStatus.COMPLETED
            assert rec.hangup_reason == "node-lost"
            # Ended when last known alive: never after the kill, never before the answer,
            # and at most one heartbeat batch (alive_interval_s) before the kill.
            assert rec.ended_at is not None and rec.answered_at is not None
            assert rec.answered_at <= rec.ended_at <= killed_at
            assert killed_at - rec.ended_at <= ALIVE_INTERVAL_S + 1.0, (killed_at, rec)
            assert rec.duration_s is not None and rec.duration_s <= killed_at - rec.created_at
        assert await store.active_slots("acme") == 1  # only the survivor's call
        rec = await store.get_call(mine["AIGW_CALL_ID"])
        assert rec is not None and not rec.is_terminal
        for peer in peers:
            peer.writer.close()
        report = await on_survivor
        for c in report.calls:
            assert c.ok, c
            assert c.max_gap_ms is not None and c.max_gap_ms < GAP_MS, c
