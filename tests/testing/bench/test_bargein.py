"""The barge-in benchmark, run small: a real gateway process, the local bot, 2 calls."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiosocket_gw.testing.bench.bargein import (
    HeardCall,
    SimCaller,
    caller_audio,
    measure_barge_in,
    pair_sessions,
)

SILENT = b"\x00" * 320
LOUD = np.full(160, 5000, dtype="<i2").tobytes()


async def test_measure_barge_in_small() -> None:
    figures = await measure_barge_in(calls=2, seconds=3.0)
    assert figures["calls"] == 2
    assert figures["ok"] == 2
    assert figures["cut_max_ms"] is not None and figures["cut_max_ms"] < 300
    assert figures["first_audio_p99_ms"] is not None and figures["first_audio_p99_ms"] < 1000
    assert figures["truncates"] == 2
    assert sum(figures["barge_ins_by_source"].values()) == 2
    # Every call is paired with its own bot session and hears the bot's reply.
    assert figures["paired"] == 2 and figures["replies"] == 2
    cut = [figures[f"cut_{k}_ms"] for k in ("p50", "p95", "p99", "max")]
    assert 0 < cut[0] <= cut[1] <= cut[2] <= cut[3]
    # TTFA overhead: the caller hears the greeting after the bot sent it (same monotonic
    # clock), within a pacer period plus processing (loose: other tests share the CPU).
    p50, p95 = figures["ttfa_overhead_p50_ms"], figures["ttfa_overhead_p95_ms"]
    assert 0 < p50 <= p95 <= figures["ttfa_overhead_max_ms"] < 250
    assert figures["first_audio_p50_ms"] >= p50
    # Response as heard = gateway in + bot (its 400 ms VAD wait, minus up to one 40 ms
    # append of silence already there, less if a loaded gateway sent appends in a burst)
    # + gateway out. With 2 calls p50 is the mean, so
    # the parts add up.
    silence = figures["bot_silence_ms"]
    assert silence == 400
    response, bot = figures["response_p50_ms"], figures["response_bot_p50_ms"]
    gateway = figures["response_gateway_p50_ms"]
    assert silence - 200 <= bot <= figures["response_bot_p95_ms"] < silence + 200
    assert 0 < gateway <= figures["response_gateway_p95_ms"] < 300
    assert response == pytest.approx(bot + gateway, abs=0.3)
    assert figures["response_gateway_in_p50_ms"] >= 0
    assert figures["response_gateway_out_p50_ms"] > 0
    assert response <= figures["response_p95_ms"] < silence + 500
    assert figures["cpu_ms_per_call_s"] is not None and figures["cpu_ms_per_call_s"] > 0


def test_pair_sessions_by_time_window() -> None:
    calls = [10.0, 10.1, 10.2, 10.3]
    assert pair_sessions(calls, [10.33, 10.01, 10.22, 10.11]) == [1, 3, 2, 0]
    # Call 1's session missing; call 2 has two sessions in its window (ambiguous).
    sessions = [10.31, 10.005, 10.21, 10.25, 99.0]
    assert pair_sessions(calls, sessions) == [1, None, None, None]
    assert pair_sessions([], [1.0]) == []
    # A session before its call connected belongs to no call.
    assert pair_sessions([5.0], [4.9]) == [None]
    assert pair_sessions([5.0, 6.0], [4.9, 6.5]) == [None, 1]
    # One session per call but the first opened late (after call 1 connected): in order.
    assert pair_sessions([1.0, 1.1], [1.15, 1.16]) == [0, 1]
    # ... unless that would pair a session with a call that connected after it opened.
    assert pair_sessions([1.0, 1.1, 1.2], [1.15, 1.16, 1.17]) == [None] * 3


def test_heard_call_first_audio_and_stop_time() -> None:
    heard = HeardCall("c", started=100.0)
    heard.frames = [(100.01, SILENT), (100.03, LOUD), (100.05, SILENT), (100.07, LOUD)]
    assert heard.first_audio_at() == 100.03
    assert heard.first_audio_at(after=100.04) == 100.07
    assert heard.first_audio_at(after=100.08) is None
    assert heard.first_audio_s() == pytest.approx(0.03)

    caller = SimCaller("127.0.0.1", 1, caller_audio(0.2, [(0.05, 0.1)]))
    caller.report.sent = [200.0 + 0.02 * n for n in range(8)]
    assert caller.onset(0.05) == pytest.approx(200.04)  # frame 2 holds the onset
    assert caller.stop_time(0.1) == pytest.approx(200.1)  # frame 5 is the first silent one
    assert caller.stop_time(0.105) == pytest.approx(200.12)  # speech reaches into frame 5
    assert caller.stop_time(0.2) is None  # never sent
    assert math.isclose(caller.stop_time(0.0) or -1, 200.0)
