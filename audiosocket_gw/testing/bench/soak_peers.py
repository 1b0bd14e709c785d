"""The soak's and the benchmark's AI peers, each in a process of its own (``python -m
audiosocket_gw.testing.bench.soak_peers bot|app|bot-stream|app-stream [JSON options]``),
driven over stdin/stdout; :class:`PeerProcess` starts and drives one.

Why a process each: the soak and ``make bench`` measure the gateway's core; the peers
(the local Realtime bot, the fake Twilio Media Streams app) run on the other core, and
their own CPU is read from ``/proc`` so an overloaded peer is not blamed on the gateway.

``bot`` and ``app`` are the soak's (greeting, replies, echo). ``bot-stream`` and
``app-stream`` are the benchmark's: they talk for the whole call, paced at real time
(``chunk_ms`` per message after a first ``lead_ms``), do not listen to the silent
callers and keep no per-message records, so they stay cheap at hundreds of calls.

Protocol (one JSON object per line): the peer first prints ``{"url": ...}``; then each
command line gets one answer line.

* ``{"cmd": "drop", "count": N}`` -- abort up to N live sessions without a close frame
  (the gateway sees 1006): ``{"dropped": n}`` from the bot, ``{"dropped": n, "call_sids":
  [...]}`` from the app;
* ``{"cmd": "stats"}`` -- ``{"live": n, "sessions": total, "violations": n,
  "violation_samples": [...]}`` (violations: the fake app's strict Twilio checks);
* ``{"cmd": "lateness"}`` -- ``{"p50_ms", "p99_ms", "max_ms", "samples"}``: how late this
  process's event loop ran (a timer re-armed every 5 ms) since the previous ``lateness``
  command, which starts a new window;
* ``{"cmd": "stop"}`` -- answer ``{}`` and exit.

Memory stays bounded over a long run: the bot keeps few sessions and events; the app
forgets closed sessions every few seconds, keeping only counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from ..fakeapp import FakeTwilioApp
from ..localbot import LocalRealtimeBot

__all__ = ["PeerProcess", "main"]

PROBE_S = 0.005


class PeerProcess:
    """One peer process, commands over its stdin/stdout (see the module docstring).

    ``options`` (JSON) go to the peer as its second argument. Started in this process's
    CPU affinity (the benchmark and the soak pin themselves first, so the peers inherit
    the other core).
    """

    def __init__(self, kind: str, log_path: Path, options: dict[str, Any] | None = None
                 ) -> None:
        self.kind = kind
        self.log_path = log_path
        self.options = options or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        log = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "audiosocket_gw.testing.bench.soak_peers", self.kind,
                json.dumps(self.options),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
        finally:
            log.close()
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30.0)
        if not line:
            raise RuntimeError(f"peer {self.kind} did not start (see {self.log_path})")
        self.url = json.loads(line)["url"]

    async def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return {"error": "peer not running"}
        assert proc.stdin is not None and proc.stdout is not None
        async with self._lock:
            proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 20.0)
        if not line:
            return {"error": "peer exited"}
        out: dict[str, Any] = json.loads(line)
        return out

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ask("stop"), 5.0)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class _LagProbe:
    """How late this process's event loop runs: a timer re-armed every ``PROBE_S``."""

    def __init__(self) -> None:
        self.late = array("d")
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def fire(due: float) -> None:
            now = loop.time()
            self.late.append(max(0.0, now - due))
            self.handle = loop.call_at(now + PROBE_S, fire, now + PROBE_S)

        first = loop.time() + PROBE_S
        self.handle = loop.call_at(first, fire, first)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def window(self) -> dict[str, Any]:
        """Summary since the previous call (ms), and start a new window."""
        late, self.late = self.late, array("d")
        if not late:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
        a = np.frombuffer(late, dtype=np.float64) * 1000.0
        return {"p50_ms": round(float(np.percentile(a, 50)), 3),
                "p99_ms": round(float(np.percentile(a, 99)), 3),
                "max_ms": round(float(a.max()), 3), "samples": len(a),
                "at": time.monotonic()}


class _AppPeer:
    def __init__(self, app: FakeTwilioApp) -> None:
        # The soak's greets, then echoes the caller: audio both ways for the whole call.
        self.app = app
        self.sessions = 0
        self.violations = 0
        self.samples: list[str] = []

    def collect(self) -> None:
        for s in self.app.forget_closed():
            self._count(s.violations)

    def _count(self, violations: list[str]) -> None:
        self.sessions += 1
        self.violations += len(violations)
        for v in violations:
            if len(self.samples) < 10:
                self.samples.append(v)

    def stats(self) -> dict[str, Any]:
        self.collect()
        live = self.app.live_sessions
        pending = sum(len(s.violations) for s in live)
        return {"live": len(live), "sessions": self.sessions + len(live),
                "violations": self.violations + pending,
                "violation_samples": self.samples[:10]}


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _run(kind: str, options: dict[str, Any]) -> None:
    bot: LocalRealtimeBot | None = None
    app: _AppPeer | None = None
    chunk_ms = int(options.get("chunk_ms", 100))
    lead_ms = int(options.get("lead_ms", 300))
    if kind == "bot-stream":
        # One response as long as the call, paced at real time: the bot talks throughout.
        bot = LocalRealtimeBot(reply_ms=int(options.get("reply_ms", 3_600_000)),
                               send_realtime=True, realtime_lead_ms=lead_ms,
                               chunk_ms=chunk_ms, listen=False, max_recorded_events=4,
                               max_sessions=8)
        await bot.start()
        _answer({"url": bot.url})
    elif kind == "app-stream":
        app = _AppPeer(FakeTwilioApp(stream_chunk_ms=chunk_ms, stream_lead_ms=lead_ms,
                                     record=False))
        await app.app.start()
        _answer({"url": app.app.url})
    elif kind == "bot":
        # A greeting and a reply per caller turn, sent faster than real time as OpenAI
        # does; few sessions and events kept (a 10-minute run opens hundreds).
        bot = LocalRealtimeBot(reply_ms=1500, max_recorded_events=16, max_sessions=32)
        await bot.start()
        _answer({"url": bot.url})
    elif kind == "app":
        app = _AppPeer(FakeTwilioApp(greeting_ms=1000, echo=True))
        await app.app.start()
        _answer({"url": app.app.url})
    else:
        raise SystemExit(f"unknown peer {kind!r} (bot, app, bot-stream or app-stream)")
    reader = await _commands()
    probe = _LagProbe()
    probe.start()

    async def tidy() -> None:
        while app is not None:
            await asyncio.sleep(5.0)
            app.collect()

    tidier = asyncio.get_running_loop().create_task(tidy())
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            name = cmd.get("cmd")
            if name == "stop":
                _answer({})
                break
            if name == "lateness":
                _answer(probe.window())
                continue
            if name == "drop":
                count = int(cmd.get("count", 1))
                if bot is not None:
                    _answer({"dropped": bot.drop_live(count)})
                elif app is not None:
                    sids = app.app.drop_live(count)
                    _answer({"dropped": len(sids), "call_sids": sids})
            elif name == "stats":
                if bot is not None:
                    _answer({"live": bot.live_connections, "sessions": len(bot.sessions),
                             "violations": 0, "violation_samples": []})
                elif app is not None:
                    _answer(app.stats())
            else:
                _answer({"error": f"unknown command {name!r}"})
    finally:
        probe.stop()
        tidier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tidier
        if bot is not None:
            await bot.stop()
        if app is not None:
            await app.app.stop()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = json.loads(args[1]) if len(args) > 1 else {}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args[0] if args else "", options))


if __name__ == "__main__":
    main()
