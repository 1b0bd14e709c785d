"""``make bench``: each backend's steady state on one pinned core, then barge-in and
mark echoes.

:func:`run_bench` runs :func:`~.steady.run_steady` for every backend (echo, openai
against the local bot, twilio-stream against the fake app), level (concurrent calls) and
run, aggregates the runs per level (median, min-max) and flags the levels where the
tools, not the gateway, were the limit (see :mod:`.steady`); then the barge-in
(:mod:`.bargein`) and Twilio mark-echo (:mod:`.twilio`) measurements. It writes
``bench/results.json`` (keeping the ``workers`` figures of ``bench --workers``) and
prints the README's table, which ``audiosocket-gw bench --table bench/results.json``
prints again from the file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ...progress import Reporter, ticking
from .steady import (
    BACKENDS,
    ECHO_DELAY_MS,
    PeerBounds,
    aggregate,
    config_dict,
    estimate_seconds,
    machine,
    profile_summary,
    py_spy_exe,
    run_steady,
    steady_table,
)

__all__ = ["ECHO_DELAY_MS", "machine", "print_table", "run_bench"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


EXTRAS_S = 45.0
"""About how long the barge-in and mark-echo measurements take (run-time estimate)."""


def print_table(path: str) -> int:
    """``audiosocket-gw bench --table FILE``: the README's table from the JSON."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"bench --table: cannot read {path}: {exc}")
        return 2
    if not isinstance(doc, dict) or not isinstance(doc.get("steady"), list):
        print(f"bench --table: {path} has no steady-state figures (run `make bench`)")
        return 2
    print(steady_table(doc))
    return 0


def _print_profile(path: str) -> None:
    """The profile's top functions by self share, under the run's line."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"  py-spy: no profile at {path} ({exc})", flush=True)
        return
    print(f"  py-spy profile {path}: self % / inclusive % / function", flush=True)
    for own, incl, name in profile_summary(doc):
        print(f"    {own:5.1f} {incl:5.1f}  {name}", flush=True)


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    p = r["peers"]
    sim = p["simulator"]
    others = ", ".join(f"{k} {v['cpu_percent']} % (late p99 {v['late_p99_ms']} ms)"
                       for k, v in p.items() if k != "simulator")
    return (f"{r['ok_calls']}/{r['calls']} ok, {r['cpu_ms_per_call_s']} ms CPU/call-s "
            f"({r.get('pacer_wait_ms_per_call_s')} of it waiting on the clock) "
            f"(~{r['calls_per_core']} calls/core), set-up {r['setup_cpu_ms_per_call']} ms/call, "
            f"jitter p50/p99 {r['jitter_p50_ms']}/{r['jitter_p99_ms']} ms, gaps>40ms "
            f"{r['gaps_over_40ms']}, stalled ticks {r.get('stalled_ticks')} (median "
            f"{r.get('stall_p50_ms')} ms late, {r.get('late_in_stalls')} of frames > 1 ms "
            f"late), CPU stalls seen in the pacer's waits {r.get('cpu_stalls')} "
            f"({r.get('cpu_stall_ms')} ms in {r.get('pacer_wait_share')} of the window), "
            f"tick writes p50/p99 <= {r.get('pacer_writes_p50_le_ms')}/"
            f"{r.get('pacer_writes_p99_le_ms')} ms, underruns {r['underruns']}, RSS/call "
            f"{r['rss_per_call_kib']} KiB, real time {r['real_time']}; simulator "
            f"{sim['cpu_percent']} % (send late p99 {sim['send_late_p99_ms']} ms, loop "
            f"{sim['loop_late_p99_ms']} ms){', ' + others if others else ''}; peers' core "
            f"{r['peer_cores_busy_percent']} % busy, gateway core others "
            f"{r['gateway_core_others_percent']} %"
            + (f"; PEER-LIMITED: {'; '.join(r['peer_limited_reasons'])}"
               if r["peer_limited"] else ""))


async def run_bench(levels: list[int], seconds: float, out: str, *,
                    backends: list[str] | None = None, runs: int = 3, extras: bool = True,
                    chunk_ms: int = 100, lead_ms: int = 300, py_spy: str | None = None,
                    realtime_priority: int = 0) -> int:
    """Run the benchmark (see the module docstring); 0 when every call of every run was
    ok (peer-limited levels included: they are reported as such, not failed)."""
    backends = list(backends or BACKENDS)
    if py_spy and py_spy_exe() is None:
        print("audiosocket-gw bench: --py-spy needs py-spy (pip install py-spy)",
              file=sys.stderr, flush=True)
        return 2
    bounds = PeerBounds()
    est = estimate_seconds(backends, levels, runs, seconds) + (EXTRAS_S if extras else 0)
    print(f"bench: {len(backends)} backend(s) x {len(levels)} level(s) x {runs} run(s), "
          f"{seconds:g} s steady window each: about {est / 60:.0f} min ({est:.0f} s)",
          flush=True)
    t_begin = time.monotonic()
    steady: list[dict[str, Any]] = []
    phase: dict[str, Any] = {"name": "starting", "t0": time.monotonic()}

    def note() -> str:
        return f"{phase['name']}, {time.monotonic() - phase['t0']:.0f} s"

    barge: dict[str, Any] = {}
    twilio: dict[str, Any] = {}
    reporter = Reporter(len(backends) * len(levels) * runs + (3 if extras else 0),
                        "bench runs")
    with reporter:
        async with ticking(reporter, note):
            for backend in backends:
                for n in levels:
                    rows: list[dict[str, Any]] = []
                    for k in range(runs):
                        phase.update(name=f"{backend} {n} calls run {k + 1}/{runs}",
                                     t0=time.monotonic())
                        print(f"bench: {backend}, {n} calls, run {k + 1}/{runs} ...",
                              flush=True)
                        spy = (str(Path(py_spy) / f"{backend}-{n}-run{k + 1}.json")
                               if py_spy else None)
                        try:
                            r = await run_steady(backend, n, seconds, chunk_ms=chunk_ms,
                                                 lead_ms=lead_ms, bounds=bounds, py_spy=spy,
                                                 realtime_priority=realtime_priority)
                        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                            where = traceback.extract_tb(exc.__traceback__)[-1]
                            r = {"backend": backend, "calls": n, "error": f"{exc!r} at "
                                 f"{Path(where.filename).name}:{where.lineno}"[:300]}
                        rows.append(r)
                        print("  " + _brief(r), flush=True)
                        if spy and "error" not in r:
                            _print_profile(spy)
                        reporter.advance()
                    steady.append(aggregate(backend, n, rows))
            if extras:
                barge, twilio = await _extras(reporter, phase)
    mach = {**machine(), **_pinning()}
    path = Path(out)
    doc: dict[str, Any] = {}
    try:  # keep the figures of `bench --workers`
        old = json.loads(await asyncio.to_thread(path.read_text))
        if isinstance(old, dict) and "workers" in old:
            doc["workers"] = old["workers"]
    except (OSError, ValueError):
        pass
    doc.update({"machine": mach, "date": time.strftime("%Y-%m-%d"),
                "config": config_dict(backends, levels, runs, seconds, chunk_ms, lead_ms,
                                      bounds, realtime_priority),
                "elapsed_s": round(time.monotonic() - t_begin, 1),
                "steady": steady, "barge_in": barge, "twilio_stream": twilio})
    await asyncio.to_thread(_write, path, json.dumps(doc, indent=2) + "\n")
    print()
    print(steady_table(doc))
    print()
    for mode, b in barge.items():
        print(f"barge-in ({mode}): cut p50 {b['cut_p50_ms']} ms, p95 {b['cut_p95_ms']} ms, "
              f"p99 {b['cut_p99_ms']} ms; time to greeting p50 {b['first_audio_p50_ms']} ms, "
              f"p99 {b['first_audio_p99_ms']} ms; TTFA overhead over the bot's first delta "
              f"p50 {b['ttfa_overhead_p50_ms']} ms, p95 {b['ttfa_overhead_p95_ms']} ms; "
              f"response p50 {b['response_p50_ms']} ms, p95 {b['response_p95_ms']} ms "
              f"(bot {b['response_bot_p50_ms']} ms, gateway {b['response_gateway_p50_ms']} ms "
              f"p50); CPU {b['cpu_ms_per_call_s']} ms/call-s")
    if twilio:
        print(f"twilio-stream: {twilio['cpu_ms_per_call_s']} ms CPU per call-s; mark echo "
              f"p50 {twilio['mark_echo_p50_ms']} ms, p95 {twilio['mark_echo_p95_ms']} ms, "
              f"max {twilio['mark_echo_max_ms']} ms; truncate/violations "
              f"{twilio['violations']}")
    print(f"\nwritten to {path} in {doc['elapsed_s']:.0f} s (estimated {est:.0f} s)")
    every = [r for lv in steady for r in lv["runs"]]
    return 0 if all("error" not in r and r["ok_calls"] == r["calls"] for r in every) else 1


def _pinning() -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:
        return {"gateway_cpu": cpus[0], "peer_cpus": cpus[1:]}
    return {"gateway_cpu": None, "peer_cpus": cpus}


async def _extras(reporter: Reporter, phase: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Barge-in (both VAD modes) and Twilio mark echoes, as before the steady state."""
    from .bargein import measure_barge_in
    from .twilio import measure_twilio

    barge: dict[str, Any] = {}
    for mode, server_vad in (("server_and_local_vad", True), ("local_vad_only", False)):
        phase.update(name=f"barge-in {mode}", t0=time.monotonic())
        print(f"bench: barge-in with the openai backend and the local bot ({mode}) ...",
              flush=True)
        barge[mode] = await measure_barge_in(calls=10, seconds=6.0, server_vad=server_vad)
        print("  " + ", ".join(f"{k}={v}" for k, v in barge[mode].items()), flush=True)
        reporter.advance()
    phase.update(name="twilio-stream marks", t0=time.monotonic())
    print("bench: twilio-stream backend and mark echoes (20 calls, 8 s) ...", flush=True)
    twilio = await measure_twilio(calls=20, seconds=8.0)
    print("  " + ", ".join(f"{k}={v}" for k, v in twilio.items()), flush=True)
    reporter.advance()
    return barge, twilio
