"""The barge-in benchmark, run small: a real gateway process, the local bot, 2 calls."""

from __future__ import annotations

from audiosocket_gw.bench_bargein import measure_barge_in


async def test_measure_barge_in_small() -> None:
    figures = await measure_barge_in(calls=2, seconds=3.0)
    assert figures["calls"] == 2
    assert figures["ok"] == 2
    assert figures["cut_max_ms"] is not None and figures["cut_max_ms"] < 300
    assert figures["first_audio_p99_ms"] is not None and figures["first_audio_p99_ms"] < 1000
    assert figures["truncates"] == 2
    assert sum(figures["barge_ins_by_source"].values()) == 2
