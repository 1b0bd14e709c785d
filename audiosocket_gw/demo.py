"""``make demo``: the real gateway, simulated Asterisk calls, a readable report.

Starts ``audiosocket-gw serve`` as a child process on free ports (or on
``AIGW_AUDIOSOCKET``/``AIGW_HTTP`` when set), places a few calls through it with the
PBX simulator, reads the gateway's own Prometheus metrics, prints both, stops the
gateway with SIGTERM and exits 0 only if every call went through cleanly.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .config import format_hostport
from .proc import GatewayProcess
from .simulator.pbx import CallPlan, format_report, run_simulation, speech_like


def fetch_metrics(host: str, port: int) -> dict[str, float]:
    """Scrape /metrics into {'name{labels}': value}."""
    url = f"http://{format_hostport(host, port)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (as PromQL would, without interpolation)."""
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}").split(",")[0]), v)
        for k, v in metrics.items()
        if k.startswith(f"{name}_bucket{{")
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


async def run_demo(calls: int = 3, seconds: float = 4.0) -> int:
    args = ["--allow-unregistered", "--backend", "echo", "--echo-delay-ms", "200"]
    if not os.environ.get("AIGW_AUDIOSOCKET"):
        args += ["--audiosocket", "127.0.0.1:0"]
    if not os.environ.get("AIGW_HTTP"):
        args += ["--http", "127.0.0.1:0"]
    out_dir = tempfile.mkdtemp(prefix="aigw-demo-")
    print(f"starting gateway: audiosocket-gw serve {' '.join(args)}")
    async with GatewayProcess(*args) as gw:
        print(f"gateway up: AudioSocket {format_hostport(*gw.audiosocket)}, "
              f"HTTP {format_hostport(*gw.http)} (pid {gw.pid})")
        plans = [
            CallPlan(seconds=seconds, audio=speech_like(seconds + 1, seed=i), index=i,
                     dtmf=[(1.0, "1"), (2.0, "#")] if i == 0 else [])
            for i in range(calls)
        ]
        print(f"placing {calls} simulated calls of {seconds:.0f} s (echo backend, 200 ms delay)\n")
        report = await run_simulation(*gw.audiosocket, plans=plans, out_dir=out_dir)
        print(format_report(report))
        m = await asyncio.to_thread(fetch_metrics, *gw.http)
    print("\ngateway metrics (from its /metrics):")
    completed = sum(
        v for k, v in m.items() if k.startswith("aigw_calls_total{") and "outcome=completed" in k
    )
    print(f"  calls completed:        {completed:.0f}")
    print(f"  frames received / sent: {m.get('aigw_frames_received_total', 0):.0f} / "
          f"{m.get('aigw_frames_sent_total', 0):.0f}")
    print(f"  playout underruns:      {m.get('aigw_playout_underruns_total', 0):.0f}")
    print(f"  pacer missed ticks:     {m.get('aigw_pacer_missed_ticks_total', 0):.0f}")
    p99 = histogram_quantile(m, "aigw_pacer_lateness_seconds", 0.99)
    print(f"  pacer lateness p99 <=   {p99 * 1000 if p99 is not None else float('nan'):.1f} ms")
    ttfa = histogram_quantile(m, "aigw_time_to_first_audio_seconds", 0.5)
    print(f"  time to first audio p50 <= {ttfa if ttfa is not None else float('nan'):.2f} s")
    print(f"\nWAVs of what each simulated caller heard: {out_dir}")
    ok = report.ok_calls == len(report.calls)
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
