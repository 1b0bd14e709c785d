"""The bench's whole-tick delay analysis on arrivals with known delays."""

from __future__ import annotations

import numpy as np
import pytest

from audiosocket_gw.testing.bench.ticks import tick_delays

P = 0.020


def arrivals(calls: int, ticks: int, start: float, delays: dict[tuple[int, int], float],
             seed: int = 1) -> list[list[float]]:
    """Per call, a frame every tick at the call's own offset (spread over 3 ms from
    ``start``'s phase), with 20 us of noise, plus ``delays[(tick, call)]`` seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(calls):
        offset = start + c * 3e-3 / calls
        t = offset + np.arange(ticks) * P + rng.normal(0, 20e-6, ticks)
        for (k, cc), d in delays.items():
            if cc == c:
                t[k] += d
        out.append(t.tolist())
    return out


@pytest.mark.parametrize("start", [1000.0, 1000.0185])  # offsets straddle a tick edge
def test_whole_tick_delays_are_told_from_partial_and_single_ones(start: float) -> None:
    calls, ticks = 100, 400
    delays: dict[tuple[int, int], float] = {}
    for k, size in ((50, 2e-3), (120, 3e-3), (300, 1.5e-3)):  # the tick started late
        delays.update({(k, c): size for c in range(calls)})
    for k in (200, 250):  # a slow write half-way: only the later half
        delays.update({(k, c): 2e-3 for c in range(50, calls)})
    delays[(350, 7)] = 4e-3  # one call's frame
    out = tick_delays(arrivals(calls, ticks, start, delays), start - 0.01, start + ticks * P)
    assert out["stalled_ticks"] == 3
    assert out["stall_p50_ms"] == pytest.approx(2.0, abs=0.1)
    assert out["stall_max_ms"] == pytest.approx(3.0, abs=0.1)
    assert out["late_in_stalls"] == pytest.approx(300 / (300 + 100 + 1), abs=0.01)
    assert out["ticks"] in (ticks, ticks + 1)


def test_no_late_frames_no_stalls() -> None:
    out = tick_delays(arrivals(20, 100, 5.0, {}), 5.0, 7.0)
    assert out["stalled_ticks"] == 0
    assert out["late_in_stalls"] is None
    assert tick_delays([], 0.0, 1.0)["ticks"] == 0
