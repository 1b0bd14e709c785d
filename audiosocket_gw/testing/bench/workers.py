"""``audiosocket-gw bench --workers 1 2``: calls per host at real time with N workers.

For each worker count N, ``serve --workers N`` runs on a PostgreSQL database the bench
creates (and drops at the end) next to the ``AIGW_BENCH_PG_URL`` admin database
(default ``postgresql://postgres@127.0.0.1:5432/postgres``); the PBX simulator in this
process places each ``--calls`` level of echo calls, as ``make bench`` does for one
process. Per level: every worker's CPU (from /proc), real time (no underrun, missed
tick or simulator gap > 40 ms, every call ok). Per N: ``calls_real_time`` = the
highest level that stayed real time. ``scaling`` = calls_real_time(N) /
calls_real_time(smallest N); ``cpu_estimate_calls_per_host`` = min(N, cores) / the
CPU seconds per call-second at that level. The simulated Asterisk shares the host's cores with the
workers (no pinning here), so on a small machine the figure is a floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..demo import fetch_metrics
from ..proc import GatewayProcess, cpu_seconds
from ..simulator.pbx import run_simulation
from .run import ECHO_DELAY_MS, _r, machine

ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(RuntimeError):
    pass


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PostgresUnavailable(f"PostgreSQL unreachable at {url.split('@')[-1]}: "
                                  f"{exc.__class__.__name__}: {exc}") from None
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _sum(metrics: dict[str, float], name: str) -> float:
    """A counter summed over every worker's series (``name{worker=...}``)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


async def bench_workers_level(gw: GatewayProcess, calls: int, seconds: float
                              ) -> dict[str, Any]:
    pids = gw.workers or [gw.pid]
    m0 = await asyncio.to_thread(fetch_metrics, *gw.http)
    ramp = min(2.0, calls / 100)
    sim = asyncio.create_task(
        run_simulation(*gw.audiosocket, calls=calls, seconds=seconds, tagged=True,
                       ramp_s=ramp, transit_offset_ms=ECHO_DELAY_MS))
    await asyncio.sleep(ramp + min(1.0, seconds / 4))
    cpu0 = [cpu_seconds(p) or 0.0 for p in pids]
    t0 = time.monotonic()
    await asyncio.sleep(max(0.5, seconds - ramp - 2.0))
    cpu1 = [cpu_seconds(p) or 0.0 for p in pids]
    t1 = time.monotonic()
    report = await sim
    await asyncio.sleep(1.2)  # every worker has written its metrics file once more
    m1 = await asyncio.to_thread(fetch_metrics, *gw.http)
    s = report.summary()
    underruns = int(_sum(m1, "aigw_playout_underruns_total")
                    - _sum(m0, "aigw_playout_underruns_total"))
    missed = int(_sum(m1, "aigw_pacer_missed_ticks_total")
                 - _sum(m0, "aigw_pacer_missed_ticks_total"))
    per_worker = [round(100 * (b - a) / (t1 - t0), 1) for a, b in zip(cpu0, cpu1, strict=True)]
    total_cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    cpu_per_call_s = total_cpu / ((t1 - t0) * calls)
    return {
        "calls": calls,
        "ok_calls": s["ok"],
        "real_time": underruns == 0 and missed == 0 and s["gaps_over_40ms"] == 0
        and s["ok"] == calls,
        "worker_cpu_percent": per_worker,
        "cpu_s_per_call_s": round(cpu_per_call_s, 6),
        "underruns": underruns,
        "missed_ticks": missed,
        "gaps_over_40ms": s["gaps_over_40ms"],
        "transit_p99_ms": _r(s["transit_p99_ms"]),
        "max_gap_ms": _r(s["max_gap_ms"]),
    }


async def bench_workers(workers: int, levels: list[int], seconds: float, db_url: str
                        ) -> dict[str, Any]:
    args = ["--allow-unregistered", "--backend", "echo", "--echo-delay-ms", str(ECHO_DELAY_MS),
            "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warning",
            "--max-connections", str(max(1000, max(levels) * 2)), "--workers", str(workers)]
    env = dict(os.environ)
    for k in ("AIGW_AUDIOSOCKET", "AIGW_HTTP", "AIGW_WORKERS", "AIGW_NODE_ID"):
        env.pop(k, None)
    env["AIGW_DATABASE_URL"] = db_url
    rows = []
    gw = GatewayProcess(*args, env=env)
    try:
        await gw.start()
    except RuntimeError as exc:
        # Seen rarely on a loaded machine with 2 workers (exit 1 at start; the reason is
        # now in the message): say so and try once more rather than report nothing.
        print(f"bench: {workers} worker(s): {exc}; retrying once", flush=True)
        await gw.stop()
        gw = GatewayProcess(*args, env=env)
        await gw.start()
    async with gw:
        await asyncio.sleep(0.5)
        for n in levels:
            print(f"bench: {workers} worker(s), {n} concurrent echo calls for "
                  f"{seconds:.0f} s ...", flush=True)
            row = await bench_workers_level(gw, n, seconds)
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            rows.append(row)
            if not row["real_time"]:
                break  # higher levels will not be real time either
    rt = [r for r in rows if r["real_time"]]
    best = max(rt, key=lambda r: r["calls"]) if rt else None
    # What the CPU figure says the host would carry with every worker's core busy (the
    # measured level is capped by the levels asked for and by the simulator's share).
    cores = min(workers, os.cpu_count() or 1)
    estimate = int(cores / best["cpu_s_per_call_s"]) if best and best["cpu_s_per_call_s"] > 0 \
        else None
    return {"workers": workers, "levels": rows, "calls_real_time": best["calls"] if best else 0,
            "cpu_estimate_calls_per_host": estimate}


def workers_table(runs: list[dict[str, Any]]) -> str:
    head = ("| workers | calls/host at real time | scaling | per-worker CPU % at that level "
            "| CPU estimate calls/host |")
    sep = "|---:|---:|---:|---|---:|"
    rows = []
    for r in runs:
        at = next((lv for lv in r["levels"] if lv["calls"] == r["calls_real_time"]), None)
        cpu = " / ".join(str(c) for c in at["worker_cpu_percent"]) if at else "-"
        rows.append(f"| {r['workers']} | {r['calls_real_time']} | {r['scaling']} | {cpu} "
                    f"| {r['cpu_estimate_calls_per_host']} |")
    return "\n".join([head, sep, *rows])


async def run_workers_bench(workers: list[int], levels: list[int], seconds: float,
                            out: str) -> int:
    admin = os.environ.get("AIGW_BENCH_PG_URL", ADMIN_URL_DEFAULT)
    name = f"aigw_bench_{uuid.uuid4().hex[:12]}"
    try:
        await _admin(admin, f'CREATE DATABASE "{name}"')
    except PostgresUnavailable as exc:
        print(f"bench --workers: skipped: {exc} (workers share one PostgreSQL store; "
              "start PostgreSQL on 127.0.0.1:5432 or set AIGW_BENCH_PG_URL)", flush=True)
        return 0
    db_url = f"{admin.rpartition('/')[0]}/{name}"
    runs: list[dict[str, Any]] = []
    try:
        for w in workers:
            runs.append(await bench_workers(w, sorted(levels), seconds, db_url))
    finally:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    base = runs[0]["calls_real_time"] if runs else 0
    for r in runs:
        r["scaling"] = round(r["calls_real_time"] / base, 2) if base else None
    path = Path(out)
    doc: Any
    try:  # keep the single-process figures of `make bench`
        doc = json.loads(await asyncio.to_thread(path.read_text))
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    doc["workers"] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                      "seconds": seconds, "levels": sorted(levels), "runs": runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_text, json.dumps(doc, indent=2) + "\n")
    print()
    print(workers_table(runs))
    print(f"\nwritten to {path}")
    for r in runs:  # a figure, not a failure: the table says it; the exit code is for errors
        if r["calls_real_time"] == 0:
            print(f"bench --workers: {r['workers']} worker(s) carried no level in real time "
                  "on this machine (see the table)", flush=True)
    return 0
