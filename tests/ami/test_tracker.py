# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""Call tracking end to end: gateway + AMI client + tracker against the AMI simulator."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from audiosocket_gw.ami.client import AmiClient
from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
from tests.helpers import MS, make_config

TOML = """
[tenants.acme]
max_concurrent_calls = {limit}

[agents.bot]
tenant = "acme"
backend = "echo"
silence_timeout_s = 20.0
"""


@dataclass
class Parts:
    """The AMI-side components of a gateway, found through its composition root."""

    client: AmiClient | None
    tracker: CallTracker
    provider: AsteriskProvider


def component(gw: Gateway) -> Parts:
    tracker = gw.component(CallTracker)
    provider = gw.component(CallsApi).provider
    assert isinstance(provider, AsteriskProvider)
    return Parts(tracker.client, tracker, provider)


@asynccontextmanager
async def stack(monkeypatch: pytest.MonkeyPatch, *, limit: int = 10, connect: bool = False,
                **sim_kw: object) -> AsyncIterator[tuple[Gateway, AmiSimulator]]:
    sim = AmiSimulator(connect_audiosocket=connect, **sim_kw)  # type: ignore[arg-type]
    await sim.start()
    host, port = sim.address
    monkeypatch.setenv("AIGW_AMI_HOST", host)
    monkeypatch.setenv("AIGW_AMI_PORT", str(port))
    monkeypatch.setenv("AIGW_AMI_USER", "aigw")
    monkeypatch.setenv("AIGW_AMI_SECRET", "secret")
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML.format(limit=limit))
    gw = Gateway(make_config(config=str(cfg), allow_unregistered=False))
    comp = component(gw)
    assert comp.client is not None
    comp.client.settings = type(comp.client.settings)(
        host=host, port=port, username="aigw", secret="secret",
        backoff_initial=0.02, backoff_max=0.1, ping_interval=0.2, ping_timeout=0.2)
    await gw.start()
    try:
        assert await comp.client.wait_connected(5.0)
        yield gw, sim
    finally:
        await gw.shutdown(grace=0)
        await sim.stop()


async def wait_status(gw: Gateway, call_id: str, *statuses: CallStatus,
                      within: float = 3.0) -> CallStatus:
    async with asyncio.timeout(within):
        while True:
            rec = await gw.store.get_call(call_id)
            if rec is not None and rec.status in statuses:
                return rec.status
            await asyncio.sleep(10 * MS)


@pytest.mark.parametrize(("outcome", "status", "cause"), [
    ("answered", CallStatus.COMPLETED, 16),
    ("busy", CallStatus.BUSY, 17),
    ("no-answer", CallStatus.NO_ANSWER, 19),
    ("congestion", CallStatus.FAILED, 34),
    ("failed", CallStatus.FAILED, None),
])
async def test_outbound_status_paths(monkeypatch: pytest.MonkeyPatch, outcome: str,
                                     status: CallStatus, cause: int | None) -> None:
    async with stack(monkeypatch, outcomes={"+15550001111": outcome},  # type: ignore[dict-item]
                     ring_s=20 * MS, talk_s=50 * MS) as (gw, sim):
        prov = component(gw).provider
        cid = await prov.start_outbound_call("acme", "+15550001111", "+15559990000")
        assert await wait_status(gw, cid, status) is status
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.direction == "outbound"
        if cause is not None:
            async with asyncio.timeout(2):
                while (rec := await gw.store.get_call(cid)) and rec.hangup_cause is None:
                    await asyncio.sleep(10 * MS)
            assert rec is not None and rec.hangup_cause == cause
        assert await gw.store.active_slots("acme") == 0
        orig = [a for a in sim.actions if a.get("Action") == "Originate"][0]
        assert orig.get("Async") == "true" and orig.get("ChannelId") == cid
        assert orig.variables()["AIGW_CALL_ID"] == cid
        assert orig.variables()["AIGW_TENANT"] == "acme"


async def test_answered_call_with_real_audiosocket_and_hangup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, connect=True, ring_s=20 * MS, talk_s=5.0) as (gw, sim):
        prov = component(gw).provider
        cid = await prov.start_outbound_call("acme", "+15550002222", "+15559990000")
        await wait_status(gw, cid, CallStatus.IN_PROGRESS)
        async with asyncio.timeout(3):
            while cid not in gw.audiosocket.calls:
                await asyncio.sleep(10 * MS)
        rec = await prov.hangup(cid)
        assert rec is not None
        assert await wait_status(gw, cid, CallStatus.COMPLETED) is CallStatus.COMPLETED
        async with asyncio.timeout(3):
            while cid in sim.channels:
                await asyncio.sleep(10 * MS)
        async with asyncio.timeout(3):
            while True:
                events = [e.data for e in await gw.store.events(cid) if e.kind == "input"]
                if any(e.get("input") == "hangup" for e in events):
                    break
                await asyncio.sleep(10 * MS)
        # Both ends were seen (AMI Hangup and the AudioSocket end) but counted once.
        ends = [e for e in events if e.get("input") in ("hangup", "gateway_hangup")]
        assert len(ends) == 2 and sum(bool(e.get("changed")) for e in ends) == 1
        final = await gw.store.get_call(cid)
        assert final is not None and final.hangup_reason == "api-hangup"


async def test_ami_drop_then_resync_closes_vanished_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, ring_s=10 * MS, talk_s=30.0) as (gw, sim):
        comp = component(gw)
        assert comp.client is not None
        keep = await comp.provider.start_outbound_call("acme", "+15550003333", "+15559990000")
        gone = await comp.provider.start_outbound_call("acme", "+15550004444", "+15559990000")
        await wait_status(gw, keep, CallStatus.IN_PROGRESS)
        await wait_status(gw, gone, CallStatus.IN_PROGRESS)
        resyncs = comp.tracker.resyncs
        sim.drop_sessions()
        sim.end_channel(gone, 16)  # ends while nobody listens
        assert await wait_status(gw, gone, CallStatus.COMPLETED) is CallStatus.COMPLETED
        rec = await gw.store.get_call(gone)
        assert rec is not None and rec.hangup_reason == "ami-resync-vanished"
        # The resync counts itself once it has finished (after closing the call).
        async with asyncio.timeout(2000 * MS):
            while comp.tracker.resyncs <= resyncs:  # noqa: ASYNC110
                await asyncio.sleep(10 * MS)
        kept = await gw.store.get_call(keep)
        assert kept is not None and kept.status is CallStatus.IN_PROGRESS
        assert await gw.store.active_slots("acme") == 1


async def test_limiter_under_concurrent_originations(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, limit=3, ring_s=30 * MS, talk_s=60 * MS) as (gw, sim):
        prov = component(gw).provider
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await gw.store.active_slots("acme"))
                await asyncio.sleep(2 * MS)

        w = asyncio.ensure_future(watch())
        results = await asyncio.gather(
            *(prov.start_outbound_call("acme", f"+1555000{i:04d}", "+15559990000")
              for i in range(12)), return_exceptions=True)
        ids = [r for r in results if isinstance(r, str)]
        assert len(ids) == 3
        assert all(type(r).__name__ == "LimitExceeded" for r in results if r not in ids)
        for cid in ids:
            await wait_status(gw, cid, CallStatus.COMPLETED)
        w.cancel()
        assert peak <= 3
        assert await gw.store.active_slots("acme") == 0


async def test_inbound_call_tracked_and_malformed_ami_survived(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch) as (gw, sim):
        comp = component(gw)
        sim.send_raw(b"garbage line without colon\r\n\r\nEvent: \r\n\r\n\xff\xfe: x\r\n\r\n")
        # A record created by routing, then the inbound script on AMI.
        from audiosocket_gw.store.base import CallRecord

        await gw.store.create_call(CallRecord(id="in-1", tenant="acme", agent="bot",
                                              direction="inbound", from_="", to="",
                                              created_at=0.0))
        await comp.tracker.apply("in-1", __import__("audiosocket_gw.callstate").callstate
                                 .CallInput.ROUTED_INBOUND)
        await sim.inbound_call("in-1", talk_s=20 * MS)
        assert await wait_status(gw, "in-1", CallStatus.CANCELED, CallStatus.COMPLETED)
        rec = await gw.store.get_call("in-1")
        assert rec is not None and rec.hangup_cause == 0
        assert comp.client is not None and comp.client.connected


async def test_api_auth_and_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = AmiSimulator(ring_s=10 * MS, talk_s=30 * MS,
                       outcomes={"+15550005555": Outcome("busy")})
    await sim.start()
    host, port = sim.address
    for k, v in {"AIGW_AMI_HOST": host, "AIGW_AMI_PORT": str(port), "AIGW_AMI_USER": "aigw",
                 "AIGW_AMI_SECRET": "secret"}.items():
        monkeypatch.setenv(k, v)
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML.format(limit=5))
    gw = Gateway(make_config(config=str(cfg), http="0.0.0.0:0",
                             api_token="s3cret-0123456789abcdef"))
    await gw.start()
    try:
        comp = component(gw)
        assert comp.client is not None and await comp.client.wait_connected(5.0)
        base = f"http://127.0.0.1:{gw.http_address[1]}"
        async with aiohttp.ClientSession() as s:
            body = {"to": "+15550005555", "from": "+15559990000", "tenant": "acme"}
            async with s.post(f"{base}/v1/calls", json=body) as r:
                assert r.status == 401
            async with s.post(f"{base}/v1/calls", json=body,
                              headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            auth = {"Authorization": "Bearer s3cret-0123456789abcdef"}
            async with s.post(f"{base}/v1/calls", json=body, headers=auth) as r:
                assert r.status == 201
                cid = (await r.json())["id"]
            async with s.post(f"{base}/v1/calls", data=b"{", headers=auth) as r:
                assert r.status == 400 and "error" in await r.json()
            async with s.get(f"{base}/v1/calls/nope", headers=auth) as r:
                assert r.status == 404
            await wait_status(gw, cid, CallStatus.BUSY)
            async with s.get(f"{base}/v1/calls?status=busy&tenant=acme", headers=auth) as r:
                assert [c["id"] for c in (await r.json())["calls"]] == [cid]
            async with s.get(f"{base}/v1/calls/{cid}", headers=auth) as r:
                assert (await r.json())["status"] == "busy"
    finally:
        await gw.shutdown(grace=0)
        await sim.stop()


async def test_burst_of_short_calls_never_loses_a_start_or_an_end(
        caplog: pytest.LogCaptureFixture) -> None:
    from audiosocket_gw.testing.simulator.pbx import run_simulation

    gw = Gateway(make_config(allow_unregistered=True))
    tracker = component(gw).tracker
    tracker._ops = asyncio.Queue(4)  # a small bound: the burst below overflows it
    await gw.start()
    try:
        report = await run_simulation(*gw.audiosocket.address, calls=60, seconds=0.05)
        ids = [c.call_id for c in report.calls]
        assert all(c.connected for c in report.calls)
        async with asyncio.timeout(10):
            while True:
                recs = [await gw.store.get_call(cid) for cid in ids]
                if all(r is not None and r.is_terminal for r in recs):
                    break
                await asyncio.sleep(20 * MS)
        assert await gw.store.active_calls() == []
        assert not [r for r in caplog.records if "queue full" in r.getMessage()]
    finally:
        await gw.shutdown(grace=0)


async def test_foreign_channels_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, ring_s=10 * MS, talk_s=30.0) as (gw, sim):
        comp = component(gw)
        cid = await comp.provider.start_outbound_call("acme", "+15550006666", "+15559990000")
        await wait_status(gw, cid, CallStatus.IN_PROGRESS)
        # A busy PBX: channels that are not ours, some still up, some hung up, some
        # running another gateway's AudioSocket.
        for i in range(300):
            ch = sim._new_channel(f"99.{i}", f"PJSIP/other-{i:08x}", "from-internal", "100")
            sim._newstate(ch, 6)
            if i % 3 == 1:
                sim._newexten(ch, "AudioSocket",
                              f"00000000-0000-4000-8000-{i:012d},10.0.0.9:9092")
            if i % 3 != 0:
                sim.end_channel(ch.uniqueid, 16)
        # Events are handled in order: once a marker sent last has reached the
        # tracker's listeners, every event of the burst has been handled.
        caught_up = asyncio.Event()
        gw.events.ami_message.connect(
            lambda m: caught_up.set() if m.get("UserEvent") == "burst-done" else None)
        sim.emit("UserEvent", [("UserEvent", "burst-done")])
        async with asyncio.timeout(5):
            await caught_up.wait()
        assert list(comp.tracker.channels) == [cid]
        # A resync (CoreShowChannels lists the foreign live channels) keeps none either.
        await comp.tracker.resync()
        assert list(comp.tracker.channels) == [cid]
        sim.end_channel(cid, 16)
        await wait_status(gw, cid, CallStatus.COMPLETED)
        assert comp.tracker.channels == {}


_ROOT = Path(__file__).resolve().parent.parent.parent
_CRASHING_GATEWAY = """
import asyncio, sys
from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.gateway import Gateway
from tests.helpers import make_config

async def main():
    gw = Gateway(make_config(data_dir=sys.argv[1]))
    gw.component(CallTracker).alive_interval_s = float(sys.argv[2])
    await gw.start()
    print("%s %d" % gw.audiosocket.address, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_calls_of_a_killed_gateway_end_when_last_known_alive() -> None:
    import math
    import os
    import signal
    import sys
    import time

    from audiosocket_gw import audiosocket as asp
    from audiosocket_gw.store.sqlite import SqliteCallStore
    from tests.helpers import RawPeer, running_gateway

    data_dir = tempfile.mkdtemp(prefix="aigw-kill-")
    root = _ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_AMI")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_GATEWAY, data_dir, "0.1", cwd=root, env=env,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            host, port = (await proc.stdout.readline()).decode().split()
        peer = await RawPeer.connect((host, int(port)))
        cid = peer.send_uuid()
        store = SqliteCallStore(Path(data_dir) / "aigw.sqlite")
        await store.open()
        try:
            async with asyncio.timeout(5):
                while True:  # talk for 0.5 s after the answer (heartbeats every 0.1 s)
                    peer.send(asp.encode_audio(bytes(320)))
                    rec = await store.get_call(cid)
                    if rec is not None and rec.answered_at is not None \
                            and time.time() - rec.answered_at > 0.5:
                        break
                    await asyncio.sleep(20 * MS)
        finally:
            await store.close()
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)  # kill -9: no shutdown, no ends written
        await proc.wait()
        await peer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await asyncio.sleep(1000 * MS)  # downtime before the restart
    async with running_gateway(data_dir=data_dir) as gw:
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.status is CallStatus.COMPLETED
        assert rec.hangup_reason == "gateway-restart"
        assert rec.ended_at is not None and rec.answered_at is not None
        assert rec.duration_s is not None and rec.billable_s is not None
        # Ended at the last heartbeat (every 0.1 s), not at the restart 1 s later.
        assert killed_at - 0.1 - 300 * MS <= rec.ended_at <= killed_at
        assert rec.duration_s <= killed_at - rec.created_at
        assert rec.billable_s <= math.ceil(killed_at - rec.answered_at)


async def test_gateway_reason_wins_when_amis_hangup_overtakes_the_audiosocket_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from audiosocket_gw.ami.protocol import AmiMessage

    async with stack(monkeypatch, connect=True, ring_s=20 * MS, talk_s=5.0) as (gw, sim):
        comp = component(gw)
        cid = await comp.provider.start_outbound_call("acme", "+15550007777", "+15559990000")
        await wait_status(gw, cid, CallStatus.IN_PROGRESS)
        async with asyncio.timeout(3):
            while cid not in gw.audiosocket.calls:
                await asyncio.sleep(10 * MS)
        tracker = comp.tracker
        # Asterisk's Hangup (after our 00 00 00 or Hangup action) is handled before the
        # tracker's worker gets to the AudioSocket end: an order a loaded loop produces.
        hangup = AmiMessage((("Event", "Hangup"), ("Uniqueid", cid), ("Cause", "16"),
                             ("Channel", tracker.channels.get(cid, "PJSIP/x"))))
        live = gw.audiosocket.calls[cid]
        async with gw.status._lock:  # the one status writer
            tracker._ops.put_nowait(("start", live))  # keeps the worker busy (a no-op)
            await asyncio.sleep(20 * MS)
            live.hangup("api-hangup")  # its "end" op waits behind the no-op...
            ami = asyncio.ensure_future(tracker.handle_event(hangup))
            await asyncio.sleep(20 * MS)  # ...and the AMI Hangup gets the lock first
        await ami
        assert await wait_status(gw, cid, CallStatus.COMPLETED) is CallStatus.COMPLETED
        await tracker._ops.join()
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.hangup_reason == "api-hangup"
        assert rec.hangup_cause == 16
