"""The soak's AI peers, each in a process of its own (``python -m
audiosocket_gw.testing.bench.soak_peers bot|app``), driven over stdin/stdout.

Why a process each: the soak measures the gateway's core; the peers (the local Realtime
bot, the fake Twilio Media Streams app) run on the other core, and their own CPU is read
from ``/proc`` so an overloaded peer is not blamed on the gateway.

Protocol (one JSON object per line): the peer first prints ``{"url": ...}``; then each
command line gets one answer line.

* ``{"cmd": "drop", "count": N}`` -- abort up to N live sessions without a close frame
  (the gateway sees 1006): ``{"dropped": n}`` from the bot, ``{"dropped": n, "call_sids":
  [...]}`` from the app;
* ``{"cmd": "stats"}`` -- ``{"live": n, "sessions": total, "violations": n,
  "violation_samples": [...]}`` (violations: the fake app's strict Twilio checks);
* ``{"cmd": "stop"}`` -- answer ``{}`` and exit.

Memory stays bounded over a long run: the bot keeps few sessions and events; the app
forgets closed sessions every few seconds, keeping only counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from ..fakeapp import FakeTwilioApp
from ..localbot import LocalRealtimeBot

__all__ = ["main"]


class _AppPeer:
    def __init__(self) -> None:
        # Greets, then echoes the caller: audio both ways for the whole call.
        self.app = FakeTwilioApp(greeting_ms=1000, echo=True)
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


async def _run(kind: str) -> None:
    bot: LocalRealtimeBot | None = None
    app: _AppPeer | None = None
    if kind == "bot":
        # A greeting and a reply per caller turn, sent faster than real time as OpenAI
        # does; few sessions and events kept (a 10-minute run opens hundreds).
        bot = LocalRealtimeBot(reply_ms=1500, max_recorded_events=16, max_sessions=32)
        await bot.start()
        _answer({"url": bot.url})
    elif kind == "app":
        app = _AppPeer()
        await app.app.start()
        _answer({"url": app.app.url})
    else:
        raise SystemExit(f"unknown peer {kind!r} (bot or app)")
    reader = await _commands()

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
        tidier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tidier
        if bot is not None:
            await bot.stop()
        if app is not None:
            await app.app.stop()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args[0] if args else ""))


if __name__ == "__main__":
    main()
