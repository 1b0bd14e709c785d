"""The CLI contract: names, flags, environment variables, exit codes, the process lifecycle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

import pytest

from audiosocket_gw import __version__
from audiosocket_gw.cli import build_parser
from audiosocket_gw.config import Config, ConfigError
from audiosocket_gw.testing.proc import GatewayProcess
from audiosocket_gw.testing.simulator.pbx import run_simulation


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audiosocket_gw", *args],
        capture_output=True, text=True, timeout=30, env=env,
    )


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"audiosocket-gw {__version__}"


def test_every_command_has_help() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = list(sub.choices)  # type: ignore[arg-type]
    assert {"serve", "simulate", "call", "numbers", "mock-realtime", "demo", "bench"} <= set(
        commands
    )
    for cmd in commands:
        r = run_cli(cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "usage:" in r.stdout


def test_serve_flags_keep_their_contract_names() -> None:
    r = run_cli("serve", "--help")
    for flag in ("--audiosocket", "--http", "--backend", "--data-dir", "--config",
                 "--allow-unregistered", "--stream-url"):
        assert flag in r.stdout, flag
    for var in ("AIGW_AUDIOSOCKET", "AIGW_HTTP", "AIGW_BACKEND", "AIGW_DATA_DIR",
                "AIGW_CONFIG", "AIGW_ALLOW_UNREGISTERED", "AIGW_STREAM_URL"):
        assert var in r.stdout, var


def test_defaults_are_loopback_and_not_8088() -> None:
    cfg = Config.from_env(env={})
    assert cfg.audiosocket == "127.0.0.1:9092"
    assert cfg.http == "127.0.0.1:9094"
    assert cfg.backend == "echo" and cfg.allow_unregistered is False


def test_env_then_flags_precedence() -> None:
    env = {"AIGW_AUDIOSOCKET": "127.0.0.1:7000", "AIGW_ALLOW_UNREGISTERED": "1",
           "AIGW_BACKEND": "twilio-stream"}
    cfg = Config.from_env(env=env, backend="echo")
    assert cfg.audiosocket == "127.0.0.1:7000"
    assert cfg.allow_unregistered is True
    assert cfg.backend == "echo"


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"AIGW_AUDIOSOCKET": "nonsense"}, "HOST:PORT"),
        ({"AIGW_HTTP": "127.0.0.1:99999"}, "out of range"),
        ({"AIGW_BACKEND": "sip"}, "not one of"),
        ({"AIGW_HTTP": "0.0.0.0:9094"}, "AIGW_API_TOKEN"),
        ({"AIGW_ECHO_DELAY_MS": "soon"}, "cannot read"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        Config.from_env(env=env)


def test_serve_exits_2_on_bad_config() -> None:
    env = dict(os.environ, AIGW_HTTP="0.0.0.0:0")
    env.pop("AIGW_API_TOKEN", None)
    r = run_cli("serve", env=env)
    assert r.returncode == 2
    assert "AIGW_API_TOKEN" in r.stderr


def test_secrets_are_not_in_repr() -> None:
    cfg = Config.from_env(env={"OPENAI_API_KEY": "sk-secret-value",
                               "AIGW_API_TOKEN": "tok-0123456789abcdef"})
    assert cfg.openai_api_key == "sk-secret-value"
    assert "sk-secret-value" not in repr(cfg) and "tok-0123456789abcdef" not in repr(cfg)


async def test_serve_process_runs_calls_and_stops_cleanly_on_sigterm() -> None:
    gw = GatewayProcess("--allow-unregistered", "--audiosocket", "127.0.0.1:0",
                        "--http", "127.0.0.1:0", "--shutdown-grace", "0.2")
    await gw.start()
    try:
        report = await run_simulation(*gw.audiosocket, calls=2, seconds=0.5)
        assert report.ok_calls == 2
        url = "http://{}:{}/healthz".format(*gw.http)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b'"status": "ok"' in body
    finally:
        code = await gw.stop()
    assert code == 0


def test_simulate_reports_failure_when_no_gateway() -> None:
    r = run_cli("simulate", "--target", "127.0.0.1:1", "--calls", "1", "--seconds", "0.2")
    assert r.returncode == 1
    assert "connect failed" in r.stdout


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("127.evil.com", False), ("127.0.0.1.nip.io", False), ("0.0.0.0", False), ("::", False),
    ("10.0.0.1", False), ("localhost.evil.com", False), ("", False),
])
def test_is_loopback_uses_addresses_not_prefixes(host: str, loopback: bool) -> None:
    from audiosocket_gw.config import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.parametrize("http", ["127.evil.com:9094", "0.0.0.0:9094"])
def test_non_loopback_http_needs_a_token(http: str) -> None:
    from audiosocket_gw.config import ConfigError

    with pytest.raises(ConfigError, match="AIGW_API_TOKEN"):
        Config.from_env(env={"AIGW_HTTP": http})
    Config.from_env(env={"AIGW_HTTP": http, "AIGW_API_TOKEN": "x" * 16})


@pytest.mark.parametrize("token", ["x", " ", "short-token", "a" * 15, "has space 0123456789",
                                   "tab\t0123456789abcdef", "0123456789abcdef\n"])
def test_weak_or_whitespace_tokens_are_refused(token: str) -> None:
    from audiosocket_gw.config import ConfigError

    for http in ("0.0.0.0:9094", "127.0.0.1:9094"):
        with pytest.raises(ConfigError, match="at least 16 characters with no whitespace"):
            Config.from_env(env={"AIGW_HTTP": http, "AIGW_API_TOKEN": token})


async def test_simulate_shows_progress_on_stderr_and_the_report_on_stdout() -> None:
    from tests.helpers import running_gateway

    async with running_gateway() as gw:
        host, port = gw.audiosocket.address
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "audiosocket_gw", "simulate", "--target", f"{host}:{port}",
            "--calls", "2", "--seconds", "0.6", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    # Not a terminal: plain lines (the last one when every call has ended), no bar.
    assert "simulated calls: 2/2 done (0 up" in err.decode()
    assert "\x1b[" not in err.decode()
    assert "calls: 2  ok: 2" in out.decode()
    assert "simulated calls" not in out.decode()
