"""``audiosocket-gw mock-realtime``: the local bot as a real child process, driven over a socket."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from audiosocket_gw.realtime import protocol as p
from audiosocket_gw.testing import mock_realtime as mock_realtime_cli

FACTOR = float(os.environ.get("AIGW_TEST_TIME_FACTOR", "1"))
START_S = 15.0 * FACTOR  # interpreter + numpy import on a loaded 2-core machine
STEP_S = 5.0 * FACTOR
KEY_VAR = "AIGW_TEST_MOCK_REALTIME_KEY"
KEY = "sk-local-test-key"


class Child:
    """The ``mock-realtime`` process and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""

    async def read_url(self) -> str:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), START_S)
            if not raw:
                raise AssertionError(f"exited before printing the URL: {self.lines}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line.startswith("AIGW_OPENAI_URL="):
                self.url = line.split("=", 1)[1]
                return self.url

    async def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        rest, _ = await asyncio.wait_for(self.proc.communicate(), STEP_S)
        self.lines += rest.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode


@asynccontextmanager
async def mock_realtime(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "audiosocket_gw.testing.mock_realtime", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield Child(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    data = json.loads(await asyncio.wait_for(ws.recv(), STEP_S))
    assert isinstance(data, dict)
    return data


async def _until(ws: ClientConnection, event_type: str) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    while True:
        event = await _recv(ws)
        if event["type"] == event_type:
            return event, seen
        seen.append(event["type"])


async def test_serves_the_bot_until_sigterm_and_exits_0() -> None:
    args = ("--listen", "127.0.0.1:0", "--api-key-env", KEY_VAR, "--reply-ms", "300",
            "--greeting", "Welcome to the mock line.")
    async with mock_realtime(*args, env={KEY_VAR: KEY}) as child:
        url = await child.read_url()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        assert not url.endswith(":0/v1/realtime")
        assert all(KEY not in line for line in child.lines)  # the key is never printed
        # The gateway adds ?model=... to AIGW_OPENAI_URL; so do we.
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}?model=m", open_timeout=STEP_S)
        assert refused.value.response.status_code == 401
        ws = await connect(f"{url}?model=m", open_timeout=STEP_S,
                           additional_headers={"Authorization": f"Bearer {KEY}"})
        created = await _recv(ws)
        assert created["type"] == "session.created"
        assert created["session"]["model"] == "m"
        # --greeting and --reply-ms reach the bot.
        await ws.send(p.response_create())
        done, seen = await _until(ws, "response.output_audio_transcript.done")
        assert done["transcript"] == "Welcome to the mock line."
        assert "response.created" in seen
        deltas = seen.count("response.output_audio.delta")
        assert deltas == 3  # 300 ms in 100 ms chunks
        await _until(ws, "response.done")
        # SIGTERM with a client connected: it is closed (1001) and the process exits 0.
        assert await child.stop(signal.SIGTERM) == 0
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), STEP_S)
        assert ws.close_code == 1001
        assert child.lines[-1] == "mock-realtime: stopped after 1 session(s)"  # 401: none


async def test_sigint_exits_0_and_audio_is_decoded() -> None:
    async with mock_realtime("--listen", "127.0.0.1:0", "--vad-threshold", "100",
                             "--silence-ms", "100") as child:
        url = await child.read_url()
        async with connect(f"{url}?model=m", open_timeout=STEP_S) as ws:
            assert (await _recv(ws))["type"] == "session.created"
            # 200 ms of a loud square wave (mu-law 0x80/0x00 = +-32124) then 200 ms silence:
            # with --vad-threshold 100 and --silence-ms 100 the bot hears a turn.
            loud = base64.b64encode(bytes([0x80, 0x00]) * 800).decode()
            quiet = base64.b64encode(b"\xff" * 1600).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": loud}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": quiet}))
            started, _ = await _until(ws, "input_audio_buffer.speech_started")
            assert started["audio_start_ms"] == 0
            stopped, _ = await _until(ws, "input_audio_buffer.speech_stopped")
            assert stopped["audio_end_ms"] == 200
        assert await child.stop(signal.SIGINT) == 0


async def test_usage_errors_exit_2_and_busy_port_exits_1() -> None:
    async with mock_realtime("--listen", "127.0.0.1:0", "--api-key-env", KEY_VAR,
                             env={KEY_VAR: ""}) as child:
        _, err = await asyncio.wait_for(child.proc.communicate(), START_S)
        assert child.proc.returncode == 2
        assert KEY_VAR in err.decode()
    async with mock_realtime("--listen", "nowhere") as child:
        await asyncio.wait_for(child.proc.communicate(), START_S)
        assert child.proc.returncode == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        async with mock_realtime("--listen", f"127.0.0.1:{taken}") as child:
            _, err = await asyncio.wait_for(child.proc.communicate(), START_S)
            assert child.proc.returncode == 1
            assert "cannot listen" in err.decode()


def test_subcommand_defaults() -> None:
    parser = argparse.ArgumentParser(prog="audiosocket-gw")
    sub = parser.add_subparsers(dest="command", required=True)
    mock_realtime_cli.add_parser(sub)
    args = parser.parse_args(["mock-realtime"])
    assert args.command == "mock-realtime"
    assert args.listen == mock_realtime_cli.DEFAULT_LISTEN == "127.0.0.1:8765"
    assert (args.api_key_env, args.greeting, args.realtime) == (None, None, False)
    assert (args.reply_ms, args.vad_threshold) == (1500, 600.0)
    args = parser.parse_args(["mock-realtime", "--listen", "[::1]:0", "--realtime",
                              "--reply-ms", "50"])
    assert (args.listen, args.realtime, args.reply_ms) == ("[::1]:0", True, 50)


def test_invalid_bot_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_realtime_cli.main(["--listen", "127.0.0.1:0", "--chunk-ms", "0"]) == 2
    assert "chunk_ms" in capsys.readouterr().err


def test_script_file_is_read_and_checked(tmp_path: Path) -> None:
    from audiosocket_gw.testing.localbot import ScriptStep
    from audiosocket_gw.testing.mock_realtime import load_script

    good = tmp_path / "s.json"
    good.write_text('[{"say": null, "call": "lookup", "arguments": {"q": 1}}, {"say": "hi"}]')
    assert load_script(str(good)) == [ScriptStep(None, "lookup", {"q": 1}), ScriptStep("hi")]
    bad = tmp_path / "b.json"
    for text in ('{"say": "x"}', '[{"say": 1}]', '[{"speak": "x"}]'):
        bad.write_text(text)
        with pytest.raises(ValueError):
            load_script(str(bad))
