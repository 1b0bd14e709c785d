"""Tests for RTCP AMI event parsing, RTPAUDIOQOS parsing and the per-call MOS tracker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from audiosocket_gw.ami.protocol import AmiMessage, AmiParser
from audiosocket_gw.quality.emodel import mos_from_r
from audiosocket_gw.quality.rtcp import (
    ASTERISK_TO_CALLER,
    CALLER_TO_ASTERISK,
    MosTracker,
    RtcpFormatError,
    RtcpSample,
    parse_rtcp_event,
    parse_rtpaudioqos,
)

INBOUND = Path(__file__).parents[1] / "ami" / "fixtures" / "inbound_call.txt"


def inbound_messages() -> list[AmiMessage]:
    return AmiParser().feed(INBOUND.read_bytes())


def rtcp_events() -> list[dict[str, str]]:
    return [m.to_dict() for m in inbound_messages() if (m.event or "").startswith("RTCP")]


def qos_varsets() -> dict[str, str]:
    return {
        m.get("Variable", ""): m.get("Value", "")
        for m in inbound_messages()
        if m.event == "VarSet" and (m.get("Variable") or "").startswith("RTPAUDIOQOS")
    }


SENT = {
    "Event": "RTCPSent",
    "Privilege": "reporting,all",
    "Channel": "PJSIP/trunk-00000004",
    "Uniqueid": "1718027410.12",
    "Linkedid": "1718027410.12",
    "To": "203.0.113.10:17001",
    "MES": "88.1",
    "SSRC": "0x1a2b3c4d",
    "PT": "200(SR)",
    "ReportCount": "1",
    "Report0SourceSSRC": "0x5e6f7a8b",
    "Report0FractionLost": "64",
    "Report0CumulativeLost": "40",
    "Report0IAJitter": "24",
    "Report0DLSR": "0.0000",
}


# --------------------------------------------------------------------------- parse_rtcp_event


def test_rtcp_sent_from_the_fixture() -> None:
    first = parse_rtcp_event(rtcp_events()[0])
    assert first == RtcpSample(
        direction=CALLER_TO_ASTERISK,
        jitter_ms=3 / 8,  # Report0IAJitter 3 timestamp units at 8 kHz
        loss_fraction=0.0,
        rtt_s=None,
        mes=88.1,
        channel="PJSIP/trunk-00000004",
        uniqueid="1718027410.12",
        linkedid="1718027410.12",
    )


def test_rtcp_received_from_the_fixture() -> None:
    received = parse_rtcp_event(rtcp_events()[1])
    assert received is not None
    assert received.direction == ASTERISK_TO_CALLER
    assert received.jitter_ms == 12.0  # 96 / 8
    assert received.loss_fraction == 5 / 256
    assert received.rtt_s == 0.042
    assert received.mes == 86.4


def test_keys_are_case_insensitive() -> None:
    sample = parse_rtcp_event({k.lower(): v for k, v in SENT.items()})
    assert sample == parse_rtcp_event({k.upper(): v for k, v in SENT.items()})
    assert sample is not None
    assert sample.loss_fraction == 0.25  # 64 / 256
    assert sample.jitter_ms == 3.0  # 24 / 8


def test_rtt_is_ignored_on_rtcp_sent() -> None:
    sample = parse_rtcp_event({**SENT, "RTT": "0.5000"})
    assert sample is not None and sample.rtt_s is None


def test_no_report_block_gives_none() -> None:
    rr_without_blocks = {
        "Event": "RTCPReceived",
        "From": "203.0.113.10:17001",
        "RTT": "0.0100",
        "SSRC": "0x5e6f7a8b",
        "PT": "201(RR)",
        "ReportCount": "0",
    }
    assert parse_rtcp_event(rr_without_blocks) is None
    assert parse_rtcp_event({**SENT, "Report0IAJitter": ""}) is None


@pytest.mark.parametrize("event", ["Newchannel", "", "RTCPSentX"])
def test_other_events_give_none(event: str) -> None:
    assert parse_rtcp_event({**SENT, "Event": event}) is None
    no_event = {k: v for k, v in SENT.items() if k != "Event"}
    assert parse_rtcp_event(no_event) is None


def test_missing_optional_fields() -> None:
    minimal = {"Event": "RTCPReceived", "Report0FractionLost": "0", "Report0IAJitter": "0"}
    assert parse_rtcp_event(minimal) == RtcpSample(
        direction=ASTERISK_TO_CALLER,
        jitter_ms=0.0,
        loss_fraction=0.0,
        rtt_s=None,
        mes=None,
        channel=None,
        uniqueid=None,
        linkedid=None,
    )


def test_clock_rate() -> None:
    sample = parse_rtcp_event(SENT, clock_rate_hz=16000)
    assert sample is not None and sample.jitter_ms == 1.5  # 24 / 16
    with pytest.raises(ValueError):
        parse_rtcp_event(SENT, clock_rate_hz=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Report0FractionLost", "abc"),
        ("Report0FractionLost", "256"),
        ("Report0FractionLost", "-1"),
        ("Report0IAJitter", "-3"),
        ("Report0IAJitter", "nan"),
        ("MES", "high"),
        ("MES", "inf"),
    ],
)
def test_malformed_values_raise(key: str, value: str) -> None:
    with pytest.raises(RtcpFormatError) as info:
        parse_rtcp_event({**SENT, key: value})
    assert isinstance(info.value, ValueError)


def test_malformed_rtt_raises_on_received() -> None:
    with pytest.raises(RtcpFormatError):
        parse_rtcp_event({**SENT, "Event": "RTCPReceived", "RTT": "-0.1"})
    with pytest.raises(RtcpFormatError):
        parse_rtcp_event({**SENT, "Event": "RTCPReceived", "RTT": "soon"})


# --------------------------------------------------------------------------- RTPAUDIOQOS


def test_rtpaudioqos_summary_from_the_fixture() -> None:
    qos = parse_rtpaudioqos(qos_varsets()["RTPAUDIOQOS"])
    assert qos == {
        "ssrc": 439041101.0,
        "themssrc": 1584364171.0,
        "lp": 12.0,
        "rxjitter": 0.02,
        "rxcount": 488.0,
        "txjitter": 0.012,
        "txcount": 600.0,
        "rlp": 3.0,
        "rtt": 0.042,
        "rxmes": 71.934113,
        "txmes": 88.087887,
    }


def test_rtpaudioqos_padded_shapes_from_the_fixture() -> None:
    values = qos_varsets()
    loss = parse_rtpaudioqos(values["RTPAUDIOQOSLOSS"])
    assert values["RTPAUDIOQOSLOSS"].startswith("  minrxlost=000.000000;")
    assert loss["minrxlost"] == 0.0
    assert loss["maxrxlost"] == 5.078125
    assert len(loss) == 8
    rtt = parse_rtpaudioqos(values["RTPAUDIOQOSRTT"])
    assert rtt == {"minrtt": 0.042, "maxrtt": 0.042, "avgrtt": 0.042, "stdevrtt": 0.0}
    mes = parse_rtpaudioqos(values["RTPAUDIOQOSMES"])
    assert (mes["minrxmes"], mes["maxtxmes"]) == (71.934113, 86.4)
    jitter = parse_rtpaudioqos(values["RTPAUDIOQOSJITTER"])
    assert jitter["avgrxjitter"] == 0.010188 and len(jitter) == 8


def test_rtpaudioqos_is_tolerant() -> None:
    assert parse_rtpaudioqos("") == {}
    assert parse_rtpaudioqos("   ;;  ") == {}
    assert parse_rtpaudioqos(
        "  lp = 2 ;;rxjitter=0.5;novalue;=3;x=abc;stdevrxjitter=inf;y=-nan;z=1e-3"
    ) == {"lp": 2.0, "rxjitter": 0.5, "z": 0.001}


# --------------------------------------------------------------------------- MosTracker


def test_tracker_over_the_fixture_call() -> None:
    tracker = MosTracker()
    mos = [tracker.add_event(event) for event in rtcp_events()]
    # 1) RTCPSent, no RTT known yet: d = 2 * 0.375 + 25 = 25.75 ms, Id = 0.618, no loss
    #    R = 93.2 - 0.618 = 92.582
    # 2) RTCPReceived: d = 42 / 2 + 2 * 12 + 25 = 70 ms, Id = 1.68
    #    Ppl = 5 / 256 * 100 = 1.953125 %, Ie_eff = 95 * 1.953125 / 27.053125 = 6.858612
    #    R = 93.2 - 1.68 - 6.858612 = 84.661388
    # 3) RTCPSent, RTT 42 ms reused: d = 21 + 2 * 20 + 25 = 86 ms, Id = 2.064
    #    Ppl = 13 / 256 * 100 = 5.078125 %, Ie_eff = 95 * 5.078125 / 30.178125 = 15.985813
    #    R = 93.2 - 2.064 - 15.985813 = 75.150187
    expected = [mos_from_r(92.582), mos_from_r(84.661388), mos_from_r(75.150187)]
    assert mos == pytest.approx(expected, abs=1e-6)
    assert tracker.rtt_s == 0.042

    c2a = tracker.stats(CALLER_TO_ASTERISK)
    assert c2a.samples == 2
    assert c2a.min_mos == pytest.approx(expected[2], abs=1e-6)
    assert c2a.mean_mos == pytest.approx((expected[0] + expected[2]) / 2, abs=1e-6)
    assert c2a.last_mos == pytest.approx(expected[2], abs=1e-6)
    assert c2a.min_mes == 71.9
    assert c2a.mean_mes == pytest.approx((88.1 + 71.9) / 2)

    a2c = tracker.stats(ASTERISK_TO_CALLER)
    assert a2c.samples == 1
    assert a2c.min_mos == a2c.mean_mos == pytest.approx(expected[1], abs=1e-6)
    assert a2c.min_mes == a2c.mean_mes == 86.4

    assert tracker.overall_min_mos() == pytest.approx(expected[2], abs=1e-6)


def test_tracker_before_any_sample() -> None:
    tracker = MosTracker()
    for direction in (CALLER_TO_ASTERISK, ASTERISK_TO_CALLER):
        stats = tracker.stats(direction)
        assert stats.samples == 0
        assert stats.min_mos is stats.mean_mos is stats.last_mos is None
        assert stats.min_mes is stats.mean_mes is None
    assert tracker.overall_min_mos() is None
    assert tracker.rtt_s is None


def test_tracker_ignores_non_samples() -> None:
    tracker = MosTracker()
    assert tracker.add_event({"Event": "Hangup", "Cause": "0"}) is None
    assert tracker.samples(CALLER_TO_ASTERISK) == tracker.samples(ASTERISK_TO_CALLER) == 0


def test_tracker_options_reach_the_emodel() -> None:
    lossy = RtcpSample(CALLER_TO_ASTERISK, 0.0, 0.05, None, None, None, None, None)
    plain = MosTracker().add(lossy)
    no_plc = MosTracker(plc=False).add(lossy)
    delayed = MosTracker(extra_delay_ms=300.0).add(lossy)
    no_codec_delay = MosTracker(codec_delay_ms=0.0).add(lossy)
    assert no_plc < plain and delayed < plain and no_codec_delay > plain
    # d = 25 ms -> Id = 0.6; Ie_eff = 95 * 5 / 30.1 = 15.780731; R = 76.819269
    assert plain == pytest.approx(mos_from_r(76.819269), abs=1e-6)


def test_tracker_min_is_the_worst_sample() -> None:
    tracker = MosTracker()
    values = [
        tracker.add(RtcpSample(ASTERISK_TO_CALLER, j, f, 0.02, None, None, None, None))
        for j, f in [(1.0, 0.0), (40.0, 0.1), (5.0, 0.01)]
    ]
    assert tracker.min_mos(ASTERISK_TO_CALLER) == min(values) == values[1]
    assert tracker.mean_mos(ASTERISK_TO_CALLER) == pytest.approx(sum(values) / 3)
    assert tracker.min_mes(ASTERISK_TO_CALLER) is None
    assert all(1.0 <= v <= 4.5 and not math.isnan(v) for v in values)


def test_tracker_keeps_rtpaudioqos_variables() -> None:
    tracker = MosTracker()
    for name, value in qos_varsets().items():
        assert tracker.add_qos_variable(name, value)
    assert not tracker.add_qos_variable("MIXMONITOR_FILENAME", "/tmp/x.wav")
    qos = tracker.asterisk_qos
    assert sorted(qos) == [
        "RTPAUDIOQOS",
        "RTPAUDIOQOSJITTER",
        "RTPAUDIOQOSLOSS",
        "RTPAUDIOQOSMES",
        "RTPAUDIOQOSRTT",
    ]
    assert qos["RTPAUDIOQOS"]["txmes"] == 88.087887
    assert tracker.add_qos_variable("rtpaudioqosrtt", "minrtt=1;")
    assert tracker.asterisk_qos["RTPAUDIOQOSRTT"] == {"minrtt": 1.0}
