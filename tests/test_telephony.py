"""Crash safety: kill -9 a gateway process mid-calls, restart, store consistent."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from pathlib import Path

import aiohttp

from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.store.sqlite import SqliteCallStore
from audiosocket_gw.testing.proc import GatewayProcess
from audiosocket_gw.testing.simulator.ami import AmiSimulator

TOML = """
[tenants.acme]
max_concurrent_calls = 5

[agents.bot]
tenant = "acme"
backend = "echo"
"""


async def test_kill9_mid_calls_then_restart_reconciles() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aigw-kill-"))
    (tmp / "t.toml").write_text(TOML)
    async with AmiSimulator(ring_s=0.02, talk_s=60.0) as sim:
        env = dict(os.environ, AIGW_AMI_HOST=sim.address[0], AIGW_AMI_PORT=str(sim.address[1]),
                   AIGW_AMI_USER="aigw", AIGW_AMI_SECRET="secret",
                   AIGW_DATA_DIR=str(tmp / "data"), AIGW_CONFIG=str(tmp / "t.toml"))
        args = ("--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0")
        gw = GatewayProcess(*args, env=env)
        await gw.start()
        ids = []
        try:
            base = f"http://127.0.0.1:{gw.http[1]}"
            async with aiohttp.ClientSession() as s:
                async with asyncio.timeout(10):
                    while len(ids) < 3:
                        body = {"to": f"+1555000000{len(ids)}", "from": "+15559990000",
                                "tenant": "acme"}
                        async with s.post(f"{base}/v1/calls", json=body) as r:
                            if r.status == 503:  # AMI login still in flight
                                await asyncio.sleep(0.05)
                                continue
                            assert r.status == 201
                            ids.append((await r.json())["id"])
                    while True:
                        async with s.get(f"{base}/v1/calls?status=in-progress") as r:
                            if len((await r.json())["calls"]) == 3:
                                break
                        await asyncio.sleep(0.05)
        finally:
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGKILL)
            await gw.proc.wait()
            await gw.stop()  # already dead: only cleans up
        store = SqliteCallStore(tmp / "data" / "aigw.sqlite")
        async with store:
            assert len(await store.active_calls()) == 3
            assert await store.active_slots("acme") == 3
        gw2 = GatewayProcess(*args, env=env)
        await gw2.start()
        await gw2.stop()
        async with SqliteCallStore(tmp / "data" / "aigw.sqlite") as store:
            assert await store.active_calls() == []
            assert await store.active_slots("acme") == 0
            for cid in ids:
                rec = await store.get_call(cid)
                assert rec is not None and rec.status is CallStatus.COMPLETED
                assert rec.hangup_reason == "gateway-restart"
