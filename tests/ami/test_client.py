# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""AmiClient over panoramisk against the AMI simulator: login, reconnect, liveness."""

from __future__ import annotations

import asyncio

import pytest

from audiosocket_gw.ami.client import AmiActionError, AmiClient, AmiSettings, AmiUnavailable
from audiosocket_gw.ami.protocol import AmiMessage
from audiosocket_gw.testing.simulator.ami import AmiSimulator
from tests.helpers import MS


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


@pytest.mark.parametrize("flood", ["long line", "endless event", "lf-only messages"])
async def test_oversized_input_drops_the_connection_then_reconnects(
        flood: str, caplog: pytest.LogCaptureFixture) -> None:
    async with AmiSimulator() as sim:
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                       backoff_initial=0.02, backoff_max=0.05,
                                       ping_interval=5.0))  # default limits
        await client.start()
        try:
            assert await client.wait_connected(3)
            if flood == "long line":
                payload = b"Event: Foo\r\nValue: " + b"x" * (10 << 20)
            elif flood == "endless event":
                payload = b"Event: Foo\r\n" + (b"Key: " + b"v" * 100 + b"\r\n") * 100_000
            else:  # bare-LF messages: valid AMI, but panoramisk only splits on CRLF CRLF
                payload = b"Event: Foo\nKey: v\n\n" * 100_000  # 2.1 MB
            sim.send_raw(payload)
            async with asyncio.timeout(5):
                while client.connects < 2 or not client.connected:
                    await asyncio.sleep(0.01)
            assert client.protocol_errors == 1
            errors = [r for r in caplog.records if r.name == "audiosocket_gw.ami"
                      and r.levelname == "ERROR"]
            assert len(errors) == 1 and "connection dropped" in errors[0].getMessage()
            pong = await client.send_action("Ping")
            assert not isinstance(pong, list) and pong.get("Ping") == "Pong"
        finally:
            await client.stop()


async def test_normal_traffic_within_the_limits_is_untouched() -> None:
    async with AmiSimulator() as sim:
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                       ping_interval=5.0, max_line=1024, max_message=4096))
        await client.start()
        try:
            assert await client.wait_connected(3)
            # Many messages in one burst (far more than max_message in total), LF and CRLF.
            sim.send_raw(b"".join(b"Event: Foo\r\nN: %d\r\n\r\n" % i for i in range(2000)))
            got = 0
            async with asyncio.timeout(3):
                while got < 2000:
                    ev = await client.next_event(1.0)
                    if ev is not None and ev.event == "Foo":
                        got += 1
            assert client.protocol_errors == 0 and client.connects == 1
        finally:
            await client.stop()


async def test_full_event_queue_sheds_only_optional_events() -> None:
    async with AmiSimulator() as sim:
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                       ping_interval=5.0, event_queue=5))
        await client.start()
        try:
            assert await client.wait_connected(3)
            await asyncio.sleep(50 * MS)
            while await client.next_event(0.01) is not None:  # FullyBooted
                pass
            # Nobody consumes while a burst of short calls happens: RTCP, talking and
            # VarSets interleaved with the events that carry the calls' state.
            ids = [f"cid-{i}" for i in range(40)]
            for cid in ids:
                ch = sim._new_channel(cid, f"PJSIP/t-{cid}", "aigw-outbound", "s", state=5)
                sim.varset(ch, "AIGW_CALL_ID", cid)
                sim._newstate(ch, 6)
                sim.rtcp(cid)
                sim.talk(cid)
                sim.varset(ch, "SOMETHING", "x")
                sim.end_channel(cid, 16)
            await asyncio.sleep(200 * MS)
            got = []
            while (ev := await client.next_event(100 * MS)) is not None:
                got.append(ev)
            for cid in ids:
                kinds = [(m.event, m.get("Variable")) for m in got if m.get("Uniqueid") == cid]
                assert ("Newchannel", None) in kinds and ("Newstate", None) in kinds
                assert ("Hangup", None) in kinds and ("VarSet", "AIGW_CALL_ID") in kinds
                assert kinds.index(("Newchannel", None)) < kinds.index(("Hangup", None))
            assert client.dropped > 0  # RTCP, talking and other VarSets were shed
        finally:
            await client.stop()


async def test_no_phone_number_is_logged_when_ami_drops_with_an_originate_pending(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    async with AmiSimulator() as sim:
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                       backoff_initial=0.02, ping_interval=5.0,
                                       action_timeout=2.0))
        await client.start()
        try:
            assert await client.wait_connected(3)
            orig = sim.handle
            # Asterisk is slow to answer the Originate, then the connection drops.
            def slow(s: object, m: AmiMessage) -> None:
                if m.get("Action") == "Originate":
                    sim.actions.append(m)
                else:
                    orig(s, m)  # type: ignore[arg-type]

            sim.handle = slow  # type: ignore[assignment]
            pending = asyncio.ensure_future(client.originate(
                channel="PJSIP/+15551234567@trunk", channel_id="cid-9", context="aigw-outbound",
                caller_id="+15559876543", variables={"AIGW_TO": "+15551234567"}))
            async with asyncio.timeout(3):
                while not any(a.get("Action") == "Originate" for a in sim.actions):
                    await asyncio.sleep(0.01)
            sim.drop_sessions()
            with pytest.raises(AmiUnavailable):
                await pending
            async with asyncio.timeout(3):
                while client.connects < 2:
                    await asyncio.sleep(0.01)
        finally:
            await client.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "AMI connection" in text  # our own lines are there
    for digits in ("5551234567", "5559876543"):
        assert digits not in text


async def test_backoff_keeps_growing_against_a_peer_that_drops_after_login() -> None:
    async with AmiSimulator() as sim:
        orig = sim.handle

        def flaky(s: object, m: AmiMessage) -> None:
            orig(s, m)  # type: ignore[arg-type]
            if m.get("Action") == "Login":  # logged in, then cut in the middle of an event
                t = s.transport  # type: ignore[attr-defined]
                t.write(b"Event: Newchannel\r\nChannel: PJSIP/x\r\n")
                asyncio.get_running_loop().call_later(0.01, t.close)

        sim.handle = flaky  # type: ignore[assignment]
        host, port = sim.address
        client = AmiClient(AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                       backoff_initial=0.05, backoff_max=0.4, ping_interval=5.0))
        await client.start()
        try:
            await asyncio.sleep(1.2)
            # Without growth (reset at every login) this is about 1.2 / 0.06 = 20 logins;
            # growing 0.05, 0.1, 0.2, 0.4, 0.4... it is at most about 6.
            assert 2 <= client.connects <= 7, client.connects
        finally:
            await client.stop()
