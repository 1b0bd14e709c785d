"""``audiosocket-gw mock-realtime``: run the local OpenAI-Realtime-compatible bot.

Why: anyone can check an Asterisk + gateway set-up end to end with no cloud key. This
serves :class:`~audiosocket_gw.testing.localbot.LocalRealtimeBot` (GA wire format,
energy VAD, tone replies, truncate/cancel semantics as OpenAI) on ``--listen`` until
SIGINT or SIGTERM, and prints the URL to give the gateway as ``AIGW_OPENAI_URL``::

    audiosocket-gw mock-realtime --listen 127.0.0.1:8765
    AIGW_OPENAI_URL=ws://127.0.0.1:8765/v1/realtime audiosocket-gw serve --backend openai

``--script FILE`` plays scripted function calls (a JSON array of steps ``{"say": text
or null, "call": name, "arguments": {...}}``, one per response, see
:class:`~audiosocket_gw.testing.localbot.ScriptStep`), e.g. to try an agent's tools::

    [{"say": "Let me check.", "call": "lookup_order", "arguments": {"order_id": "42"}},
     {"say": ""}, {"say": "Goodbye.", "call": "end_call"}]

``--listen HOST:0`` picks a free port (the printed URL has the real one).
``--api-key-env NAME`` makes the bot require ``Authorization: Bearer <$NAME>`` (HTTP 401
otherwise, as OpenAI); the key is read from the environment, never from the command line
(where ``ps`` would show it), and never printed. Exit codes: 0 after a clean stop on a
signal, 1 if the address cannot be bound, 2 on a usage error.

Also runnable as ``python -m audiosocket_gw.testing.mock_realtime [options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..config import ConfigError, is_loopback, parse_hostport

if TYPE_CHECKING:  # imported lazily at run time: numpy + websockets are not needed for --help
    from .localbot import LocalRealtimeBot, ScriptStep

__all__ = ["DEFAULT_LISTEN", "add_parser", "build_parser", "load_script", "main", "run"]

DEFAULT_LISTEN = "127.0.0.1:8765"
STOP_TIMEOUT_S = 5.0
"""Longest wait for open sessions to close after a signal (then exit anyway)."""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve ws://HOST:PORT/v1/realtime on (default "
                        f"{DEFAULT_LISTEN}; port 0 picks a free one)")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="require 'Authorization: Bearer KEY' with KEY read from the "
                        "environment variable NAME (default: no key required)")
    p.add_argument("--reply-ms", type=int, default=1500, metavar="MS",
                   help="length of each spoken reply (default 1500)")
    p.add_argument("--greeting", metavar="TEXT",
                   help="transcript of a response.create without instructions")
    p.add_argument("--realtime", action="store_true",
                   help="pace audio deltas at real time (default: burst faster, as OpenAI)")
    p.add_argument("--vad-threshold", type=float, default=600.0, metavar="LEVEL",
                   help="energy VAD: mean |sample| of a 20 ms window that counts as speech "
                        "(default 600)")
    p.add_argument("--silence-ms", type=int, default=500, metavar="MS",
                   help="silence that ends the caller's turn (default 500)")
    p.add_argument("--chunk-ms", type=int, default=100, metavar="MS",
                   help="audio per response.output_audio.delta (default 100)")
    p.add_argument("--script", metavar="FILE",
                   help="JSON array of steps {say, call, arguments}: scripted function "
                        "calls, one step per response")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mock-realtime`` subcommand to the ``audiosocket-gw`` parser."""
    p = subparsers.add_parser(
        "mock-realtime", help="run a local OpenAI-Realtime-compatible test bot",
        description="Serve a local Realtime (GA) bot for the openai backend; prints the "
                    "AIGW_OPENAI_URL to use. Runs until SIGINT/SIGTERM.")
    _add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the same options (``python -m ...testing.mock_realtime``)."""
    p = argparse.ArgumentParser(prog="audiosocket-gw mock-realtime",
                                description="Serve a local Realtime (GA) test bot.")
    _add_arguments(p)
    return p


def load_script(path: str) -> list[ScriptStep]:
    """Read a ``--script`` file; ``ValueError`` saying what is wrong."""
    from .localbot import ScriptStep

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError("expected a JSON array of steps")
    steps = []
    for i, step in enumerate(data):
        if not isinstance(step, dict) or set(step) - {"say", "call", "arguments"}:
            raise ValueError(f"step {i}: an object with say, call and arguments only")
        say, call, arguments = step.get("say", ""), step.get("call"), step.get("arguments", {})
        if not (say is None or isinstance(say, str)) or not (
                call is None or isinstance(call, str)) or not isinstance(arguments, dict):
            raise ValueError(f"step {i}: say is a string or null, call a string, "
                             "arguments an object")
        steps.append(ScriptStep(say=say, call=call, arguments=arguments))
    return steps


def _endpoint(url: str) -> str:
    """The bot URL without its query: what ``AIGW_OPENAI_URL`` should be."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=""))


def _error(message: str) -> None:
    print(f"audiosocket-gw mock-realtime: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (see the module docstring)."""
    from .localbot import LocalRealtimeBot

    try:
        host, port = parse_hostport(args.listen, setting="--listen")
    except ConfigError as exc:
        _error(str(exc))
        return 2
    api_key: str | None = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:
            _error(f"--api-key-env: environment variable {args.api_key_env} is not set")
            return 2
    kwargs: dict[str, Any] = {} if args.greeting is None else {"greeting_text": args.greeting}
    if args.script:
        try:
            kwargs["script"] = load_script(args.script)
        except (OSError, ValueError) as exc:
            _error(f"--script: {exc}")
            return 2
    try:
        bot = LocalRealtimeBot(
            api_key=api_key,
            reply_ms=args.reply_ms,
            vad_threshold=args.vad_threshold,
            silence_ms=args.silence_ms,
            chunk_ms=args.chunk_ms,
            send_realtime=args.realtime,
            **kwargs,
        )
    except ValueError as exc:
        _error(str(exc))
        return 2
    if api_key is None and not is_loopback(host):
        _error(f"warning: listening on {host} with no API key required")
    try:
        asyncio.run(_serve(bot, host, port, args.api_key_env))
    except OSError as exc:
        _error(f"cannot listen on {args.listen}: {exc}")
        return 1
    return 0


async def _serve(bot: LocalRealtimeBot, host: str, port: int, key_env: str | None) -> None:
    """Start ``bot``, print where it listens, wait for a signal, stop it (bounded)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    # Handlers first: a signal that arrives while binding still stops us cleanly.
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await bot.start(host, port)
        url = _endpoint(bot.url)
        print(f"mock-realtime: local Realtime bot listening on {url}", flush=True)
        if key_env:
            print(f"mock-realtime: clients must send the key from ${key_env} "
                  f"(OPENAI_API_KEY for the gateway)", flush=True)
        print(f"AIGW_OPENAI_URL={url}", flush=True)
        await stop.wait()
        print("mock-realtime: stopping", flush=True)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bot.stop(), STOP_TIMEOUT_S)
        for sig in signals:
            loop.remove_signal_handler(sig)
    print(f"mock-realtime: stopped after {len(bot.sessions)} session(s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m audiosocket_gw.testing.mock_realtime [options]``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
