"""Command line: ``audiosocket-gw serve | simulate | call | numbers | rollout |
mock-realtime | demo | bench | soak``.

The names, flags and environment variables here are a contract other tools script
against: keep them. Every flag of ``serve`` mirrors a ``Config`` field and its
``AIGW_`` environment variable (the flag wins).

``simulate``, ``mock-realtime``, ``demo``, ``bench`` and ``soak`` run tooling from
:mod:`audiosocket_gw.testing`, imported only inside the functions that need it: the
runtime never imports that package (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__, cli_call, cli_rollout, numbers_import
from .config import DEFAULT_AUDIOSOCKET, DEFAULT_HTTP, ConfigError, parse_hostport
from .logfmt import setup_logging
from .priority import MAX_PRIORITY


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway",
                       description="Run the AudioSocket gateway (AudioSocket TCP + HTTP API).")
    p.add_argument("--audiosocket", metavar="HOST:PORT",
                   help=f"AudioSocket listen address (env AIGW_AUDIOSOCKET, default "
                        f"{DEFAULT_AUDIOSOCKET})")
    p.add_argument("--http", metavar="HOST:PORT",
                   help=f"HTTP address for /metrics, /healthz and the API (env AIGW_HTTP, "
                        f"default {DEFAULT_HTTP})")
    p.add_argument("--backend", choices=["echo", "openai", "twilio-stream"],
                   help="backend for calls (env AIGW_BACKEND, default echo)")
    p.add_argument("--data-dir", metavar="DIR", help="state directory (env AIGW_DATA_DIR)")
    p.add_argument("--config", metavar="FILE", help="tenants/agents TOML file (env AIGW_CONFIG)")
    p.add_argument("--allow-unregistered", action="store_true", default=None,
                   help="accept any call UUID with the default agent "
                        "(env AIGW_ALLOW_UNREGISTERED=1)")
    p.add_argument("--stream-url", metavar="WSS_URL",
                   help="twilio-stream backend: the default agent's Media Streams URL "
                        "(env AIGW_STREAM_URL)")
    p.add_argument("--debug-dump", action="store_true", default=None,
                   help="write a stereo WAV + JSON event log per call under DATA_DIR/dumps "
                        "(env AIGW_DEBUG_DUMP=1); never on by default")
    p.add_argument("--echo-delay-ms", type=int, metavar="MS",
                   help="echo backend delay (env AIGW_ECHO_DELAY_MS, default 200)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="concurrent AudioSocket connections (env AIGW_MAX_CONNECTIONS)")
    p.add_argument("--shutdown-grace", type=float, metavar="S",
                   help="seconds calls may continue after SIGTERM (env AIGW_SHUTDOWN_GRACE)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="env AIGW_LOG_LEVEL, default info")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="text, or json: one object per line with time, level, logger, "
                        "message, call_id, tenant, agent, node (env AIGW_LOG_FORMAT, "
                        "default text)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes sharing the ports (env AIGW_WORKERS, default 1; "
                        "more than one needs AIGW_DATABASE_URL)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="place simulated Asterisk calls at a gateway",
                       description="Act as Asterisk: place N concurrent AudioSocket calls.")
    p.add_argument("--target", default=DEFAULT_AUDIOSOCKET, metavar="HOST:PORT",
                   help=f"gateway AudioSocket address (default {DEFAULT_AUDIOSOCKET})")
    p.add_argument("--calls", type=int, default=1, metavar="N")
    p.add_argument("--seconds", type=float, default=5.0, metavar="S")
    p.add_argument("--wav", metavar="FILE", help="caller audio (default: generated speech-like)")
    p.add_argument("--dtmf", metavar="DIGITS", default="",
                   help="digits to send, one per second from t=1 s")
    p.add_argument("--ramp", type=float, default=0.0, metavar="S", help="spread call starts")
    p.add_argument("--out-dir", metavar="DIR", help="write a WAV of what each call heard")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiosocket-gw",
        description="Asterisk AudioSocket gateway for AI phone agents.",
    )
    parser.add_argument("--version", action="version", version=f"audiosocket-gw {__version__}")
    from .testing import mock_realtime

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _serve_parser(sub)
    _simulate_parser(sub)
    cli_call.add_parser(sub)
    mock_realtime.add_parser(sub)
    numbers_import.add_parser(sub)
    cli_rollout.add_parser(sub)
    d = sub.add_parser("demo", help="start a gateway, place simulated calls, print a report")
    d.add_argument("--calls", type=int, default=3)
    d.add_argument("--seconds", type=float, default=9.0)
    b = sub.add_parser("bench", help="benchmark the gateway with simulated calls",
                       description="Each backend's steady state on one pinned core (echo, "
                                   "openai against the local bot, twilio-stream against the "
                                   "fake app, peers in processes of their own), then "
                                   "barge-in and mark echoes; or --workers; or --table.")
    b.add_argument("--calls", type=int, nargs="+", default=[100, 200, 400],
                   help="concurrency levels to run (default 100 200 400)")
    b.add_argument("--seconds", type=float, default=30.0,
                   help="steady-state window per run, after every call is up (default 30)")
    b.add_argument("--runs", type=int, default=3, help="runs per level (default 3)")
    b.add_argument("--backends", nargs="+", choices=["echo", "openai", "twilio-stream"],
                   default=None, help="backends to run (default all three)")
    b.add_argument("--no-extras", action="store_true",
                   help="skip the barge-in and mark-echo measurements")
    b.add_argument("--py-spy", metavar="DIR", dest="py_spy",
                   help="also profile the gateway over each run's window with py-spy "
                        "(speedscope JSON per run in DIR, top functions printed)")
    b.add_argument("--realtime-priority", type=int, default=10, metavar="N",
                   help="the gateway's AIGW_REALTIME_PRIORITY in the steady-state runs, as "
                        "the systemd unit runs it (default 10; 0: normal scheduling)")
    b.add_argument("--table", metavar="JSON",
                   help="instead: print the README's performance table from this file")
    b.add_argument("--out", default="bench/results.json", help="JSON file for the figures")
    b.add_argument("--workers", type=int, nargs="+", default=None, metavar="N",
                   help="instead: run `serve --workers N` for each N on a PostgreSQL database "
                        "the bench creates (AIGW_BENCH_PG_URL, default 127.0.0.1:5432) and "
                        "report calls per host at real time, per-worker CPU and the scaling")
    k = sub.add_parser("soak", help="many calls for minutes with faults: drops, leaks, stuck "
                                     "records",
                       description="Echo, openai (local bot) and twilio-stream (fake app) calls "
                                   "against a separate gateway process, with a fault every "
                                   "--fault-every seconds (AI socket dropped, AMI dropped, a "
                                   "caller that stops reading, an AMI flood).")
    k.add_argument("--minutes", type=float, default=10.0)
    k.add_argument("--calls", type=int, default=100, help="concurrent calls")
    k.add_argument("--fault-every", type=float, default=60.0, metavar="S",
                   help="seconds between faults")
    k.add_argument("--out", default="bench/soak.json", help="JSON file for the report")
    return parser


def _setup_logging(level: str, fmt: str = "text", node: str | None = None) -> None:
    setup_logging(level, fmt, node)


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .settings import Settings

    try:
        settings = Settings.load(
            audiosocket=args.audiosocket,
            http=args.http,
            backend=args.backend,
            data_dir=args.data_dir,
            config=args.config,
            allow_unregistered=args.allow_unregistered,
            echo_delay_ms=args.echo_delay_ms,
            stream_url=args.stream_url,
            debug_dump=args.debug_dump,
            max_connections=args.max_connections,
            shutdown_grace=args.shutdown_grace,
            log_level=args.log_level,
            log_format=args.log_format,
        )
        settings = dataclasses.replace(
            settings, store=settings.store.for_workers(args.workers, args.worker_index))
    except ConfigError as exc:
        print(f"audiosocket-gw: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.core.log_level, settings.core.log_format, settings.store.node_id)
    if settings.store.workers > 1 and args.worker_index is None:
        from .workers import run_supervisor

        return asyncio.run(run_supervisor(
            argv, settings.store.workers, settings.core.audiosocket, settings.core.http,
            settings.core.shutdown_grace, args.ready_file))
    from .gateway import Gateway

    async def run() -> None:
        gw = Gateway(settings)
        await gw.serve(ready_file=args.ready_file)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"audiosocket-gw: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"audiosocket-gw: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


async def _simulate_with_progress(run: Any, total: int, seconds: float) -> Any:
    """Run a simulation with its progress on stderr (calls ended of total)."""
    from .progress import Reporter, ticking

    state = {"up": 0, "t0": time.monotonic()}

    def on_progress(connected: int, ended: int, _total: int) -> None:
        state["up"] = connected - ended
        rep.done = ended

    def note() -> str:
        elapsed = time.monotonic() - state["t0"]
        return f"{state['up']} up, {min(elapsed, seconds):.0f}/{seconds:.0f} s"

    with Reporter(total, "simulated calls") as rep:
        async with ticking(rep, note):
            report = await run(on_progress)
        rep.update(note())
    return report


def _simulate(args: argparse.Namespace) -> int:
    from .testing.simulator import load_wav_8k, run_simulation
    from .testing.simulator.pbx import CallPlan, format_report, speech_like

    try:
        host, port = parse_hostport(args.target, setting="--target")
    except ConfigError as exc:
        print(f"audiosocket-gw simulate: {exc}", file=sys.stderr)
        return 2
    audio = load_wav_8k(args.wav) if args.wav else None
    dtmf = [(1.0 + i, d) for i, d in enumerate(args.dtmf)]
    plans = [
        CallPlan(
            seconds=args.seconds,
            audio=audio if audio is not None else speech_like(args.seconds + 1, seed=i),
            index=i,
            dtmf=list(dtmf),
        )
        for i in range(args.calls)
    ]
    report = asyncio.run(_simulate_with_progress(
        lambda on_progress: run_simulation(host, port, plans=plans, out_dir=args.out_dir,
                                           ramp_s=args.ramp, on_progress=on_progress),
        len(plans), args.seconds))
    if args.json:
        print(json.dumps({"summary": report.summary(),
                          "calls": [c.summary() for c in report.calls]}, indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok_calls == len(report.calls) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args, argv)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "call":
        return cli_call.run(args)
    if args.command == "mock-realtime":
        from .testing import mock_realtime

        return mock_realtime.run(args)
    if args.command == "numbers":
        return numbers_import.run(args)
    if args.command == "rollout":
        return cli_rollout.run(args)
    if args.command == "demo":
        from .testing.demo import run_demo

        return asyncio.run(run_demo(calls=args.calls, seconds=args.seconds))
    if args.command == "bench":
        if args.workers:
            from .testing.bench.workers import run_workers_bench

            return asyncio.run(run_workers_bench(workers=args.workers, levels=args.calls,
                                                 seconds=args.seconds, out=args.out))
        from .testing.bench.run import print_table, run_bench

        if args.table:
            return print_table(args.table)
        if (args.runs < 1 or args.seconds <= 0 or min(args.calls) < 1
                or not 0 <= args.realtime_priority <= MAX_PRIORITY):
            print("audiosocket-gw bench: need --runs >= 1, --seconds > 0, --calls >= 1 and "
                  f"--realtime-priority 0 to {MAX_PRIORITY}", file=sys.stderr)
            return 2
        return asyncio.run(run_bench(levels=args.calls, seconds=args.seconds, out=args.out,
                                     backends=args.backends, runs=args.runs,
                                     extras=not args.no_extras, py_spy=args.py_spy,
                                     realtime_priority=args.realtime_priority))
    if args.command == "soak":
        from .testing.bench.soak import main_async

        return asyncio.run(main_async(minutes=args.minutes, calls=args.calls,
                                      fault_every_s=args.fault_every, out=args.out))
    return 2  # pragma: no cover
