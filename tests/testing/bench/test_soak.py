"""The soak, CI size: 60 s, 30 concurrent mixed calls, one of each fault (every 12 s).

A real gateway process (AMI pointed at the AMI simulator), the local Realtime bot and the
fake Twilio app in processes of their own, real sockets throughout. Bounds are generous
for a loaded 2-core machine but each still catches its defect: a healthy call dropped,
a record left active, a socket not closed (fds after every call ended vs before the
first), memory growing by far more than a minute of calls needs. When one fails, the
message is the soak's own report, which says why.
"""

from __future__ import annotations

import pytest

from audiosocket_gw.testing.bench.soak import (
    FAULTS,
    Bounds,
    SoakConfig,
    evaluate,
    run_soak,
    slope_per_minute,
    summary_text,
)

CI_BOUNDS = Bounds(max_dropped=0, max_stuck=0, max_fd_growth=10,
                   max_fd_slope_per_min=None, max_rss_slope_mib_per_min=None,
                   max_rss_growth_mib=150.0)


def test_slope_per_minute() -> None:
    assert slope_per_minute([(0.0, 1.0), (30.0, 2.0)]) is None
    assert slope_per_minute([(0.0, 1.0), (30.0, 2.0), (60.0, 3.0)]) == pytest.approx(2.0)
    assert slope_per_minute([(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)]) == pytest.approx(0.0)


def _report(**gateway: object) -> dict[str, object]:
    g = {"fds_before": 15, "fds_after": 16, "fd_slope_per_min": 0.0,
         "rss_slope_mib_per_min": 0.1, "rss_first_steady_mib": 70.0, "rss_after_mib": 72.0}
    g.update(gateway)
    return {"dropped": 0, "dropped_calls": [], "stuck": 0, "stuck_records": [], "gateway": g}


def test_evaluate_says_why() -> None:
    assert evaluate(_report(), Bounds()) == {"ok": True, "failures": []}
    leak = evaluate(_report(fds_after=60), Bounds())
    assert not leak["ok"] and "fds grew by 45" in leak["failures"][0]
    rss = evaluate(_report(rss_slope_mib_per_min=8.0), Bounds())
    assert "RSS rose 8.0 MiB/min" in rss["failures"][0]
    assert evaluate(_report(rss_slope_mib_per_min=8.0), CI_BOUNDS)["ok"]
    dropped = {**_report(), "dropped": 2, "dropped_calls": [{"call_id": "x"}]}
    assert "2 dropped calls" in evaluate(dropped, Bounds())["failures"][0]


@pytest.mark.timeout(300)
async def test_soak_one_minute_thirty_calls() -> None:
    report = await run_soak(SoakConfig(minutes=1.0, calls=30, fault_every_s=12.0),
                            bounds=CI_BOUNDS)
    text = summary_text(report)
    print(text)
    assert [f["fault"] for f in report["faults"]] == list(FAULTS), text
    # Each fault really happened: sessions dropped, AMI back, a caller stalled, a flood.
    ai, ami, stall, flood = report["faults"]
    assert ai["bot_sessions_dropped"] >= 1 and ai["app_sessions_dropped"] >= 1, text
    assert ami["ami_reconnect_s"] is not None, text
    assert stall.get("targets"), text
    assert flood["events"] > 0, text
    assert report["calls_started"] > 30, text  # calls ended and were replaced
    assert report["gaps"]["frames_received"] > 30 * 40 * 50 * 0.8, text
    assert report["verdict"]["ok"], text
