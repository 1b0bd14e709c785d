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
import socket
import tempfile
from pathlib import Path

import pytest

from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.settings import AmiSettings
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.testing.simulator.ami import AmiSimulator
from tests.helpers import MS, make_config

TOML = """
[tenants.acme]
max_concurrent_calls = 10
[agents.bot]
tenant = "acme"
backend = "echo"
silence_timeout_s = 30.0
"""


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then closed: connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_outbound_call_fails_over_to_the_peer_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead, live = _free_port(), _free_port()
    sim = AmiSimulator(connect_audiosocket=True, audiosocket_seconds=0.3)
    await sim.start()
    host, port = sim.address
    for k, v in {"AIGW_AMI_HOST": host, "AIGW_AMI_PORT": str(port), "AIGW_AMI_USER": "aigw",
                 "AIGW_AMI_SECRET": "secret",
                 "AIGW_ADVERTISE_AUDIOSOCKET": f"127.0.0.1:{dead}",
                 "AIGW_PEER_AUDIOSOCKETS": f"127.0.0.1:{dead},127.0.0.1:{live}"}.items():
        monkeypatch.setenv(k, v)
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML)
    gw = Gateway(make_config(config=str(cfg), allow_unregistered=False,
                             audiosocket=f"127.0.0.1:{live}"))
    client = gw.component(CallTracker).client
    assert client is not None
    client.settings = AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                  backoff_initial=0.02, backoff_max=0.1, ping_interval=0.5,
                                  ping_timeout=0.5)
    await gw.start()
    try:
        assert await client.wait_connected(5.0)
        provider = gw.component(CallsApi).provider
        assert isinstance(provider, AsteriskProvider)
        cid = await provider.start_outbound_call("acme", "+15550001111", "+15559990000")
        async with asyncio.timeout(5.0):
            while len(sim.legs) < 2 or sim.legs[1].ended_by == "pending":
                await asyncio.sleep(5 * MS)
        # Tried the advertised (dead) address, then the live peer; its own address in
        # the shared peer list was left out of AIGW_AUDIOSOCKET_ALT.
        assert sim.bridge_attempts == [(cid, f"127.0.0.1:{dead}"), (cid, f"127.0.0.1:{live}")]
        refused, leg = sim.legs
        assert refused.ended_by == "error" and "Refused" in (refused.error or "")
        assert leg.call_id == cid and leg.connected and leg.ended_by != "error", leg
        assert leg.frames_received > 0  # the echo bot answered on the peer address
    finally:
        await gw.shutdown(grace=0)
        await sim.stop()


async def test_all_addresses_refused_ends_the_call_without_a_leg(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead1, dead2, live = _free_port(), _free_port(), _free_port()
    sim = AmiSimulator(connect_audiosocket=True, audiosocket_seconds=0.3)
    await sim.start()
    host, port = sim.address
    for k, v in {"AIGW_AMI_HOST": host, "AIGW_AMI_PORT": str(port), "AIGW_AMI_USER": "aigw",
                 "AIGW_AMI_SECRET": "secret",
                 "AIGW_ADVERTISE_AUDIOSOCKET": f"127.0.0.1:{dead1}",
                 "AIGW_PEER_AUDIOSOCKETS": f"127.0.0.1:{dead2}"}.items():
        monkeypatch.setenv(k, v)
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML)
    gw = Gateway(make_config(config=str(cfg), allow_unregistered=False,
                             audiosocket=f"127.0.0.1:{live}"))
    client = gw.component(CallTracker).client
    assert client is not None
    client.settings = AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                  backoff_initial=0.02, backoff_max=0.1, ping_interval=0.5,
                                  ping_timeout=0.5)
    await gw.start()
    try:
        assert await client.wait_connected(5.0)
        provider = gw.component(CallsApi).provider
        assert isinstance(provider, AsteriskProvider)
        cid = await provider.start_outbound_call("acme", "+15550001111", "+15559990000")
        async with asyncio.timeout(5.0):
            while len(sim.bridge_attempts) < 2 or sim.channels:
                await asyncio.sleep(5 * MS)
        assert sim.bridge_attempts == [(cid, f"127.0.0.1:{dead1}"), (cid, f"127.0.0.1:{dead2}")]
        assert cid not in gw.audiosocket.calls
    finally:
        await gw.shutdown(grace=0)
        await sim.stop()
