# ruff: noqa: ASYNC110  (the test polls the simulator/store state with a deadline)
"""Dialplan failover across gateway hosts, over real sockets.

The PBX simulator follows ``[aigw-bridge]``: ``TryExec(AudioSocket(id,addr))`` on
``AIGW_AUDIOSOCKET`` and, while the connection is refused (``TRYSTATUS=FAILED``
within ~11 ms, docs/PROTOCOLS.md §1.3), on each ``AIGW_AUDIOSOCKET_ALT`` address.
Here the node advertises an address nobody listens on and names its real AudioSocket
port as the peer: the call must reach the gateway through the alternate.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.callcontrol import CallController
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.dial import DialRequest, DialTarget
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.settings import AmiSettings, Settings
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
from tests.helpers import MS, ami_gateway, free_port, make_config, until
from tests.pgtest import temp_database

TOML = """
[tenants.acme]
max_concurrent_calls = 10
[agents.bot]
tenant = "acme"
backend = "echo"
silence_timeout_s = 30.0
"""


@asynccontextmanager
async def _gateway(monkeypatch: pytest.MonkeyPatch, sim: AmiSimulator, live: int,
                   advertise: int, peers: list[int]) -> AsyncIterator[Gateway]:
    """A gateway listening on ``live`` that advertises ``advertise`` and lists ``peers``."""
    monkeypatch.setenv("AIGW_ADVERTISE_AUDIOSOCKET", f"127.0.0.1:{advertise}")
    monkeypatch.setenv("AIGW_PEER_AUDIOSOCKETS", ",".join(f"127.0.0.1:{p}" for p in peers))
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML)
    async with ami_gateway(monkeypatch, sim.address, config=str(cfg),
                           allow_unregistered=False, audiosocket=f"127.0.0.1:{live}") as gw:
        yield gw


async def _outbound(gw: Gateway) -> str:
    provider = gw.component(CallsApi).provider
    assert isinstance(provider, AsteriskProvider)
    return await provider.start_outbound_call("acme", "+15550001111", "+15559990000")


async def test_outbound_call_fails_over_to_the_peer_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead, live = free_port(), free_port()
    async with AmiSimulator(connect_audiosocket=True, audiosocket_seconds=0.3) as sim, \
            _gateway(monkeypatch, sim, live, dead, [dead, live]) as gw:
        cid = await _outbound(gw)
        await until(lambda: len(sim.legs) >= 2 and sim.legs[1].ended_by != "pending")
        # Tried the advertised (dead) address, then the live peer; its own address in
        # the shared peer list was left out of AIGW_AUDIOSOCKET_ALT.
        assert sim.bridge_attempts == [(cid, f"127.0.0.1:{dead}"), (cid, f"127.0.0.1:{live}")]
        refused, leg = sim.legs
        assert refused.ended_by == "error" and "Refused" in (refused.error or "")
        assert leg.call_id == cid and leg.connected and leg.ended_by != "error", leg
        assert leg.frames_received > 0  # the echo bot answered on the peer address


async def test_all_addresses_refused_ends_the_call_without_a_leg(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead1, dead2, live = free_port(), free_port(), free_port()
    async with AmiSimulator(connect_audiosocket=True, audiosocket_seconds=0.3) as sim, \
            _gateway(monkeypatch, sim, live, dead1, [dead2]) as gw:
        cid = await _outbound(gw)
        await until(lambda: len(sim.bridge_attempts) >= 2 and not sim.channels)
        assert sim.bridge_attempts == [(cid, f"127.0.0.1:{dead1}"), (cid, f"127.0.0.1:{dead2}")]
        assert cid not in gw.audiosocket.calls


HUMAN = "+15550002222"


async def test_resume_leg_after_dial_fails_over_to_a_node_that_finds_it_in_the_store(
        tmp_path: Path) -> None:
    """Node A dials for its call, then stops taking AudioSockets: the caller's resume
    leg is refused there, fails over (``Gosub(aigw-bridge,resume,1)``) to node B, which
    finds the pre-registered leg in the shared PostgreSQL store, with its parent call
    and A's record of the Dial's outcome."""
    talk = 1200 * MS
    sim = AmiSimulator(connect_audiosocket=True, ring_s=30 * MS, audiosocket_seconds=1.5,
                       outcomes={HUMAN: Outcome("answered", ring_s=50 * MS, talk_s=talk)})
    await sim.start()
    host, port = sim.address
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML)
    ports = {"a": free_port(), "b": free_port()}
    peers = ",".join(f"127.0.0.1:{p}" for p in ports.values())
    async with temp_database() as url:
        gws: dict[str, Gateway] = {}
        try:
            for name, p in ports.items():
                env = {"AIGW_DATABASE_URL": url, "AIGW_NODE_ID": f"node-{name}",
                       "AIGW_AMI_HOST": host, "AIGW_AMI_PORT": str(port),
                       "AIGW_AMI_USER": "aigw", "AIGW_AMI_SECRET": "secret",
                       "AIGW_ADVERTISE_AUDIOSOCKET": f"127.0.0.1:{p}",
                       "AIGW_PEER_AUDIOSOCKETS": peers}
                core = make_config(config=str(cfg), allow_unregistered=False,
                                   audiosocket=f"127.0.0.1:{p}",
                                   data_dir=str(tmp_path / name))
                gw = Gateway(Settings.load(env, core=core))
                client = gw.component(CallTracker).client
                assert client is not None
                client.settings = AmiSettings(
                    host=host, port=port, username="aigw", secret="secret",
                    backoff_initial=0.02, backoff_max=0.1, ping_interval=0.5,
                    ping_timeout=0.5)
                await gw.start()
                gws[name] = gw
                assert await client.wait_connected(5.0)
            a, b = gws["a"], gws["b"]
            provider = a.component(CallsApi).provider
            assert isinstance(provider, AsteriskProvider)
            cid = await provider.start_outbound_call("acme", "+15550001111", "+15559990000")
            async with asyncio.timeout(5.0):
                while cid not in a.audiosocket.calls or \
                        cid not in a.component(CallTracker).channels:
                    await asyncio.sleep(5 * MS)
            call = a.audiosocket.calls[cid]
            call.dial(DialRequest(targets=(DialTarget("number", HUMAN),), timeout_s=20,
                                  resume=True, metadata={"action": "https://app/after"}))
            async with asyncio.timeout(5.0):
                while not call.ended:
                    await asyncio.sleep(5 * MS)
            await a.audiosocket.shutdown(0)  # A's AudioSocket port now refuses
            async with asyncio.timeout(10.0):
                while not b.audiosocket.calls:
                    await asyncio.sleep(5 * MS)
            (leg,) = b.audiosocket.calls.values()
            resume_id = leg.call_id
            assert sim.bridge_attempts[-2:] == [(resume_id, f"127.0.0.1:{ports['a']}"),
                                                (resume_id, f"127.0.0.1:{ports['b']}")]
            assert leg.info.metadata["parent_call_id"] == cid
            assert leg.info.metadata["action"] == "https://app/after"
            assert leg.info.tenant == "acme" and leg.info.agent == "bot"
            # B did not start the Dial: the outcome is the one A stored on the leg.
            out = await b.component(CallController).outcome(resume_id, 3.0)
            # the simulator measures the talk on its clock: within a second of the plan
            assert out.status == "completed" and int(talk) <= out.duration_s <= int(talk) + 1
            assert out.dial_call_sid.startswith("CA")
            assert await b.store.get_call(resume_id) is None  # one call, one record
            # The caller hangs up on the resumed leg: the one call completes, once.
            async with asyncio.timeout(10.0):
                while True:
                    rec = await b.store.get_call(cid)
                    if rec is not None and rec.status is CallStatus.COMPLETED:
                        break
                    await asyncio.sleep(20 * MS)
            changed = [e for e in await b.store.events(cid)
                       if e.kind == "input" and e.data.get("changed")
                       and e.data.get("to") == "completed"]
            assert len(changed) == 1
        finally:
            for gw in gws.values():
                await gw.shutdown(grace=0)
            await sim.stop()
