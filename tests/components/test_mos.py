"""MosMonitor alone: a real Call, the recorded AMI events of an inbound call on
``events.ami_message``, the MOS stored on the record and observed in the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audiosocket_gw.ami.protocol import AmiMessage, AmiParser
from audiosocket_gw.quality.emodel import estimate_mos
from audiosocket_gw.quality.mos import MosMonitor
from audiosocket_gw.quality.rtcp import ASTERISK_TO_CALLER, CALLER_TO_ASTERISK, MosTracker
from tests.components.context import Harness, make_context, open_call

FIXTURE = Path(__file__).parents[1] / "ami" / "fixtures" / "inbound_call.txt"
CALL_ID = "3f1c9a52-7d4e-4b8a-9c61-2e5f0a7b1d34"  # the fixture's AudioSocket UUID


def recorded() -> tuple[list[AmiMessage], list[AmiMessage]]:
    """(the events while the call is up, the hangup tail: QoS VarSets and Hangup)."""
    msgs = AmiParser().feed(FIXTURE.read_bytes())
    i = next(i for i, m in enumerate(msgs) if m.event == "SoftHangupRequest")
    return msgs[:i], msgs[i:]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_context(tmp_path) as harness:
        yield harness


async def admit(h: Harness, call_id: str | None = None) -> str:
    adm = h.ctx.admission
    found = adm.resolve_did("+15551230000")
    assert found is not None
    admitted = await adm.admit(*found, direction="inbound", from_="+15557654321",
                               to="+15551230000", call_id=call_id)
    return admitted.call_id


def sample(h: Harness, name: str, **labels: str) -> float | None:
    return h.ctx.metrics.registry.get_sample_value(name, labels)


async def test_rtcp_reports_give_the_call_its_mos(h: Harness) -> None:
    mon = MosMonitor(h.ctx)
    await mon.start()
    await admit(h, CALL_ID)
    live, tail = recorded()
    call = await open_call(h, CALL_ID)
    for msg in live:
        h.ctx.events.ami_message.emit(msg)
    call.end("caller-hangup", outcome="completed", send_hangup=False)
    assert CALL_ID not in mon.results  # waits for the RTP channel's Hangup
    for msg in tail:
        h.ctx.events.ami_message.emit(msg)
    await mon.drain()

    expected = MosTracker()
    for msg in live:
        expected.add_event(msg.to_dict())
    assert expected.samples(CALLER_TO_ASTERISK) == 2
    assert expected.samples(ASTERISK_TO_CALLER) == 1
    # 96 units = 12 ms jitter, 5/256 loss, 42 ms RTT (the caller got no bot audio).
    out_mos = estimate_mos(rtt_s=0.042, jitter_ms=12.0, loss_fraction=5 / 256)
    assert expected.mean_mos(ASTERISK_TO_CALLER) == pytest.approx(out_mos)
    in_mean = expected.mean_mos(CALLER_TO_ASTERISK)
    assert in_mean is not None

    rec = await h.store.get_call(CALL_ID)
    assert rec is not None
    assert rec.mos_in_mean == pytest.approx(in_mean, abs=1e-3)
    assert rec.mos_in_min == pytest.approx(expected.min_mos(CALLER_TO_ASTERISK), abs=1e-3)
    assert rec.mos_out_mean == pytest.approx(out_mos, abs=1e-3)
    assert rec.mos_out_min == pytest.approx(out_mos, abs=1e-3)
    quality = [e for e in await h.store.events(CALL_ID) if e.kind == "quality"]
    assert len(quality) == 1
    assert quality[0].at == h.clock.wall()  # the context's clock
    assert quality[0].data["out"]["source"] == "rtcp"

    assert sample(h, "aigw_call_mos_count", direction="in", tenant="acme") == 1
    assert sample(h, "aigw_call_mos_sum", direction="in", tenant="acme") == pytest.approx(
        in_mean)
    assert sample(h, "aigw_call_mos_sum", direction="out", tenant="acme") == pytest.approx(
        out_mos)
    assert sample(h, "aigw_call_mes_count", direction="out", tenant="acme") == 1
    assert sample(h, "aigw_rtcp_reports_total", direction="in") == 2
    assert sample(h, "aigw_rtcp_reports_total", direction="out") == 1
    await mon.stop()


async def test_call_without_ami_gets_a_gateway_estimate_only_out(h: Harness) -> None:
    mon = MosMonitor(h.ctx)
    await mon.start()
    cid = await admit(h)
    call = await open_call(h, cid)
    call.end("caller-hangup", outcome="completed", send_hangup=False)
    await mon.drain()  # finalized at once: AMI never mentioned the call
    rec = await h.store.get_call(cid)
    assert rec is not None
    assert rec.mos_in_mean is None and rec.mos_in_min is None
    # Nothing lost, nothing late: the E-model's ceiling for G.711 and 25 ms codec delay.
    perfect = estimate_mos(rtt_s=None, jitter_ms=0.0, loss_fraction=0.0, extra_delay_ms=0.0)
    assert rec.mos_out_mean == pytest.approx(perfect, abs=1e-3)
    assert sample(h, "aigw_call_mos_count", direction="out", tenant="acme") == 1
    assert sample(h, "aigw_call_mos_count", direction="in", tenant="acme") is None
    assert sample(h, "aigw_call_mos_estimates_total", direction="out", source="gateway") == 1
    await mon.stop()


async def test_unmatched_rtcp_is_counted_and_stop_unsubscribes(h: Harness) -> None:
    mon = MosMonitor(h.ctx)
    await mon.start()
    assert len(h.ctx.events.ami_message) == 1
    h.ctx.events.ami_message.emit(AmiMessage((
        ("Event", "RTCPReceived"), ("Uniqueid", "9.9"), ("Linkedid", "9.9"), ("RTT", "0.01"),
        ("Report0FractionLost", "0"), ("Report0IAJitter", "8"))))
    assert sample(h, "aigw_rtcp_reports_dropped_total", reason="unmatched") == 1
    await mon.stop()
    assert len(h.ctx.events.ami_message) == len(h.ctx.events.started) == 0
