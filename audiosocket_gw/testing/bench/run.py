"""``make bench``: how many calls one core carries in real time, and how well.

For each concurrency level a fresh gateway runs as a separate process (echo backend,
20 ms delay) and the PBX simulator in this process places that many tagged calls. We
read the gateway's CPU time and RSS from /proc and its own counters from /metrics, and
the simulator measures what a caller would: frame transit (caller frame in -> the same
frame echoed out, minus the configured 20 ms echo delay), inter-arrival jitter, gaps.

Figures:
- ``cpu_s_per_call_s``: gateway CPU seconds per second of call (user + system);
  ``calls_per_core`` = 1 / that: calls one fully used core would carry.
- ``underruns``: gateway playout underruns + pacer missed ticks + simulator gaps > 40 ms
  (all three must be zero for a level to count as real time).
- ``rss_per_call_kib``: (RSS under load - RSS idle) / calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ...progress import Reporter, ticking
from ..demo import fetch_metrics, histogram_quantile
from ..proc import GatewayProcess, cpu_seconds, rss_kib
from ..simulator.pbx import run_simulation

ECHO_DELAY_MS = 20


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def bench_level(calls: int, seconds: float) -> dict[str, Any]:
    args = ["--allow-unregistered", "--backend", "echo", "--echo-delay-ms", str(ECHO_DELAY_MS),
            "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warning",
            "--max-connections", str(max(1000, calls * 2))]
    env = dict(os.environ)
    env.pop("AIGW_AUDIOSOCKET", None)
    env.pop("AIGW_HTTP", None)
    # On a machine with two or more cores the gateway gets core 0 and this process
    # (the simulated Asterisk) another one, so neither measures the other's load.
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, set(cpus[1:]))
    try:
        return await _bench_level(calls, seconds, args, env, cpus[0] if pin else None)
    finally:
        if pin:
            os.sched_setaffinity(0, set(cpus))


async def _bench_level(
    calls: int, seconds: float, args: list[str], env: dict[str, str], cpu: int | None
) -> dict[str, Any]:
    async with GatewayProcess(*args, env=env, cpu=cpu) as gw:
        await asyncio.sleep(0.5)
        rss_idle = rss_kib(gw.pid)
        ramp = min(2.0, calls / 100)
        sim = asyncio.create_task(
            run_simulation(*gw.audiosocket, calls=calls, seconds=seconds, tagged=True,
                           ramp_s=ramp, transit_offset_ms=ECHO_DELAY_MS)
        )
        # Measure CPU over the window when every call is up.
        await asyncio.sleep(ramp + 1.0)
        cpu0, t0 = cpu_seconds(gw.pid) or 0.0, time.monotonic()
        sim0 = time.process_time()
        window = max(1.0, seconds - 2.0)
        await asyncio.sleep(window / 2)
        rss_load = rss_kib(gw.pid)
        await asyncio.sleep(window / 2)
        cpu1, t1 = cpu_seconds(gw.pid) or 0.0, time.monotonic()
        sim1 = time.process_time()
        report = await sim
        m = await asyncio.to_thread(fetch_metrics, *gw.http)
    s = report.summary()
    cpu_per_call_s = (cpu1 - cpu0) / ((t1 - t0) * calls)
    underruns = int(m.get("aigw_playout_underruns_total", 0))
    missed = int(m.get("aigw_pacer_missed_ticks_total", 0))
    lat99 = histogram_quantile(m, "aigw_pacer_lateness_seconds", 0.99)
    return {
        "calls": calls,
        "seconds": seconds,
        "ok_calls": s["ok"],
        "cpu_s_per_call_s": round(cpu_per_call_s, 6),
        "calls_per_core": round(1.0 / cpu_per_call_s) if cpu_per_call_s > 0 else None,
        "gateway_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        # The simulated Asterisk is Python too: near 100 % of its core, its own
        # sending runs late and shows up as underruns that are not the gateway's.
        "simulator_cpu_percent": round(100 * (sim1 - sim0) / (t1 - t0), 1),
        "underruns": underruns,
        "missed_ticks": missed,
        "gaps_over_40ms": s["gaps_over_40ms"],
        "real_time": underruns == 0 and missed == 0 and s["gaps_over_40ms"] == 0
        and s["ok"] == calls,
        "transit_p50_ms": _r(s["transit_p50_ms"]),
        "transit_p99_ms": _r(s["transit_p99_ms"]),
        "jitter_p50_ms": _r(s["pooled_jitter_p50_ms"]),
        "jitter_p99_ms": _r(s["pooled_jitter_p99_ms"]),
        "max_gap_ms": _r(s["max_gap_ms"]),
        "pacer_lateness_p99_le_ms": None if lat99 is None else lat99 * 1000,
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_per_call_kib": round((rss_load - rss_idle) / calls, 1),
        "gateway_pinned_to_cpu": cpu,
    }


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


COLUMNS = [
    ("calls", "calls"), ("ok_calls", "ok"), ("real_time", "real time"),
    ("cpu_s_per_call_s", "CPU s/call-s"), ("calls_per_core", "calls/core"),
    ("underruns", "underruns"), ("gaps_over_40ms", "gaps>40ms"),
    ("transit_p50_ms", "transit p50 ms"), ("transit_p99_ms", "transit p99 ms"),
    ("jitter_p50_ms", "jitter p50 ms"), ("jitter_p99_ms", "jitter p99 ms"),
    ("rss_per_call_kib", "RSS/call KiB"),
]


def markdown_table(results: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(str(r.get(k)) for k, _ in COLUMNS) + " |" for r in results]
    return "\n".join([head, sep, *rows])


async def run_bench(levels: list[int], seconds: float, out: str) -> int:
    results = []
    phase: dict[str, Any] = {"name": "starting", "t0": time.monotonic()}

    def note() -> str:
        return f"{phase['name']}, {time.monotonic() - phase['t0']:.0f} s"

    reporter = Reporter(len(levels) + 3, "bench phases")
    with reporter:
        async with ticking(reporter, note):
            for n in levels:
                phase.update(name=f"{n} calls", t0=time.monotonic())
                print(f"bench: {n} concurrent echo calls for {seconds:.0f} s ...", flush=True)
                r = await bench_level(n, seconds)
                results.append(r)
                print("  " + ", ".join(f"{k}={v}" for k, v in r.items()), flush=True)
                reporter.advance()
            from .bargein import measure_barge_in

            barge: dict[str, Any] = {}
            for mode, server_vad in (("server_and_local_vad", True),
                                     ("local_vad_only", False)):
                phase.update(name=f"barge-in {mode}", t0=time.monotonic())
                print(f"bench: barge-in with the openai backend and the local bot ({mode}) "
                      "...", flush=True)
                barge[mode] = await measure_barge_in(calls=10, seconds=6.0,
                                                     server_vad=server_vad)
                print("  " + ", ".join(f"{k}={v}" for k, v in barge[mode].items()),
                      flush=True)
                reporter.advance()
            from .twilio import measure_twilio

            phase.update(name="twilio-stream", t0=time.monotonic())
            print("bench: twilio-stream backend and mark echoes (20 calls, 8 s) ...",
                  flush=True)
            twilio = await measure_twilio(calls=20, seconds=8.0)
            print("  " + ", ".join(f"{k}={v}" for k, v in twilio.items()), flush=True)
            reporter.advance()
    mach = machine()
    doc = {"machine": mach, "date": time.strftime("%Y-%m-%d"), "levels": results,
           "barge_in": barge, "twilio_stream": twilio}
    path = Path(out)
    await asyncio.to_thread(_write, path, json.dumps(doc, indent=2) + "\n")
    print()
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}")
    print(markdown_table(results))
    print()
    for mode, b in barge.items():
        print(f"barge-in ({mode}): cut p50 {b['cut_p50_ms']} ms, p95 {b['cut_p95_ms']} ms, "
              f"p99 {b['cut_p99_ms']} ms; time to greeting p50 {b['first_audio_p50_ms']} ms, "
              f"p99 {b['first_audio_p99_ms']} ms; TTFA overhead over the bot's first delta "
              f"p50 {b['ttfa_overhead_p50_ms']} ms, p95 {b['ttfa_overhead_p95_ms']} ms; "
              f"response p50 {b['response_p50_ms']} ms, p95 {b['response_p95_ms']} ms "
              f"(bot {b['response_bot_p50_ms']} ms, gateway {b['response_gateway_p50_ms']} ms "
              f"p50); CPU {b['cpu_ms_per_call_s']} ms/call-s")
    print(f"twilio-stream: {twilio['cpu_ms_per_call_s']} ms CPU per call-s; mark echo p50 "
          f"{twilio['mark_echo_p50_ms']} ms, p95 {twilio['mark_echo_p95_ms']} ms, max "
          f"{twilio['mark_echo_max_ms']} ms")
    print(f"\nwritten to {path}")
    return 0 if all(r["ok_calls"] == r["calls"] for r in results) else 1
