"""Profiling driver: one backend, N calls, steady state, gateway pinned to one core.

``python -m audiosocket_gw.testing.bench.profile BACKEND CALLS [--seconds S]
[--warm W] [--py-spy OUT] [--speech]``

Why: to find where the gateway's CPU goes on the audio path (issue 16) and to compare
two versions of the code A/B under the same conditions. The gateway is a child process
pinned to the first core; the AI peer (the local Realtime bot streaming its greeting
at real time for the whole call, or the fake Twilio app echoing the caller) runs in a
process of its own and the simulated callers in this one, both on the other cores.

Figures (one JSON line): ``cpu_ms_per_call_s`` (gateway user + system CPU over the
steady window, after every call is up and ``warm`` seconds in), ``peer_cpu_percent``
and ``sim_cpu_percent`` (to show the peers were not the bottleneck), pooled caller
jitter p50/p99 over the same window (|inter-arrival - 20 ms|), gaps > 40 ms, calls ok.

``--py-spy OUT`` records the gateway with py-spy over the window (speedscope JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..proc import GatewayProcess, cpu_seconds
from ..simulator.audio import speech_like
from ..simulator.pbx import CallPlan, run_simulation
from .bargein import _fetch_metrics

_AGENT_TOML = """\
default_agent = "bench"
[tenants.bench]
[agents.bench]
tenant = "bench"
backend = "openai"
greeting = "Hello."
"""


async def _peer(kind: str, seconds: float) -> None:
    """Run in the peer process: print the URL, then serve until stdin closes."""
    if kind == "bot":
        from ..localbot import LocalRealtimeBot

        bot = LocalRealtimeBot(reply_ms=int(seconds * 1000) + 60_000, send_realtime=True,
                               max_recorded_events=16, max_sessions=8)
        await bot.start()
        url = bot.url
    else:
        from ..fakeapp import FakeTwilioApp

        app = FakeTwilioApp(greeting_ms=1000, echo=True)
        await app.start()
        url = app.url
    sys.stdout.write(json.dumps({"url": url}) + "\n")
    sys.stdout.flush()
    await asyncio.to_thread(sys.stdin.read)


def _jitter(reports: list[Any], t_from: float, t_to: float) -> dict[str, Any]:
    pooled: list[float] = []
    gaps = 0
    for r in reports:
        times = [t for t, _ in r.heard if t_from <= t <= t_to]
        if len(times) < 2:
            continue
        d = np.diff(np.asarray(times)) * 1000.0
        pooled.extend(np.abs(d - 20.0).tolist())
        gaps += int((d > 40.0).sum())
    if not pooled:
        return {"jitter_p50_ms": None, "jitter_p99_ms": None, "gaps_over_40ms": gaps}
    a = np.asarray(pooled)
    return {"jitter_p50_ms": round(float(np.percentile(a, 50)), 3),
            "jitter_p99_ms": round(float(np.percentile(a, 99)), 3),
            "gaps_over_40ms": gaps}


async def profile(backend: str, calls: int, seconds: float, warm: float, *,
                  py_spy: str | None = None,
                  speech: bool = False) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    others = set(cpus[1:]) if pin else set(cpus)
    os.sched_setaffinity(0, others)
    tmp = tempfile.TemporaryDirectory(prefix="aigw-prof-")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIGW_") and k != "OPENAI_API_KEY"}
    env["AIGW_LOG_LEVEL"] = "warning"
    args = ["--backend", backend, "--allow-unregistered", "--audiosocket", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--max-connections", str(max(1000, 2 * calls))]
    peer: asyncio.subprocess.Process | None = None
    total = warm + seconds + 1.0
    if backend in ("openai", "twilio-stream"):
        kind = "bot" if backend == "openai" else "app"
        peer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "audiosocket_gw.testing.bench.profile", "--peer", kind,
            "--seconds", str(total),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert peer.stdout is not None
        url = json.loads(await peer.stdout.readline())["url"]
        if backend == "openai":
            cfg = Path(tmp.name) / "agents.toml"
            cfg.write_text(_AGENT_TOML)
            env["AIGW_OPENAI_URL"] = url
            env["AIGW_OPENAI_MODEL"] = "local-bot"
            args += ["--config", str(cfg)]
        else:
            args += ["--stream-url", url]
    else:
        args += ["--echo-delay-ms", "20"]
    gw = GatewayProcess(*args, env=env, cpu=cpus[0] if pin else None)
    result: dict[str, Any] = {"backend": backend, "calls": calls, "seconds": seconds}
    try:
        async with gw:
            await asyncio.sleep(0.5)
            plans = []
            for i in range(calls):
                audio = (speech_like(total + 1.0, seed=i) if speech
                         else np.zeros(int((total + 1.0) * 8000), dtype=np.int16))
                plans.append(CallPlan(seconds=total, audio=audio, index=i))
            ramp = min(2.0, calls / 100)
            sim = asyncio.create_task(run_simulation(*gw.audiosocket, plans=plans,
                                                     ramp_s=ramp, connect_timeout=10.0))
            await asyncio.sleep(ramp + warm)
            spy: asyncio.subprocess.Process | None = None
            if py_spy:
                exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                spy = await asyncio.create_subprocess_exec(
                    exe, "record", "-p", str(gw.pid), "-d", str(int(seconds)), "-r", "100",
                    "-f", "speedscope", "-o", py_spy, "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            c0, t0, s0 = cpu_seconds(gw.pid) or 0.0, time.monotonic(), time.process_time()
            p0 = cpu_seconds(peer.pid) if peer else None
            missed0 = (await _fetch_metrics(*gw.http)).get("aigw_pacer_missed_ticks_total", 0)
            await asyncio.sleep(seconds)
            c1, t1, s1 = cpu_seconds(gw.pid) or 0.0, time.monotonic(), time.process_time()
            p1 = cpu_seconds(peer.pid) if peer else None
            missed1 = (await _fetch_metrics(*gw.http)).get("aigw_pacer_missed_ticks_total", 0)
            if spy is not None:
                await spy.wait()
            reports = (await sim).calls
    finally:
        if peer is not None:
            assert peer.stdin is not None
            peer.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.wait(), 5.0)
            if peer.returncode is None:
                peer.kill()
                await peer.wait()
        tmp.cleanup()
    dt = t1 - t0
    # Per call, t is seconds since that call started; calls start over ``ramp``.
    result["cpu_ms_per_call_s"] = round(1000 * (c1 - c0) / (dt * calls), 3)
    result["gateway_cpu_percent"] = round(100 * (c1 - c0) / dt, 1)
    result["sim_cpu_percent"] = round(100 * (s1 - s0) / dt, 1)
    if p0 is not None and p1 is not None:
        result["peer_cpu_percent"] = round(100 * (p1 - p0) / dt, 1)
    # Ticks the gateway's pacer skipped in the window (starved of CPU): then it also
    # did less work, and the CPU figure is not comparable.
    result["missed_ticks"] = int(missed1 - missed0)
    result["ok"] = sum(1 for r in reports if r.ended_by == "simulator")
    result.update(_jitter(reports, ramp + warm, ramp + warm + seconds - ramp))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backend", nargs="?", default="echo")
    p.add_argument("calls", nargs="?", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warm", type=float, default=2.0)
    p.add_argument("--py-spy")
    p.add_argument("--speech", action="store_true")
    p.add_argument("--peer")
    a = p.parse_args()
    if a.peer:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_peer(a.peer, a.seconds))
        return
    r = asyncio.run(profile(a.backend, a.calls, a.seconds, a.warm, py_spy=a.py_spy,
                            speech=a.speech))
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
