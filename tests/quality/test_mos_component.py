"""MosMonitor on a real in-process gateway: real AudioSocket calls, recorded AMI events.

The AMI side is the recorded inbound call of ``tests/ami/fixtures/inbound_call.txt``
(parsed by our AMI codec, fed to ``on_ami_event`` as the AMI client will); the
AudioSocket side is a real TCP peer speaking as Asterisk does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.ami.protocol import AmiMessage, AmiParser
from audiosocket_gw.config import ConfigError
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.quality.cost import CostMeter
from audiosocket_gw.quality.emodel import estimate_mos
from audiosocket_gw.quality.mos import MosMonitor, gateway_loss
from audiosocket_gw.quality.rtcp import ASTERISK_TO_CALLER, CALLER_TO_ASTERISK, MosTracker
from audiosocket_gw.store.base import CallRecord
from tests.helpers import MS, RawPeer, make_config, running_gateway, until

FIXTURE = Path(__file__).parents[1] / "ami" / "fixtures" / "inbound_call.txt"
CALL_ID = "3f1c9a52-7d4e-4b8a-9c61-2e5f0a7b1d34"  # the fixture's AudioSocket UUID


def fixture_messages() -> list[AmiMessage]:
    return AmiParser().feed(FIXTURE.read_bytes())


def split_at_hangup(msgs: list[AmiMessage]) -> tuple[list[AmiMessage], list[AmiMessage]]:
    """(events while the call is up, the hangup tail: QoS VarSets and Hangup)."""
    i = next(i for i, m in enumerate(msgs) if m.event == "SoftHangupRequest")
    return msgs[:i], msgs[i:]


def monitor_of(gw: Gateway) -> MosMonitor:
    return next(c for c in gw.components if isinstance(c, MosMonitor))


def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for fam in text_string_to_metric_families(generate_latest(gw.metrics.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with running_gateway() as gateway:
        yield gateway


async def create_record(gw: Gateway, call_id: str) -> None:
    await gw.store.create_call(CallRecord(
        id=call_id, tenant="default", agent="default", direction="inbound",
        from_="+15551234567", to="+15551230000", created_at=time.time(),
    ))


async def connect(gw: Gateway, call_id: str) -> RawPeer:
    peer = await RawPeer.connect(gw.audiosocket.address)
    peer.send_uuid(call_id)
    await until(lambda: call_id in gw.audiosocket.calls)
    return peer


async def hang_up(gw: Gateway, peer: RawPeer, call_id: str) -> None:
    peer.send(asp.encode_hangup())
    await peer.writer.drain()
    await until(lambda: call_id not in gw.audiosocket.calls)
    await peer.close()


async def test_recorded_call_scores_both_directions_and_waits_for_the_ami_hangup(
    gw: Gateway,
) -> None:
    mon = monitor_of(gw)
    await create_record(gw, CALL_ID)
    live, tail = split_at_hangup(fixture_messages())
    peer = await connect(gw, CALL_ID)
    for msg in live:
        mon.on_ami_event(msg)
    await hang_up(gw, peer, CALL_ID)
    # The AudioSocket is gone but Asterisk's QoS VarSets and Hangup are not in yet.
    await asyncio.sleep(20 * MS)
    assert CALL_ID not in mon.results
    for msg in tail:
        mon.on_ami_event(msg)
    await mon.drain()

    # Expected: the same recorded RTCP events through a bare tracker (a caller that
    # sent no audio got no bot audio, so the gateway added no loss).
    expected = MosTracker()
    for msg in live:
        expected.add_event(msg.to_dict())
    assert expected.samples(CALLER_TO_ASTERISK) == 2
    assert expected.samples(ASTERISK_TO_CALLER) == 1
    q = mon.results[CALL_ID]
    assert q.inbound is not None and q.outbound is not None
    assert q.inbound.source == q.outbound.source == "rtcp"
    assert q.inbound.mean_mos == pytest.approx(expected.mean_mos(CALLER_TO_ASTERISK))
    assert q.inbound.min_mos == pytest.approx(expected.min_mos(CALLER_TO_ASTERISK))
    assert q.outbound.mean_mos == pytest.approx(expected.mean_mos(ASTERISK_TO_CALLER))
    assert q.inbound.mes == pytest.approx(expected.mean_mes(CALLER_TO_ASTERISK)) == 80.0
    assert q.outbound.mes == pytest.approx(86.4)
    # The out stream: 96 units = 12 ms jitter, 5/256 loss, 42 ms RTT.
    assert q.outbound.mean_mos == pytest.approx(
        estimate_mos(rtt_s=0.042, jitter_ms=12.0, loss_fraction=5 / 256), abs=1e-9)
    assert 4.0 < q.outbound.mean_mos < 4.41

    rec = await gw.store.get_call(CALL_ID)
    assert rec is not None
    assert rec.mos_in_mean == pytest.approx(q.inbound.mean_mos, abs=1e-3)
    assert rec.mos_in_min == pytest.approx(q.inbound.min_mos, abs=1e-3)
    assert rec.mos_out_mean == pytest.approx(q.outbound.mean_mos, abs=1e-3)
    assert rec.mos_out_min == pytest.approx(q.outbound.min_mos, abs=1e-3)
    events = [e for e in await gw.store.events(CALL_ID) if e.kind == "quality"]
    assert len(events) == 1 and events[0].data["out"]["source"] == "rtcp"

    m = scrape(gw)
    labels_in = (("direction", "in"), ("tenant", "default"))
    assert m[("aigw_call_mos_count", labels_in)] == 1
    assert m[("aigw_call_mos_sum", labels_in)] == pytest.approx(q.inbound.mean_mos)
    assert m[("aigw_call_mes_count", (("direction", "out"), ("tenant", "default")))] == 1
    assert m[("aigw_rtcp_reports_total", (("direction", "in"),))] == 2
    assert m[("aigw_rtcp_reports_total", (("direction", "out"),))] == 1
    assert m[("aigw_call_mos_estimates_total", (("direction", "out"), ("source", "rtcp")))] == 1

    # The calls API shows the figures with their source and the status history.
    host, port = gw.http_address
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{host}:{port}/v1/calls/{CALL_ID}") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["quality"]["mos_in_source"] == body["quality"]["mos_out_source"] == "rtcp"
    assert body["quality"]["mos_out_mean"] == pytest.approx(q.outbound.mean_mos, abs=1e-3)
    assert [h["status"] for h in body["status_history"]] == ["in-progress", "completed"]


async def test_short_call_without_rtcp_uses_rtpaudioqos(gw: Gateway) -> None:
    mon = monitor_of(gw)
    msgs = [m for m in fixture_messages() if not (m.event or "").startswith("RTCP")]
    live, tail = split_at_hangup(msgs)
    peer = await connect(gw, CALL_ID)
    for msg in live:
        mon.on_ami_event(msg)
    await hang_up(gw, peer, CALL_ID)
    for msg in tail:
        mon.on_ami_event(msg)
    await mon.drain()
    q = mon.results[CALL_ID]
    assert q.inbound is not None and q.outbound is not None
    assert q.inbound.source == "rtpaudioqos" and q.inbound.samples == 1
    # RTPAUDIOQOS: lp=12 rxcount=488 rxjitter=0.020 s, rlp=3 txcount=600 txjitter=0.012 s,
    # rtt=0.042 s; MES from RTPAUDIOQOSMES avgrxmes / avgtxmes.
    assert q.inbound.mean_mos == pytest.approx(
        estimate_mos(rtt_s=0.042, jitter_ms=20.0, loss_fraction=12 / 500))
    assert q.outbound.mean_mos == pytest.approx(
        estimate_mos(rtt_s=0.042, jitter_ms=12.0, loss_fraction=3 / 603))
    assert q.inbound.mes == pytest.approx(80.017056)
    assert q.outbound.mes == pytest.approx(86.4)


async def test_call_without_ami_gets_a_gateway_only_estimate(gw: Gateway) -> None:
    mon = monitor_of(gw)
    call_id = "0b8e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
    await create_record(gw, call_id)
    peer = await connect(gw, call_id)
    frame = asp.encode_audio(bytes(320))
    for _ in range(10):  # the echo backend plays these back
        peer.send(frame)
        await asyncio.sleep(20 * MS)
    await hang_up(gw, peer, call_id)
    await mon.drain()
    q = mon.results[call_id]  # finalized at once: AMI never mentioned the call
    assert q.inbound is None
    assert q.outbound is not None and q.outbound.source == "gateway"
    assert q.outbound.mean_mos == pytest.approx(estimate_mos(
        rtt_s=None, jitter_ms=q.lateness_mean_ms, loss_fraction=q.gateway_loss,
        extra_delay_ms=q.lateness_mean_ms))
    assert 1.0 <= q.outbound.mean_mos <= 4.41
    rec = await gw.store.get_call(call_id)
    assert rec is not None and rec.mos_in_mean is None
    assert rec.mos_out_mean == pytest.approx(q.outbound.mean_mos, abs=1e-3)
    m = scrape(gw)
    assert m[("aigw_call_mos_estimates_total", (("direction", "out"), ("source", "gateway")))] == 1
    # Call time by tenant came from the same call end (CostMeter).
    assert m[("aigw_call_seconds_total", (("tenant", "default"),))] > 0.15


async def test_ami_without_hangup_is_finalized_after_the_grace(gw: Gateway) -> None:
    mon = monitor_of(gw)
    mon.hangup_grace_s = 50 * MS
    live, _ = split_at_hangup(fixture_messages())
    peer = await connect(gw, CALL_ID)
    for msg in live:
        mon.on_ami_event(msg)
    await hang_up(gw, peer, CALL_ID)
    assert CALL_ID not in mon.results
    await until(lambda: CALL_ID in mon.results)
    assert mon.results[CALL_ID].inbound is not None


def _event(**headers: str) -> AmiMessage:
    return AmiMessage(tuple(headers.items()))


async def test_originate_channel_id_and_dial_channel_driver_correlate(gw: Gateway) -> None:
    mon = monitor_of(gw)
    originated = "11111111-2222-4333-8444-555555555555"
    dialed = "66666666-7777-4888-8999-aaaaaaaaaaaa"
    rr = dict(RTT="0.010", Report0FractionLost="0", Report0IAJitter="8")
    p1 = await connect(gw, originated)
    p2 = await connect(gw, dialed)
    # Originate with ChannelId = call id: Uniqueid is the call id, no Newexten needed.
    mon.on_ami_event(_event(Event="RTCPReceived", Uniqueid=originated, Linkedid=originated, **rr))
    # Dial(AudioSocket/host:port/uuid/c(slin)) on a PJSIP channel.
    mon.on_ami_event(_event(Event="Newexten", Uniqueid="1718.5", Linkedid="1718.5",
                            Application="Dial",
                            AppData=f"AudioSocket/127.0.0.1:9092/{dialed}/c(slin),30"))
    mon.on_ami_event(_event(Event="RTCPReceived", Uniqueid="1718.5", Linkedid="1718.5", **rr))
    # Unknown channel and a malformed report are counted, not fatal.
    mon.on_ami_event(_event(Event="RTCPReceived", Uniqueid="9.9", Linkedid="9.9", **rr))
    mon.on_ami_event(_event(Event="RTCPSent", Uniqueid="1718.5", Report0FractionLost="x",
                            Report0IAJitter="1"))
    for cid in (originated, dialed):
        mon.on_ami_event(_event(Event="Hangup", Uniqueid=cid if cid == originated else "1718.5"))
    await hang_up(gw, p1, originated)
    await hang_up(gw, p2, dialed)
    await mon.drain()
    want = estimate_mos(rtt_s=0.010, jitter_ms=1.0, loss_fraction=0.0)
    for cid in (originated, dialed):
        out = mon.results[cid].outbound
        assert out is not None and out.source == "rtcp"
        assert out.mean_mos == pytest.approx(want)
    m = scrape(gw)
    assert m[("aigw_rtcp_reports_dropped_total", (("reason", "unmatched"),))] == 1
    assert m[("aigw_rtcp_reports_dropped_total", (("reason", "malformed"),))] == 1


async def test_state_is_bounded(gw: Gateway) -> None:
    mon = monitor_of(gw)
    mon.max_calls = 2
    for i in range(50):
        cid = f"00000000-0000-4000-8000-{i:012d}"
        mon.on_ami_event(_event(Event="Newexten", Uniqueid=f"1.{i}", Linkedid=f"1.{i}",
                                Application="AudioSocket", AppData=f"{cid},127.0.0.1:9092"))
    assert len(mon._calls) == 2
    assert len(mon._channels) <= 8


def test_gateway_loss() -> None:
    assert gateway_loss(0, 0, 0, 0) == 0.0
    assert gateway_loss(0, 100, 0, 500) == 0.0  # missed ticks while the bot was silent
    assert gateway_loss(10, 0, 90, 500) == pytest.approx(0.1)
    # 40 missed ticks, the bot active on 100 of 500 ticks: 8 hit speech.
    assert gateway_loss(0, 40, 100, 500) == pytest.approx(8 / 108)
    assert gateway_loss(5, 0, 0, 10) == 1.0


def test_cost_meter_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_COST_TRUNK_PER_MIN", "0.004")
    monkeypatch.setenv("AIGW_COST_AI_PER_MIN", "0.06")
    gw = Gateway(make_config())
    meter = next(c for c in gw.components if isinstance(c, CostMeter))
    assert meter.call_cost(2.0, "openai") == pytest.approx(0.128)
    assert meter.call_cost(2.0, "echo") == pytest.approx(0.008)
    rates = {k[1]: v for k, v in scrape(gw).items() if k[0] == "aigw_cost_per_minute_dollars"}
    assert rates == {(("component", "trunk"),): 0.004, (("component", "ai"),): 0.06}
    monkeypatch.setenv("AIGW_COST_AI_PER_MIN", "-1")
    with pytest.raises(ConfigError, match="AIGW_COST_AI_PER_MIN"):
        Gateway(make_config())
