"""``make bench``'s steady-state harness: run tiny over real processes (a gateway pinned
to one core, the local bot / fake app in processes of their own), and its pure parts
(the peer-limited classification, the steady window, the README table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audiosocket_gw.cli import main as cli_main
from audiosocket_gw.testing.bench.run import run_bench
from audiosocket_gw.testing.bench.steady import (
    SETTLE_S,
    PeerBounds,
    aggregate,
    classify,
    estimate_seconds,
    profile_summary,
    py_spy_exe,
    run_steady,
    steady_table,
    window_jitter,
)

# -- pure parts ------------------------------------------------------------------------


def test_classify_flags_a_busy_peer_core_and_late_tools() -> None:
    bounds = PeerBounds(core_busy_pct=85.0, late_p99_ms=4.0, late_max_ms=40.0,
                        peer_late_p99_ms=50.0, peer_late_max_ms=150.0)
    calm = {"simulator send": {"p99_ms": 1.0, "max_ms": 9.0},
            "bot": {"p99_ms": 20.0, "max_ms": 100.0}}  # the bot runs 300 ms ahead
    assert classify(60.0, calm, bounds) == []
    assert classify(None, calm, bounds) == []  # unknown core load alone flags nothing
    busy = classify(92.0, calm, bounds)
    assert len(busy) == 1 and "92 % busy" in busy[0]
    late = classify(50.0, {"simulator loop": {"p99_ms": 6.5, "max_ms": 12.0},
                           "app": {"p99_ms": 1.0, "max_ms": 155.0},
                           "bot": {"p99_ms": None, "max_ms": None}}, bounds)
    assert late == ["simulator loop late p99 6.5 ms (> 4 ms)",
                    "app late max 155.0 ms (> 150 ms)"]
    assert classify(50.0, {"simulator send": {"p99_ms": 1.0, "max_ms": 41.0}}, bounds) \
        == ["simulator send late max 41.0 ms (> 40 ms)"]
    # At the bound is not over it.
    assert classify(85.0, {"simulator send": {"p99_ms": 4.0, "max_ms": 40.0},
                           "app": {"p99_ms": 50.0, "max_ms": 150.0}}, bounds) == []


def test_window_jitter_counts_only_intervals_inside_the_window() -> None:
    # Call 0: a 300 ms set-up stall before the window, then frames exactly every 20 ms,
    # with one 60 ms gap inside; call 1: steady but 1 ms late on every other frame.
    t0, t1 = 10.0, 11.001
    call0 = [9.5, 9.8] + [10.0 + 0.02 * i for i in range(25)] \
        + [10.0 + 0.02 * 24 + 0.06 + 0.02 * i for i in range(24)] + [11.5]
    call1 = [10.0 + 0.02 * i + (0.001 if i % 2 else 0.0) for i in range(51)]
    out = window_jitter([call0, call1], t0, t1)
    assert out["gaps_over_40ms"] == 1
    assert out["max_gap_ms"] == pytest.approx(60.0, abs=1e-6)  # not the 300 ms stall
    assert out["frames"] == 49 + 51
    assert out["calls_through"] == 2
    # 48 + 50 intervals: 47 on time, 50 one ms off, the gap 40 ms off.
    assert out["jitter_p50_ms"] == pytest.approx(1.0, abs=1e-3)
    assert out["jitter_p99_ms"] == pytest.approx(1.0 + 0.03 * 39, abs=1e-2)
    # A call that ended before the window's end is not "through".
    assert window_jitter([[10.0, 10.02, 10.04]], t0, t1)["calls_through"] == 0


def _run(cpu: float, jitter99: float, limited: bool) -> dict[str, Any]:
    return {"cpu_ms_per_call_s": cpu, "calls_per_core": round(1000 / cpu),
            "setup_cpu_ms_per_call": 5.0, "jitter_p50_ms": 0.1, "jitter_p99_ms": jitter99,
            "gaps_over_40ms": 0, "max_gap_ms": 21.0, "underruns": 0, "missed_ticks": 0,
            "rss_per_call_kib": 30.0, "peer_cores_busy_percent": 95.0 if limited else 40.0,
            "real_time": not limited, "peer_limited": limited, "contended": False,
            "gateway_core_others_percent": 2.0,
            "peer_limited_reasons": ["peers' core 95 % busy (> 85 %)"] if limited else [],
            "peers": {"simulator": {"send_late_p99_ms": 1.0, "loop_late_p99_ms": 2.0}}}


def test_aggregate_and_table_show_median_spread_and_peer_limited_levels() -> None:
    echo = aggregate("echo", 200, [_run(2.0, 0.9, False), _run(2.6, 1.2, False),
                                   _run(2.4, 1.0, False)])
    assert echo["summary"]["cpu_ms_per_call_s"] == {"median": 2.4, "min": 2.0, "max": 2.6}
    assert echo["real_time_runs"] == 3 and not echo["peer_limited"]
    twilio = aggregate("twilio-stream", 400, [_run(4.0, 9.0, True), _run(4.2, 8.0, False),
                                              {"backend": "twilio-stream", "calls": 400,
                                               "error": "RuntimeError('x')"}])
    busy = aggregate("openai", 100, [{**_run(5.0, 1.0, False), "contended": True,
                                      "gateway_core_others_percent": 60.0}])
    assert twilio["runs_ok"] == 2 and twilio["peer_limited_runs"] == 1
    doc = {"machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11", "platform": "Linux",
                       "gateway_cpu": 0, "peer_cpus": [1]},
           "date": "2026-12-04", "config": {"seconds": 30, "runs": 3},
           "steady": [echo, twilio, busy]}
    table = steady_table(doc).splitlines()
    assert table[0].startswith("Machine: Test CPU, 2 cores") and "3 runs" in table[0]
    assert "gateway's event loop at normal priority;" in table[0]  # runs that do not say
    rows = [line for line in table if line.startswith(("| echo", "| twilio", "| openai"))]
    assert rows[0].startswith("| echo | 200 | 2.40 (2.00-2.60) | 417 (385-500) |")
    assert rows[0].endswith("| 3/3 | 40 | gateway |")
    assert "**peer-limited** (1/2 runs: peers' core 95 % busy (> 85 %))" in rows[1]
    assert rows[2].endswith("| **gateway core shared** (1/1 runs: other processes 60 %) |")


@pytest.mark.parametrize(("in_effect", "asked", "says"), [
    ([10, 10], 10, "under SCHED_FIFO, priority 10 (AIGW_REALTIME_PRIORITY)"),
    ([0, 0], 10, "at normal priority (realtime priority asked for, not permitted)"),
    ([0], 0, "at normal priority;"),
    ([10, 0], 10, "at realtime priorities [0, 10] (0: normal) in different runs"),
])
def test_the_table_says_how_the_gateway_was_scheduled(in_effect: list[int], asked: int,
                                                     says: str) -> None:
    runs = [{**_run(2.0, 0.5, False), "gateway_realtime_priority": p} for p in in_effect]
    doc = {"machine": {}, "config": {"seconds": 30, "runs": len(runs),
                                     "realtime_priority": asked},
           "steady": [aggregate("echo", 200, runs)]}
    assert says in steady_table(doc).splitlines()[0]


def test_estimate_covers_every_run() -> None:
    one = estimate_seconds(["echo"], [100], 1, 30.0)
    assert 30.0 + SETTLE_S < one < 60.0
    backends, levels = ["echo", "openai", "twilio-stream"], [100, 200, 400]
    full = estimate_seconds(backends, levels, 3, 30.0)
    assert full == pytest.approx(3 * sum(estimate_seconds([b], [n], 1, 30.0)
                                         for b in backends for n in levels))
    assert full < 30 * 60  # `make bench` stays within about half an hour


# -- real processes --------------------------------------------------------------------


async def test_run_bench_tiny_writes_sane_json_and_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"workers": {"runs": []}}))  # kept from `bench --workers`
    code = await run_bench([5], 3.0, str(out), backends=["echo"], runs=1, extras=False,
                           realtime_priority=1)
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["workers"] == {"runs": []}
    assert {"cpu", "cores", "python", "platform", "gateway_cpu", "peer_cpus"} \
        <= set(doc["machine"])
    assert doc["config"]["runs"] == 1 and doc["config"]["levels"] == [5]
    [level] = doc["steady"]
    assert level["backend"] == "echo" and level["calls"] == 5 and level["runs_ok"] == 1
    [r] = level["runs"]
    assert r["ok_calls"] == 5 and r["calls_through_window"] == 5
    # The window is the steady state only: it starts after every call is up plus the
    # settling time, and holds about window x 50 frames per call, no set-up frames.
    assert r["setup_s"] >= SETTLE_S
    assert r["seconds"] == pytest.approx(3.0, abs=0.3)
    assert 0.9 * r["frames_expected"] <= r["frames_in_window"] <= r["frames_expected"] + 10
    assert r["cpu_ms_per_call_s"] > 0 and r["calls_per_core"] > 0
    assert r["setup_cpu_ms_per_call"] is not None
    assert r["jitter_p50_ms"] is not None and r["jitter_p99_ms"] >= r["jitter_p50_ms"]
    assert r["transit_p50_ms"] is not None  # echo: tagged frames matched
    # the gateway's own tick writes (5 calls: well under a millisecond, as a bucket bound)
    assert 0 < r["pacer_writes_p50_le_ms"] <= r["pacer_writes_p99_le_ms"] <= 20.0
    assert r["underruns"] >= 0 and r["missed_ticks"] >= 0 and r["rss_per_call_kib"] != 0
    # the CPU stalls the pacer saw in its waits, and the share of the window it waited
    assert r["cpu_stalls"] >= 0 and r["cpu_stall_ms"] >= 0
    assert 0 < r["pacer_wait_share"] < 1
    # the gateway ran at the realtime priority asked for, where that is permitted
    assert doc["config"]["realtime_priority"] == 1 and r["gateway_realtime_priority"] in (0, 1)
    sim = r["peers"]["simulator"]
    assert sim["cpu_percent"] > 0
    assert sim["send_late_p99_ms"] is not None and sim["loop_late_max_ms"] is not None
    assert isinstance(r["peer_limited"], bool) \
        and r["peer_limited"] == bool(r["peer_limited_reasons"])
    assert "cpu_ms_per_call_s" in level["summary"]
    capsys.readouterr()
    assert cli_main(["bench", "--table", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| echo | 5 |" in printed and printed.startswith("Machine: ")
    assert ("under SCHED_FIFO, priority 1 " if r["gateway_realtime_priority"] else
            "at normal priority (realtime priority asked for, not permitted)") in printed


@pytest.mark.parametrize("backend, peer", [("openai", "bot"), ("twilio-stream", "app")])
async def test_streaming_peers_run_in_their_own_processes(backend: str, peer: str) -> None:
    r = await run_steady(backend, 3, 2.0)
    assert r["ok_calls"] == 3 and r["calls_through_window"] == 3
    # The peer talked for the whole call: nearly every frame the callers heard was its
    # audio, not the gateway's silence (the first ones precede the first delta).
    assert r["audio_frames_share"] > 0.8
    assert r["peer_chunk_ms"] == 100
    stats = r["peers"][peer]
    assert stats["cpu_percent"] > 0  # its own process, read from /proc
    assert stats["late_p99_ms"] is not None and stats["late_max_ms"] is not None


def test_profile_summary_ranks_functions_by_self_share() -> None:
    doc = {"shared": {"frames": [{"name": "run", "file": "/x/loop.py", "line": 1},
                                 {"name": "write", "file": "/x/sock.py", "line": 9},
                                 {"name": "tick", "file": "/x/pacer.py", "line": 5}]},
           "profiles": [{"samples": [[0, 1], [0, 1], [0, 2], [0], []],
                         "weights": [1.0, 1.0, 1.0, 1.0, 1.0]}]}
    rows = profile_summary(doc)
    assert rows[0] == (40.0, 40.0, "write (sock.py:9)")
    assert (20.0, 100.0 * 4 / 5, "run (loop.py:1)") in rows
    assert (20.0, 20.0, "tick (pacer.py:5)") in rows
    assert profile_summary({}) == []


async def test_py_spy_option_without_py_spy_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if py_spy_exe() is not None:
        pytest.skip("py-spy is installed here: the error path cannot be shown")
    code = await run_bench([5], 3.0, str(tmp_path / "r.json"), backends=["echo"], runs=1,
                           extras=False, py_spy=str(tmp_path / "prof"))
    assert code == 2
    assert "--py-spy needs py-spy (pip install py-spy)" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
