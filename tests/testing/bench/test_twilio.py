"""The twilio-stream benchmark, run tiny: a real gateway process, the fake app, 2 calls."""

from __future__ import annotations

from audiosocket_gw.testing.bench.twilio import app_script, measure_twilio


def test_app_script_pairs_media_and_marks() -> None:
    script = app_script(1000, 200)
    assert [m["event"] for m in script] == ["media", "mark"] * 5
    assert [m["mark"]["name"] for m in script[1::2]] == [f"part-{n}" for n in range(5)]


async def test_measure_twilio_small() -> None:
    figures = await measure_twilio(calls=2, seconds=2.5)
    assert figures["calls"] == 2 and figures["ok"] == 2
    assert figures["violations"] == 0 and figures["media_dropped"] == 0
    # 1.4 s of app audio in 200 ms deltas per call: every mark's audio was heard.
    assert figures["marks_sent"] == 14
    assert figures["marks_measured"] == figures["marks_sent"]
    # An echo follows its audio's last frame, within a pacer tick (loopback, same clock).
    assert figures["mark_echo_min_ms"] >= -5.0
    assert figures["mark_echo_max_ms"] <= 40.0
    assert figures["mark_echo_p50_ms"] <= figures["mark_echo_p95_ms"] <= 40.0
    cpu = figures["cpu_ms_per_call_s"]
    assert cpu is not None and 0.0 < cpu < 500.0
