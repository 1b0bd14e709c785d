"""``make bench``'s main figures: each backend's steady state on one pinned core.

Why: what a deployment needs to know is how many calls of its backend one core carries
once the calls are up, and how well; the call set-up (connects, WebSocket handshakes,
greetings) is a separate, one-off cost. So each run measures a window that starts only
after every call is up and a settling time has passed, and ends before any call ends.

Set-up (per backend, level and run; everything fresh):

* the gateway is a child process (:class:`~audiosocket_gw.testing.proc.GatewayProcess`)
  pinned to the first core; this process (the PBX simulator, placing the calls) pins
  itself to the other core(s) before starting anything, so the peers inherit them;
* ``echo``: an agent with a 20 ms echo delay; callers send tagged speech-like audio
  (frame transit is measured too);
* ``openai``: the local Realtime bot (``bot-stream`` of :mod:`.soak_peers`, a process of
  its own) answers the agent's greeting with one response as long as the call, paced at
  real time in ``chunk_ms`` deltas after a first ``lead_ms``; callers are silent;
* ``twilio-stream``: the fake Twilio Media Streams app (``app-stream``, a process of its
  own) streams a tone the same way from ``start`` to the end; callers are silent.

Timeline: calls connect over ``ramp_s`` (:func:`ramp_for`: 100 calls/s for echo, 40 for
the WebSocket backends); once all are connected, ``SETTLE_S`` more (greetings, first
audio); then the window of ``seconds``; then every caller hangs up.

Figures per run (all over the window unless said otherwise):

* ``cpu_ms_per_call_s``: gateway CPU (user + system, ``/proc/<pid>/stat``) per second
  of call; ``calls_per_core`` = 1000 / that;
* ``setup_cpu_ms_per_call``: gateway CPU from the first connect to the window's start,
  minus what the calls' live seconds in that time cost at the steady rate, per call
  (an estimate: a call still waiting for its first audio costs less than the steady
  rate, so it can come out low; ``setup_cpu_ms_per_call_gross``, nothing subtracted, is
  the upper bound);
* ``jitter_p50_ms``/``jitter_p99_ms``: |inter-arrival - 20 ms| of the frames the callers
  received, pooled over every call (both frames inside the window); ``gaps_over_40ms``
  and ``max_gap_ms`` from the same intervals;
* ``stalled_ticks``: ticks of the window in which nearly every call's frame reached
  its caller more than 1 ms later than that call's usual offset in the tick (the tick
  itself started late), with ``stall_p50_ms``/``stall_max_ms`` (how late) and
  ``late_in_stalls`` (the share of all frames over 1 ms late that were in such ticks;
  :mod:`.ticks`);
* ``pacer_wait_ms_per_call_s``: of ``cpu_ms_per_call_s``, the pacer's waits on the
  clock (``aigw_pacer_wait_seconds``: the spin before each deadline and between write
  groups), a cost per tick rather than per call;
* ``cpu_stalls``/``cpu_stall_ms``: how often, and for how long in all, the CPU was taken
  from the gateway for more than 0.5 ms while its pacer waited on the clock
  (``aigw_pacer_cpu_stalls``: the hypervisor or the kernel did not run it), with
  ``pacer_wait_share``, the share of the window the pacer spent so waiting: the counts
  are a sample of the stalls over that share of the time, the one nearest the writes;
* ``underruns``, ``missed_ticks``, ``media_dropped``: deltas of the gateway's own
  counters (``/metrics``) over the window;
* ``rss_per_call_kib``: (RSS mid-window - RSS before the first call) / calls;
* ``audio_frames_share``: of every frame the callers received (whole calls), the share
  that was not all zeros: near 1 when the bot's or app's audio, not only the gateway's
  silence, reached the callers;
* ``real_time``: every call ok and through the window, no underrun, no missed tick, no
  gap over 40 ms;
* ``peers``: CPU of the simulator and of each peer process as a percent of one core,
  the lateness of the simulator's send loop and event loop and of each peer's event
  loop (p50/p99/max ms); ``cores``: each core's total busy percent from
  ``/proc/stat`` (other processes included: on a shared machine they count too).

A run is **contended** when other processes took more than
``PeerBounds.gateway_core_others_pct`` of the gateway's core (a shared machine), and
**peer-limited** (:func:`classify`) when the peers' core was busier than
``PeerBounds.core_busy_pct`` or the simulator's lateness (or, with wider bounds, the
bot's or app's) exceeded the bounds: its figures then describe the tools as much as the
gateway, and the tables say so instead of presenting them as the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..demo import fetch_metrics, histogram_quantile
from ..proc import GatewayProcess, cpu_seconds, rss_kib
from ..simulator.audio import speech_like, tag_frames
from ..simulator.pbx import CallPlan, SimLateness, SimulationReport, run_simulation
from .soak_peers import PeerProcess
from .ticks import tick_delays

__all__ = [
    "BACKENDS",
    "ECHO_DELAY_MS",
    "PeerBounds",
    "aggregate",
    "classify",
    "estimate_seconds",
    "machine",
    "run_steady",
    "steady_table",
    "window_jitter",
]

BACKENDS: Final = ("echo", "openai", "twilio-stream")
ECHO_DELAY_MS: Final = 20
SETTLE_S: Final = 2.0
TAIL_S: Final = 3.0
RAMP_GRACE_S: Final = 30.0
"""How much longer than planned the ramp may take before the run gives up waiting."""
WS_RAMP_PER_S: Final = 40.0
FRAME_MS: Final = 20.0
GAP_MS: Final = 40.0
START_COST_S: Final = 8.0
"""Per run, besides ramp, settle, window and tail: gateway and peer start and stop, the
analysis (for the run-time estimate printed at start)."""


@dataclass(frozen=True)
class PeerBounds:
    """When a run counts as limited by the tools rather than the gateway."""

    core_busy_pct: float = 85.0
    """The peers' core(s), busy percent over the window (every process on them)."""
    late_p99_ms: float = 4.0
    """The simulator's own lateness (send loop, event loop), p99: it time-stamps what
    the callers hear and sends what the gateway gets, so it must be near on time."""
    late_max_ms: float = 40.0
    """... and its maximum (a stall this long is a gap the gateway did not cause)."""
    peer_late_p99_ms: float = 50.0
    """The bot's or app's event loop, p99: it runs ``lead_ms`` (300 ms) ahead of the
    caller, so it may be late by much more than the simulator before anyone hears it."""
    peer_late_max_ms: float = 150.0
    """... and its maximum (half the lead)."""
    gateway_core_others_pct: float = 10.0
    """Other processes' share of the gateway's core: above it the run is ``contended``
    (a shared machine took the gateway's time; not a figure of the gateway either)."""


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


def classify(core_busy_pct: float | None, lateness: dict[str, dict[str, Any]],
             bounds: PeerBounds = PeerBounds()) -> list[str]:
    """Why a run is peer-limited (empty: the peers were not the bottleneck).

    ``core_busy_pct``: the peers' core(s) over the window; ``lateness``: per tool
    (``"simulator send"``, ``"simulator loop"``, ``"bot"``, ``"app"``) its ``p99_ms`` and
    ``max_ms`` (None: unknown); names starting with ``simulator`` get the simulator's
    bounds, the others the peers'.
    """
    reasons = []
    if core_busy_pct is not None and core_busy_pct > bounds.core_busy_pct:
        reasons.append(f"peers' core {core_busy_pct:.0f} % busy "
                       f"(> {bounds.core_busy_pct:.0f} %)")
    for name, late in lateness.items():
        sim = name.startswith("simulator")
        b99 = bounds.late_p99_ms if sim else bounds.peer_late_p99_ms
        bmax = bounds.late_max_ms if sim else bounds.peer_late_max_ms
        p99, mx = late.get("p99_ms"), late.get("max_ms")
        if p99 is not None and p99 > b99:
            reasons.append(f"{name} late p99 {p99:.1f} ms (> {b99:g} ms)")
        if mx is not None and mx > bmax:
            reasons.append(f"{name} late max {mx:.1f} ms (> {bmax:g} ms)")
    return reasons


def window_jitter(arrivals: list[Any], t0: float, t1: float) -> dict[str, Any]:
    """Pooled |inter-arrival - 20 ms| of frames whose both ends lie in [t0, t1].

    ``arrivals``: per call, its frames' arrival times (ascending). Returns p50/p99 ms,
    ``gaps_over_40ms``, ``max_gap_ms``, ``frames`` (received in the window) and
    ``calls_through`` (calls that still received a frame in the window's last 0.5 s).
    """
    pooled: list[np.ndarray[Any, Any]] = []
    frames = gaps_over = through = 0
    max_gap = 0.0
    for arr in arrivals:
        a = np.asarray(arr, dtype=np.float64)
        inside = a[(a >= t0) & (a <= t1)]
        frames += len(inside)
        if len(inside) and inside[-1] >= t1 - 0.5:
            through += 1
        if len(inside) < 2:
            continue
        gaps = np.diff(inside) * 1000.0
        pooled.append(np.abs(gaps - FRAME_MS))
        gaps_over += int((gaps > GAP_MS).sum())
        max_gap = max(max_gap, float(gaps.max()))
    allj = np.concatenate(pooled) if pooled else np.zeros(0)
    return {
        "jitter_p50_ms": _r(float(np.percentile(allj, 50)) if len(allj) else None, 3),
        "jitter_p99_ms": _r(float(np.percentile(allj, 99)) if len(allj) else None, 3),
        "gaps_over_40ms": gaps_over,
        "max_gap_ms": _r(max_gap if pooled else None),
        "frames": frames,
        "calls_through": through,
    }


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def _core_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[float, float]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [float(x) for x in vals[:8]]
            total = sum(v)
            out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def _busy(a: dict[int, tuple[float, float]], b: dict[int, tuple[float, float]],
          cores: list[int]) -> float | None:
    busy = sum(b[c][0] - a[c][0] for c in cores if c in a and c in b)
    total = sum(b[c][1] - a[c][1] for c in cores if c in a and c in b)
    return round(100.0 * busy / total, 1) if total > 0 else None


def _agents_toml(backend: str, calls: int, stream_url: str | None) -> str:
    extra = {"echo": f"echo_delay_ms = {ECHO_DELAY_MS}",
             "openai": 'greeting = "Hello, this is the steady-state benchmark."',
             "twilio-stream": f'stream_url = "{stream_url}"'}[backend]
    return (f'default_agent = "bench"\n[tenants.bench]\nmax_concurrent_calls = '
            f'{calls * 2 + 50}\n[agents.bench]\ntenant = "bench"\nbackend = "{backend}"\n'
            f"{extra}\n")


def _plans(backend: str, calls: int, ramp_s: float, seconds: float) -> list[CallPlan]:
    """Calls planned to outlive any set-up; :func:`_measure` ends them all right after
    the window (by shortening ``CallPlan.seconds``: each ends at its next tick)."""
    silent = np.zeros(8000, dtype=np.int16)  # one second, looped
    plans = []
    life = 2 * ramp_s + SETTLE_S + seconds + RAMP_GRACE_S + TAIL_S
    for i in range(calls):
        if backend == "echo":
            audio = tag_frames(speech_like(2.0, seed=i), i)
            plans.append(CallPlan(seconds=life, audio=audio, index=i, tagged=True,
                                  keep_audio=False))
        else:
            plans.append(CallPlan(seconds=life, audio=silent, index=i, keep_audio=False))
    return plans


def ramp_for(backend: str, calls: int) -> float:
    """Seconds over which the calls connect: echo 100 calls/s; the WebSocket backends
    ``WS_RAMP_PER_S`` (each call's set-up, WebSocket handshake and greeting included,
    costs the gateway several ms of CPU, and a gateway swamped by set-up would make
    the connects back off and the ramp drag on)."""
    return calls / (100.0 if backend == "echo" else WS_RAMP_PER_S)


def estimate_seconds(backends: list[str], levels: list[int], runs: int,
                     seconds: float) -> float:
    """About how long the steady-state part of ``make bench`` takes."""
    return runs * sum(ramp_for(b, n) + SETTLE_S + seconds + START_COST_S + n / 200
                      for b in backends for n in levels)


async def run_steady(backend: str, calls: int, seconds: float, *, chunk_ms: int = 100,
                     lead_ms: int = 300, bounds: PeerBounds = PeerBounds(),
                     log_dir: str | None = None, py_spy: str | None = None,
                     realtime_priority: int = 0) -> dict[str, Any]:
    """One run of one backend at one level (see the module docstring). ``py_spy``: a
    path for a py-spy profile of the gateway over the window (speedscope JSON).
    ``realtime_priority``: the gateway's ``AIGW_REALTIME_PRIORITY`` (0: normal)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if calls < 1 or seconds <= 0:
        raise ValueError("need calls >= 1 and seconds > 0")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    gw_cpu = cpus[0] if pin else None
    peer_cpus = cpus[1:] if pin else cpus
    with tempfile.TemporaryDirectory(prefix="aigw-bench-") as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        if pin:
            os.sched_setaffinity(0, set(peer_cpus))  # the peers inherit the other core(s)
        try:
            return await _run(backend, calls, seconds, chunk_ms, lead_ms, bounds, Path(tmp),
                              logs, gw_cpu, peer_cpus, py_spy, realtime_priority)
        finally:
            if pin:
                os.sched_setaffinity(0, set(cpus))


async def _run(backend: str, calls: int, seconds: float, chunk_ms: int, lead_ms: int,
               bounds: PeerBounds, tmp: Path, logs: Path, gw_cpu: int | None,
               peer_cpus: list[int], py_spy: str | None = None,
               realtime_priority: int = 0) -> dict[str, Any]:
    ramp = ramp_for(backend, calls)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIGW_") and k != "OPENAI_API_KEY"}
    env["AIGW_LOG_LEVEL"] = "warning"
    env["AIGW_REALTIME_PRIORITY"] = str(realtime_priority)
    peers: dict[str, PeerProcess] = {}
    life_ms = int((2 * ramp + SETTLE_S + seconds + RAMP_GRACE_S + TAIL_S + 60.0) * 1000)
    opts = {"chunk_ms": chunk_ms, "lead_ms": lead_ms, "reply_ms": life_ms}
    if backend == "openai":
        peers["bot"] = PeerProcess("bot-stream", logs / "bench-bot.log", opts)
    elif backend == "twilio-stream":
        peers["app"] = PeerProcess("app-stream", logs / "bench-app.log", opts)
    try:
        for p in peers.values():
            await p.start()
        stream_url = peers["app"].url if "app" in peers else None
        if "bot" in peers:
            env["AIGW_OPENAI_URL"] = peers["bot"].url.split("?", 1)[0]
            env["AIGW_OPENAI_MODEL"] = "local-bot"
        cfg = tmp / "agents.toml"
        cfg.write_text(_agents_toml(backend, calls, stream_url))
        async with GatewayProcess(
            "--config", str(cfg), "--allow-unregistered", "--audiosocket", "127.0.0.1:0",
            "--http", "127.0.0.1:0",
            "--max-connections", str(max(1000, calls * 2)), env=env, cpu=gw_cpu,
            log_path=str(logs / "bench-gateway.log") if logs != tmp else None,
        ) as gw:
            return await _measure(backend, calls, seconds, ramp, gw, peers, bounds,
                                  gw_cpu, peer_cpus, chunk_ms, lead_ms, py_spy)
    finally:
        for p in peers.values():
            await p.stop()


async def _measure(backend: str, calls: int, seconds: float, ramp: float,
                   gw: GatewayProcess, peers: dict[str, PeerProcess], bounds: PeerBounds,
                   gw_cpu: int | None, peer_cpus: list[int], chunk_ms: int, lead_ms: int,
                   py_spy: str | None = None) -> dict[str, Any]:
    await asyncio.sleep(0.5)
    rss_idle = rss_kib(gw.pid)
    all_up = asyncio.Event()
    up_at: list[float] = []

    def progress(connected: int, ended: int, total: int) -> None:
        if connected + (ended if connected < total else 0) >= total and not up_at:
            up_at.append(time.monotonic())
            all_up.set()

    lateness = SimLateness()
    cpu_start, t_start = cpu_seconds(gw.pid) or 0.0, time.monotonic()
    plans = _plans(backend, calls, ramp, seconds)
    sim = asyncio.create_task(run_simulation(
        *gw.audiosocket, plans=plans, ramp_s=ramp,
        transit_offset_ms=ECHO_DELAY_MS if backend == "echo" else 0.0,
        on_progress=progress, lateness=lateness, connect_timeout=10.0))
    try:
        try:
            await asyncio.wait_for(all_up.wait(), ramp + RAMP_GRACE_S)
        except TimeoutError:
            up_at.append(time.monotonic())  # some never connected: the report says so
        await asyncio.sleep(SETTLE_S)
        m0 = await _metrics(gw)
        for p in peers.values():
            await p.ask("lateness")  # starts the peers' lateness window
        pids = {name: p.pid for name, p in peers.items()}
        cores0 = _core_times()
        sim0 = time.process_time()
        peer0 = {k: cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
        spy = await start_py_spy(gw.pid, seconds, py_spy) if py_spy else None
        cpu0, t0 = cpu_seconds(gw.pid) or 0.0, time.monotonic()
        await asyncio.sleep(seconds / 2)
        rss_load = rss_kib(gw.pid)
        await asyncio.sleep(seconds / 2)
        cpu1, t1 = cpu_seconds(gw.pid) or 0.0, time.monotonic()
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 10.0)
            if spy.returncode is None:
                spy.kill()
                await spy.wait()
        peer1 = {k: cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
        sim1 = time.process_time()
        cores1 = _core_times()
        peer_late = {name: await p.ask("lateness") for name, p in peers.items()}
        m1 = await _metrics(gw)
        for plan in plans:
            plan.seconds = 0.0  # every caller hangs up at its next tick
    except BaseException:
        sim.cancel()  # the gateway's exit closes the calls
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sim
        raise
    report: SimulationReport = await sim
    return _figures(backend, calls, seconds, report, lateness, t_start, cpu_start, t0, t1,
                    cpu0, cpu1, sim0, sim1, peer0, peer1, peer_late, cores0, cores1, m0, m1,
                    rss_idle, rss_load, gw_cpu, peer_cpus, bounds, chunk_ms, lead_ms)


def _window_quantile_ms(m0: dict[str, float], m1: dict[str, float], name: str,
                        q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile ``q`` of histogram ``name`` over
    the window: the bucket counts' deltas between two ``/metrics`` scrapes."""
    prefix = f"{name}_bucket{{"
    le = histogram_quantile({k: v - m0.get(k, 0.0) for k, v in m1.items()
                             if k.startswith(prefix)}, name, q)
    return None if le is None else round(le * 1000, 3)


def py_spy_exe() -> str | None:
    """py-spy beside this Python (a venv's bin) or on PATH; None when not installed."""
    near = Path(sys.executable).parent / "py-spy"
    return str(near) if near.exists() else shutil.which("py-spy")


async def start_py_spy(pid: int, seconds: float, out: str) -> asyncio.subprocess.Process:
    """py-spy recording ``pid`` for ``seconds`` (100 Hz, speedscope JSON to ``out``)."""
    exe = py_spy_exe()
    if exe is None:
        raise RuntimeError("--py-spy needs py-spy (pip install py-spy)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "100",
        "-f", "speedscope", "-o", out, "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def profile_summary(doc: dict[str, Any], top: int = 15) -> list[tuple[float, float, str]]:
    """(self %, inclusive %, function (file:line)) of a py-spy speedscope profile, by self
    share: where the gateway's CPU went in the window."""
    frames = doc.get("shared", {}).get("frames", [])
    own: dict[int, float] = {}
    incl: dict[int, float] = {}
    total = 0.0
    for prof in doc.get("profiles", []):
        for stack, weight in zip(prof.get("samples", []), prof.get("weights", []),
                                 strict=False):
            total += weight
            if stack:
                own[stack[-1]] = own.get(stack[-1], 0.0) + weight
            for f in set(stack):
                incl[f] = incl.get(f, 0.0) + weight
    if not total:
        return []

    def name(i: int) -> str:
        f = frames[i] if 0 <= i < len(frames) else {}
        return f"{f.get('name', '?')} ({Path(str(f.get('file', '?'))).name}:{f.get('line')})"

    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return [(round(100 * w / total, 1), round(100 * incl.get(i, 0.0) / total, 1), name(i))
            for i, w in ranked]


async def _metrics(gw: GatewayProcess) -> dict[str, float]:
    """The gateway's /metrics; an overloaded gateway may answer slowly: two tries, then
    empty (the counters then read 0 and ``metrics_ok`` says so)."""
    for _ in range(2):
        try:
            return await asyncio.to_thread(fetch_metrics, *gw.http)
        except (OSError, ValueError):  # TimeoutError and URLError are OSErrors
            continue
    return {}


def _delta(m0: dict[str, float], m1: dict[str, float], prefix: str) -> float:
    return sum(v - m0.get(k, 0.0) for k, v in m1.items()
               if k == prefix or k.startswith(prefix + "{"))


def _figures(backend: str, calls: int, seconds: float, report: SimulationReport,
             lateness: SimLateness, t_start: float, cpu_start: float, t0: float, t1: float,
             cpu0: float, cpu1: float, sim0: float, sim1: float, peer0: dict[str, float],
             peer1: dict[str, float], peer_late: dict[str, dict[str, Any]],
             cores0: dict[int, tuple[float, float]], cores1: dict[int, tuple[float, float]],
             m0: dict[str, float], m1: dict[str, float], rss_idle: int, rss_load: int,
             gw_cpu: int | None, peer_cpus: list[int], bounds: PeerBounds, chunk_ms: int,
             lead_ms: int) -> dict[str, Any]:
    span = t1 - t0
    s = report.summary()
    jit = window_jitter([c.arrivals for c in report.calls], t0, t1)
    stalls = tick_delays([c.arrivals for c in report.calls], t0, t1)
    rate = (cpu1 - cpu0) / (span * calls)  # CPU seconds per call-second
    live_before = sum(t0 - c.connected_at for c in report.calls
                      if c.connected_at is not None and c.connected_at < t0)
    setup = ((cpu0 - cpu_start) - rate * live_before) / calls
    underruns = int(_delta(m0, m1, "aigw_playout_underruns_total"))
    missed = int(_delta(m0, m1, "aigw_pacer_missed_ticks_total"))
    dropped = int(_delta(m0, m1, "aigw_twilio_media_dropped_total"))
    lat99 = _window_quantile_ms(m0, m1, "aigw_pacer_lateness_seconds", 0.99)
    wr50 = _window_quantile_ms(m0, m1, "aigw_pacer_writes_seconds", 0.50)
    wr99 = _window_quantile_ms(m0, m1, "aigw_pacer_writes_seconds", 0.99)
    sim_late = lateness.summary(t0, t1)
    peers: dict[str, Any] = {"simulator": {
        "cpu_percent": round(100 * (sim1 - sim0) / span, 1),
        **{k: _r(v, 3) for k, v in sim_late.items()}}}
    for name in peer0:
        late = peer_late.get(name, {})
        peers[name] = {"cpu_percent": round(100 * (peer1[name] - peer0[name]) / span, 1),
                       "late_p50_ms": late.get("p50_ms"), "late_p99_ms": late.get("p99_ms"),
                       "late_max_ms": late.get("max_ms")}
    own = sum(p["cpu_percent"] for p in peers.values()) / max(1, len(peer_cpus))
    core_busy = _busy(cores0, cores1, peer_cpus)
    gw_core_busy = _busy(cores0, cores1, [gw_cpu]) if gw_cpu is not None else None
    checks = {"simulator send": {"p99_ms": sim_late["send_late_p99_ms"],
                                 "max_ms": sim_late["send_late_max_ms"]},
              "simulator loop": {"p99_ms": sim_late["loop_late_p99_ms"],
                                 "max_ms": sim_late["loop_late_max_ms"]}}
    for name in peer0:
        checks[name] = {"p99_ms": peers[name]["late_p99_ms"],
                        "max_ms": peers[name]["late_max_ms"]}
    busiest = max(v for v in (core_busy, round(own, 1)) if v is not None)
    reasons = classify(busiest, checks, bounds)
    gw_pct = 100 * (cpu1 - cpu0) / span
    others = None if gw_core_busy is None else round(max(0.0, gw_core_busy - gw_pct), 1)
    through = jit["calls_through"]
    row = {
        "backend": backend,
        "calls": calls,
        "seconds": round(span, 2),
        "ok_calls": s["ok"],
        "ended_by": s["ended_by"],
        "calls_through_window": through,
        "cpu_ms_per_call_s": round(rate * 1000, 3),
        "calls_per_core": round(1.0 / rate) if rate > 0 else None,
        "gateway_cpu_percent": round(gw_pct, 1),
        "setup_cpu_ms_per_call": round(setup * 1000, 2),
        "setup_cpu_ms_per_call_gross": round((cpu0 - cpu_start) / calls * 1000, 2),
        "setup_s": round(t0 - t_start, 2),
        "jitter_p50_ms": jit["jitter_p50_ms"],
        "jitter_p99_ms": jit["jitter_p99_ms"],
        "gaps_over_40ms": jit["gaps_over_40ms"],
        "max_gap_ms": jit["max_gap_ms"],
        "stalled_ticks": stalls["stalled_ticks"],
        "stall_p50_ms": stalls["stall_p50_ms"],
        "stall_max_ms": stalls["stall_max_ms"],
        "late_in_stalls": stalls["late_in_stalls"],
        "frames_in_window": jit["frames"],
        "frames_expected": int(calls * span * 1000 / FRAME_MS),
        "audio_frames_share": round(sum(c.nonzero_frames for c in report.calls)
                                    / max(1, s["frames_received"]), 3),
        "underruns": underruns,
        "missed_ticks": missed,
        "metrics_ok": bool(m0) and bool(m1),
        "media_dropped": dropped,
        "pacer_lateness_p99_le_ms": lat99,
        "pacer_writes_p50_le_ms": wr50,
        "pacer_writes_p99_le_ms": wr99,
        "pacer_wait_ms_per_call_s": _r(1000 * _delta(m0, m1, "aigw_pacer_wait_seconds_total")
                                       / (span * calls), 3) if m0 and m1 else None,
        "gateway_realtime_priority": int(m0.get("aigw_realtime_priority", 0)) if m0 else None,
        "pacer_wait_share": _r(_delta(m0, m1, "aigw_pacer_wait_seconds_total") / span, 3)
        if m0 and m1 else None,
        "cpu_stalls": int(_delta(m0, m1, "aigw_pacer_cpu_stalls_total")) if m0 and m1 else None,
        "cpu_stall_ms": _r(1000 * _delta(m0, m1, "aigw_pacer_cpu_stall_seconds_total"), 1)
        if m0 and m1 else None,
        "transit_p50_ms": _r(s["transit_p50_ms"]),
        "transit_p99_ms": _r(s["transit_p99_ms"]),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_per_call_kib": round((rss_load - rss_idle) / calls, 1),
        "real_time": s["ok"] == calls and through == calls and underruns == 0 and bool(m1)
        and missed == 0 and jit["gaps_over_40ms"] == 0,
        "peers": peers,
        "peer_cores_busy_percent": core_busy,
        "peer_processes_percent_of_their_cores": round(own, 1),
        "gateway_core_busy_percent": gw_core_busy,
        "gateway_core_others_percent": others,
        "peer_limited": bool(reasons),
        "peer_limited_reasons": reasons,
        "contended": others is not None and others > bounds.gateway_core_others_pct,
        "gateway_pinned_to_cpu": gw_cpu,
        "peer_cpus": peer_cpus,
        "peer_chunk_ms": chunk_ms if backend != "echo" else None,
        "peer_lead_ms": lead_ms if backend != "echo" else None,
        "errors": s["errors"][:3],
    }
    return row


SUMMARY_KEYS: Final = (
    "cpu_ms_per_call_s", "calls_per_core", "setup_cpu_ms_per_call", "jitter_p50_ms",
    "jitter_p99_ms", "gaps_over_40ms", "max_gap_ms", "underruns", "missed_ticks",
    "rss_per_call_kib", "transit_p50_ms", "transit_p99_ms", "peer_cores_busy_percent",
    "gateway_core_others_percent", "pacer_writes_p50_le_ms", "pacer_writes_p99_le_ms",
    "stalled_ticks", "late_in_stalls",
)


def aggregate(backend: str, calls: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level: its runs, and per figure the median with the min-max spread."""
    good = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        vals = [r[key] for r in good if isinstance(r.get(key), int | float)]
        if vals:
            summary[key] = {"median": round(statistics.median(vals), 3),
                            "min": min(vals), "max": max(vals)}
    late = [max((v for v in (p.get("send_late_p99_ms"), p.get("loop_late_p99_ms"),
                             p.get("late_p99_ms")) if v is not None), default=0.0)
            for r in good for p in r["peers"].values()]
    if late:
        summary["tools_late_p99_ms"] = {"median": round(statistics.median(late), 3),
                                        "min": min(late), "max": max(late)}
    return {
        "backend": backend,
        "calls": calls,
        "runs": runs,
        "runs_ok": len(good),
        "real_time_runs": sum(1 for r in good if r["real_time"]),
        "peer_limited_runs": sum(1 for r in good if r["peer_limited"]),
        "peer_limited": any(r["peer_limited"] for r in good),
        "contended_runs": sum(1 for r in good if r.get("contended")),
        "summary": summary,
    }


def _cell(summary: dict[str, Any], key: str, digits: int = 2) -> str:
    v = summary.get(key)
    if v is None:
        return "-"

    def f(x: float) -> str:
        return f"{x:.{digits}f}" if digits else f"{round(x)}"

    if v["min"] == v["max"]:
        return f(v["median"])
    return f"{f(v['median'])} ({f(v['min'])}-{f(v['max'])})"


def _sched(doc: dict[str, Any]) -> str:
    """The gateway's scheduling in the runs (``AIGW_REALTIME_PRIORITY`` in effect)."""
    got = {r.get("gateway_realtime_priority") for lv in doc.get("steady", [])
           for r in lv.get("runs", []) if "error" not in r}
    got.discard(None)
    if not got:
        return "at normal priority"
    if got == {0}:
        asked = doc.get("config", {}).get("realtime_priority")
        return ("at normal priority (realtime priority asked for, not permitted)" if asked
                else "at normal priority")
    if len(got) == 1:
        return f"under SCHED_FIFO, priority {got.pop()} (AIGW_REALTIME_PRIORITY)"
    return f"at realtime priorities {sorted(got)} (0: normal) in different runs"


def steady_table(doc: dict[str, Any]) -> str:
    """The README's performance table (markdown) from ``bench/results.json``."""
    m = doc.get("machine", {})
    cfg = doc.get("config", {})
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python "
        f"{m.get('python', '?')}, {m.get('platform', '?')}; {doc.get('date', '?')}; gateway "
        f"pinned to core {m.get('gateway_cpu', '?')}, simulator and peers on "
        f"{m.get('peer_cpus', '?')}; gateway's event loop {_sched(doc)}; "
        f"{cfg.get('seconds', '?')} s steady window, "
        f"{cfg.get('runs', '?')} runs per level: median (min-max).",
        "",
        "| backend | calls | CPU ms per call-s | calls per core | set-up CPU ms per call "
        "| jitter p50 / p99 ms | gaps > 40 ms | underruns | RSS KiB per call | real time "
        "| peers' core busy % | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in doc.get("steady", []):
        s = lv.get("summary", {})
        n = lv.get("runs_ok", 0)
        verdicts = []
        if lv.get("peer_limited"):
            why = sorted({x for r in lv["runs"] for x in r.get("peer_limited_reasons", [])})
            verdicts.append(f"**peer-limited** ({lv['peer_limited_runs']}/{n} runs: "
                            f"{'; '.join(why[:2])})")
        if lv.get("contended_runs"):
            verdicts.append(f"**gateway core shared** ({lv['contended_runs']}/{n} runs: "
                            f"other processes {_cell(s, 'gateway_core_others_percent', 0)} %)")
        verdict = "; ".join(verdicts) or "gateway"
        lines.append(
            f"| {lv['backend']} | {lv['calls']} | {_cell(s, 'cpu_ms_per_call_s')} "
            f"| {_cell(s, 'calls_per_core', 0)} | {_cell(s, 'setup_cpu_ms_per_call')} "
            f"| {_cell(s, 'jitter_p50_ms')} / {_cell(s, 'jitter_p99_ms')} "
            f"| {_cell(s, 'gaps_over_40ms', 0)} | {_cell(s, 'underruns', 0)} "
            f"| {_cell(s, 'rss_per_call_kib', 1)} | {lv['real_time_runs']}/{n} "
            f"| {_cell(s, 'peer_cores_busy_percent', 0)} | {verdict} |")
    return "\n".join(lines)


def config_dict(backends: list[str], levels: list[int], runs: int, seconds: float,
                chunk_ms: int, lead_ms: int, bounds: PeerBounds,
                realtime_priority: int = 0) -> dict[str, Any]:
    return {"backends": backends, "levels": levels, "runs": runs, "seconds": seconds,
            "realtime_priority": realtime_priority,
            "settle_s": SETTLE_S, "echo_delay_ms": ECHO_DELAY_MS, "peer_chunk_ms": chunk_ms,
            "peer_lead_ms": lead_ms, "peer_bounds": asdict(bounds),
            "callers": "echo: tagged speech-like audio; openai, twilio-stream: silent"}
