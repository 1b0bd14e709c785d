"""``twilio-stream`` benchmark: gateway CPU per call and mark-echo accuracy, as measured
from outside the gateway.

Why: the Twilio-compatibility promise has two costs worth a number: what one call costs
the gateway with this backend (caller audio mu-law encoded and sent as a JSON ``media``
event every 20 ms, app audio decoded and paced), and how exactly ``mark`` echoes follow
the audio, which an app relies on to know what the caller heard (barge-in truncation).

How: this process runs a :class:`~audiosocket_gw.testing.fakeapp.FakeTwilioApp` that, on
``start``, sends the whole response at once as a Realtime-backed app does (``delta_ms``
tone deltas, each followed by a ``mark``), and the simulated Asterisk callers
(:class:`~audiosocket_gw.testing.bench.bargein.SimCaller`: 320-byte frames every 20 ms, every
received frame kept with its :func:`time.monotonic` arrival). The gateway is a child
process (``--backend twilio-stream --stream-url``) pinned to one core when there are two,
as in :mod:`audiosocket_gw.testing.bench.run`.

Figures:

* ``cpu_ms_per_call_s``: gateway CPU (user + system, from ``/proc/<pid>/stat``) per
  second of call over the window when every call is up; ``calls_per_core`` = 1000 / that;
* ``mark_echo_*_ms``: for every mark whose audio was heard, the app's receipt of the echo
  minus the arrival at the caller of the last frame of the audio sent before that mark,
  both on this process's monotonic clock (p50, p95, max; ``min`` negative means an echo
  came before its audio, which must not happen beyond the loopback's sub-millisecond
  scheduling noise);
* ``violations``: deviations from Twilio's stream behaviour found by the fake app's
  strict validator (sequence numbers, timestamps, mark order...), which must be 0;
* ``max_gap_ms``: the longest time between two frames a caller received once every call
  was up (``startup_max_gap_ms``: before, while all calls connect at once), with the
  gateway's own ``underruns`` and ``missed_ticks`` counters to tell a gateway stall from
  a late simulator (``simulator_cpu_percent``: this process's load).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from typing import Any, Final

from ...dsp.vad import SILENCE_LEVEL, frame_level
from ...twilio.ids import call_sid_for
from ..fakeapp import AppSession, FakeTwilioApp, tone_ulaw
from ..proc import GatewayProcess, cpu_seconds
from ..simulator.audio import speech_like
from .bargein import FRAME_S, SimCaller, _fetch_metrics, percentile

__all__ = ["app_script", "mark_delays_ms", "measure_twilio"]

MARK_PREFIX: Final = "part-"


def app_script(audio_ms: int, delta_ms: int) -> list[dict[str, Any]]:
    """The app's response: ``audio_ms`` of tone in ``delta_ms`` media messages, each
    followed by a mark ``part-<n>`` (``streamSid`` is filled in by the fake app)."""
    audio = tone_ulaw(audio_ms)
    step = delta_ms * 8
    out: list[dict[str, Any]] = []
    for n, i in enumerate(range(0, len(audio), step)):
        payload = base64.b64encode(audio[i:i + step]).decode("ascii")
        out.append({"event": "media", "media": {"payload": payload}})
        out.append({"event": "mark", "mark": {"name": f"{MARK_PREFIX}{n}"}})
    return out


def mark_delays_ms(frames: list[tuple[float, bytes]], session: AppSession,
                   delta_ms: int) -> list[float]:
    """Echo receipt minus last-frame arrival (ms) of each mark whose audio was heard.

    Mark ``part-n`` follows ``(n + 1) * delta_ms`` of audio, so its last frame is the
    ``(n + 1) * delta_ms / 20``-th loud frame the caller received (counting loud frames,
    not positions, so an inserted silence frame would not shift the match).
    """
    loud = [t for t, f in frames if frame_level(f) >= SILENCE_LEVEL]
    per_delta = round(delta_ms / (FRAME_S * 1000))
    out: list[float] = []
    for e in session.events:
        if e.kind != "mark":
            continue
        name = e.event.get("mark", {}).get("name", "")
        if not isinstance(name, str) or not name.startswith(MARK_PREFIX):
            continue
        index = (int(name[len(MARK_PREFIX):]) + 1) * per_delta - 1
        if index < len(loud):
            out.append((e.at - loud[index]) * 1000.0)
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


async def measure_twilio(calls: int = 20, seconds: float = 8.0, *,
                         delta_ms: int = 200) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the figures as a dict.

    Keys: ``calls``, ``seconds``, ``ok`` (calls that ran to their end, heard the app and
    had marks measured), ``cpu_ms_per_call_s``, ``calls_per_core``, ``marks_sent``,
    ``marks_measured``, ``mark_echo_p50_ms``/``_p95_ms``/``_max_ms``/``_min_ms``,
    ``violations``, ``max_gap_ms``, ``startup_max_gap_ms``, ``media_dropped``,
    ``underruns``, ``missed_ticks`` (gateway counters), ``simulator_cpu_percent``,
    ``gateway_pinned_to_cpu``.
    """
    if calls < 1 or seconds < 2.0:
        raise ValueError("need calls >= 1 and seconds >= 2")
    audio_ms = int((seconds - 1.0) * 1000) // delta_ms * delta_ms
    script = app_script(audio_ms, delta_ms)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    env["AIGW_LOG_LEVEL"] = "warning"
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    app = FakeTwilioApp(extra_on_start=script)
    await app.start()
    try:
        if pin:
            os.sched_setaffinity(0, set(cpus[1:]))
        async with GatewayProcess(
            "--backend", "twilio-stream", "--stream-url", app.url, "--allow-unregistered",
            "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--max-connections", str(max(1000, 2 * calls)),
            env=env, cpu=cpus[0] if pin else None,
        ) as gw:
            callers = [SimCaller(*gw.audiosocket, speech_like(seconds, seed=i, level=3000.0))
                       for i in range(calls)]
            running = asyncio.gather(*(c.run(limit_s=seconds + 5.0) for c in callers))
            try:
                warmup = min(1.0, seconds / 4)
                await asyncio.sleep(warmup)
                cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
                sim0 = time.process_time()
                await asyncio.sleep(max(0.5, seconds - warmup - 0.5))
                cpu1, t1 = cpu_seconds(gw.pid), time.monotonic()
                sim1 = time.process_time()
            finally:
                heard = await running
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(app.wait_for(
                    lambda: all(s.closed.is_set() for s in app.sessions), 3.0), 3.5)
            try:
                metrics = await _fetch_metrics(*gw.http)
            except (OSError, TimeoutError):
                metrics = {}
    finally:
        if pin:
            os.sched_setaffinity(0, set(cpus))
        await app.stop()

    by_call = {s.call_sid: s for s in app.sessions}
    delays: list[float] = []
    ok = 0
    max_gap = start_gap = 0.0
    for report in heard:
        session = by_call.get(call_sid_for(report.call_id))
        arrivals = [t for t, _ in report.frames]
        for a, b in zip(arrivals, arrivals[1:], strict=False):
            if a >= t0:
                max_gap = max(max_gap, b - a)
            else:
                start_gap = max(start_gap, b - a)
        if session is None:
            continue
        d = mark_delays_ms(report.frames, session, delta_ms)
        delays += d
        ok += report.ended_by == "simulator" and report.first_audio_s() is not None and bool(d)
    cpu = None
    if cpu0 is not None and cpu1 is not None:
        cpu = (cpu1 - cpu0) / ((t1 - t0) * calls)
    return {
        "calls": calls,
        "seconds": seconds,
        "ok": ok,
        "cpu_ms_per_call_s": None if cpu is None else round(cpu * 1000, 3),
        "calls_per_core": round(1.0 / cpu) if cpu else None,
        "marks_sent": sum(1 for m in script if m["event"] == "mark") * calls,
        "marks_measured": len(delays),
        "mark_echo_p50_ms": _r(percentile(delays, 50)),
        "mark_echo_p95_ms": _r(percentile(delays, 95)),
        "mark_echo_max_ms": _r(max(delays, default=None)),
        "mark_echo_min_ms": _r(min(delays, default=None)),
        "violations": sum(len(s.violations) for s in app.sessions),
        "max_gap_ms": round(max_gap * 1000, 1),
        "startup_max_gap_ms": round(start_gap * 1000, 1),
        "media_dropped": int(sum(v for k, v in metrics.items()
                                 if k.startswith("aigw_twilio_media_dropped_total"))),
        "underruns": int(metrics.get("aigw_playout_underruns_total", 0)),
        "missed_ticks": int(metrics.get("aigw_pacer_missed_ticks_total", 0)),
        # Callers and app share this process: near 100 % of a core, their own lateness
        # shows up in max_gap_ms without being the gateway's.
        "simulator_cpu_percent": round(100 * (sim1 - sim0) / (t1 - t0), 1),
        "gateway_pinned_to_cpu": cpus[0] if pin else None,
    }


def main() -> None:
    """``python -m audiosocket_gw.testing.bench.twilio [CALLS [SECONDS]]``: print the figures."""
    import json
    import sys

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    print(json.dumps(asyncio.run(measure_twilio(calls, seconds)), indent=2))


if __name__ == "__main__":
    main()
