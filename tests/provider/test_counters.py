"""``ProviderCounters``: a snapshot for the app, and the same figures for Prometheus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from audiosocket_gw.provider import ProviderCounters


def test_snapshot_and_prometheus_agree() -> None:
    c = ProviderCounters(clock=lambda: 42.0)
    c.record_call("asterisk", "rollout", tenant="acme", call_id="a")
    c.record_call("twilio", "unhealthy", tenant="acme", call_id="CA1", fallback=True)
    c.record_call("twilio", "rollout_excluded", tenant="beta", call_id="CA2")
    c.record_failure("asterisk", "http_503")
    snap = c.snapshot()
    assert snap["calls"] == {"asterisk": 1, "twilio": 2}
    assert snap["fallbacks"] == {"unhealthy": 1}
    assert snap["failures"] == {"asterisk/http_503": 1}
    assert snap["recent"][1] == {"at": 42.0, "provider": "twilio", "reason": "unhealthy",
                                 "tenant": "acme", "call_id": "CA1", "fallback": True}
    reg = CollectorRegistry()
    c.register_prometheus(reg)
    text = generate_latest(reg).decode()
    assert 'telephony_calls_total{provider="twilio",reason="unhealthy"} 1.0' in text
    assert 'telephony_fallbacks_total{reason="unhealthy"} 1.0' in text
    c.record_call("twilio", "unhealthy", fallback=True)
    assert 'telephony_fallbacks_total{reason="unhealthy"} 2.0' in generate_latest(reg).decode()
