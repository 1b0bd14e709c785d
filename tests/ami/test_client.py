# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""AmiClient over panoramisk against the AMI simulator: login, reconnect, liveness."""

from __future__ import annotations

import asyncio

import pytest

from audiosocket_gw.ami.client import AmiActionError, AmiClient, AmiSettings, AmiUnavailable
from audiosocket_gw.testing.simulator.ami import AmiSimulator


def settings(sim: AmiSimulator, secret: str = "secret") -> AmiSettings:
    host, port = sim.address
    return AmiSettings(host=host, port=port, username="aigw", secret=secret,
                       backoff_initial=0.02, backoff_max=0.05, ping_interval=0.1,
                       ping_timeout=0.1, action_timeout=1.0)


async def test_reconnect_resync_callback_and_actions() -> None:
    async with AmiSimulator() as sim:
        client = AmiClient(settings(sim))
        logins: list[int] = []

        async def on_connected() -> None:
            logins.append(client.connects)

        client.on_connected.append(on_connected)
        with pytest.raises(AmiUnavailable):
            await client.send_action("Ping")
        await client.start()
        try:
            assert await client.wait_connected(3)
            pong = await client.send_action("Ping")
            assert not isinstance(pong, list) and pong.get("Ping") == "Pong"
            with pytest.raises(AmiActionError):
                await client.send_action("NoSuchAction")
            sim.drop_sessions()
            async with asyncio.timeout(3):
                while client.connects < 2 or not client.connected:
                    await asyncio.sleep(0.01)
            assert logins[:2] == [1, 2]
            assert await client.core_show_channels() == []
        finally:
            await client.stop()


async def test_wrong_secret_never_connects_and_unanswered_ping_reconnects() -> None:
    async with AmiSimulator() as sim:
        bad = AmiClient(settings(sim, secret="nope"))
        await bad.start()
        try:
            assert not await bad.wait_connected(0.3)
        finally:
            await bad.stop()
        client = AmiClient(settings(sim))
        await client.start()
        try:
            assert await client.wait_connected(3)
            # A peer that stops answering (but keeps the socket open): our Ping notices.
            orig = sim.handle
            sim.handle = lambda s, m: None  # type: ignore[method-assign]
            async with asyncio.timeout(3):
                while client.ping_failures == 0:
                    await asyncio.sleep(0.01)
            sim.handle = orig  # type: ignore[method-assign]
            async with asyncio.timeout(3):
                while client.connects < 2:
                    await asyncio.sleep(0.01)
        finally:
            await client.stop()
