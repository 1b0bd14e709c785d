"""agi/aigw_route.py run as Asterisk runs it: a subprocess fed the AGI environment
on stdin, its commands answered line by line (docs/PROTOCOLS.md §3), against a
running gateway (or a deliberately broken one)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.config import format_hostport
from tests.helpers import MS, RawPeer, running_gateway

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "agi" / "aigw_route.py"
AIGW_VARS = ("AIGW_STATUS", "AIGW_CALL_ID", "AIGW_AUDIOSOCKET", "AIGW_AUDIOSOCKET_ALT",
             "AIGW_TENANT", "AIGW_AGENT",
             "AIGW_RECORD", "AIGW_RECORDING_FILE", "AIGW_FALLBACK")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

TENANTS = """
[tenants.acme]
max_concurrent_calls = 1

[agents.support]
tenant = "acme"
backend = "echo"
record = true
recording_source = "mixmonitor"

[agents.support.extra]
fallback_dial = "PJSIP/100"

[numbers."+15551230000"]
agent = "support"
"""


def parse_agi_args(line: str) -> list[str]:
    """res_agi.c ``parse_args``: whitespace splits, quotes group, backslash escapes."""
    args: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and cur is None:
                cur = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if cur is not None:
                args.append("".join(cur))
                cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if cur is None:
            cur = []
        cur.append(ch)
        escaped = False
    if cur is not None:
        args.append("".join(cur))
    return args


def test_parse_agi_args_matches_asterisk():
    assert parse_agi_args('SET VARIABLE X "a,b)c"') == ["SET", "VARIABLE", "X", "a,b)c"]
    assert parse_agi_args(r'SET VARIABLE X "he said \"hi\""') == [
        "SET", "VARIABLE", "X", 'he said "hi"']
    assert parse_agi_args('SET VARIABLE X ""') == ["SET", "VARIABLE", "X", ""]


@dataclass
class AgiRun:
    """What one AGI session did: every command line, the channel's variables."""

    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    elapsed: float = 0.0
    stderr: bytes = b""


def agi_env(**over: str) -> dict[str, str]:
    env = {
        "agi_request": "aigw_route.py",
        "agi_channel": "PJSIP/trunk-00000001",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": "1760000000.1",
        "agi_version": "22.10.1",
        "agi_callerid": "5551212",
        "agi_calleridname": 'Probe "Q"',
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "aigw-inbound",
        "agi_extension": "+15551230000",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140000000000001",
    }
    env.update(over)
    return env


async def run_agi(
    url: str | None,
    env: dict[str, str],
    *,
    extra_env: dict[str, str] | None = None,
    reply: Any = None,
    within: float = 10.0,
) -> AgiRun:
    """Act as Asterisk: start the script, send the env block, answer each command.

    ``reply(command) -> str | None`` overrides the answer (None: answer nothing).
    Variable commands are applied to a fake channel the way Asterisk parses them.
    """
    penv = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    penv["AIGW_API_TOKEN_FILE"] = "/nonexistent"
    penv.update(extra_env or {})
    args = [sys.executable, str(SCRIPT)]
    block = "".join(f"{k}: {v}\n" for k, v in env.items())
    if url is not None:
        block += f"agi_arg_1: {url}\n"
    block += "\n"
    run = AgiRun()
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=penv,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(block.encode())
    await proc.stdin.drain()
    try:
        async with asyncio.timeout(within):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                cmd = line.decode().rstrip("\n")
                run.commands.append(cmd)
                answer = reply(cmd) if reply is not None else None
                if answer is None:
                    argv = parse_agi_args(cmd)
                    if argv[:2] == ["SET", "VARIABLE"] and len(argv) == 4:
                        run.variables[argv[2]] = argv[3]
                        answer = "200 result=1"
                    else:
                        answer = "510 Invalid or unknown command"
                if answer:
                    try:
                        proc.stdin.write((answer + "\n").encode())
                        await proc.stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
            run.returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    run.elapsed = time.monotonic() - t0
    run.stderr = await proc.stderr.read()
    return run


def assert_clean(run: AgiRun) -> None:
    """Only SET VARIABLE of our names, each with exactly one value argument."""
    for cmd in run.commands:
        argv = parse_agi_args(cmd)
        assert argv[:2] == ["SET", "VARIABLE"], cmd
        assert len(argv) == 4 and argv[2] in AIGW_VARS, cmd
    assert b"Traceback" not in run.stderr, run.stderr.decode()


@pytest.fixture
async def gateway(tmp_path):
    cfg = tmp_path / "tenants.toml"
    cfg.write_text(TENANTS)
    async with running_gateway(config=str(cfg), allow_unregistered=False) as gw:
        yield gw


def route_url(gw) -> str:
    return f"http://{format_hostport(*gw.http_address)}/v1/route"


async def test_ok_sets_every_variable_and_preregisters(gateway):
    run = await run_agi(route_url(gateway), agi_env())
    assert_clean(run)
    assert run.returncode == 0
    v = run.variables
    assert list(v) == [*AIGW_VARS[1:], "AIGW_STATUS"]  # status last
    assert v["AIGW_STATUS"] == "ok"
    call_id = v["AIGW_CALL_ID"]
    assert UUID_RE.fullmatch(call_id)
    assert v["AIGW_AUDIOSOCKET"] == format_hostport(*gateway.audiosocket.address)
    assert (v["AIGW_TENANT"], v["AIGW_AGENT"], v["AIGW_RECORD"]) == ("acme", "support", "1")
    assert v["AIGW_RECORDING_FILE"] == f"/var/spool/asterisk/monitor/acme/{call_id}.wav"
    assert v["AIGW_FALLBACK"] == "PJSIP/100"
    rec = await gateway.store.get_call(call_id)
    assert rec is not None and rec.status.value == "ringing"
    assert (rec.from_, rec.to, rec.direction) == ("5551212", "+15551230000", "inbound")
    # The AudioSocket call with that UUID is accepted (allow_unregistered is off).
    peer = await RawPeer.connect(gateway.audiosocket.address)
    peer.send(asp.encode_uuid(call_id))
    peer.send(asp.encode_audio(b"\x00" * 320))
    frames = await peer.read_frames(1, within=2.0)
    assert any(isinstance(f, asp.Audio) for f in frames)
    await peer.close()


async def test_unknown_did(gateway):
    run = await run_agi(route_url(gateway), agi_env(agi_extension="+15559999999"))
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "unknown"
    assert run.variables["AIGW_CALL_ID"] == "" and run.variables["AIGW_AUDIOSOCKET"] == ""


async def test_busy_when_tenant_at_limit(gateway):
    first = await run_agi(route_url(gateway), agi_env())
    second = await run_agi(route_url(gateway), agi_env(agi_uniqueid="1760000000.2"))
    assert first.variables["AIGW_STATUS"] == "ok"
    assert_clean(second)
    assert second.variables["AIGW_STATUS"] == "busy"
    assert second.variables["AIGW_CALL_ID"] == ""
    assert await gateway.store.active_slots("acme") == 1


async def test_unavailable_when_gateway_down():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    run = await run_agi(f"http://127.0.0.1:{port}/v1/route", agi_env())
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "unavailable"
    assert run.elapsed < 2.0
    assert b"5551212" not in run.stderr


async def _until_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while await r.read(65536):
            pass
    except ConnectionError:
        pass
    finally:
        w.close()


async def test_unavailable_when_gateway_slow():
    """A gateway that accepts and never answers: the script gives up on its deadline."""
    conns: list[asyncio.StreamWriter] = []

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)
        w.write(b"HTTP/1.1 200 OK\r\n")  # a trickle, then nothing
        await _until_eof(r, w)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        run = await run_agi(f"http://127.0.0.1:{port}/v1/route", agi_env(),
                            extra_env={"AIGW_ROUTE_TIMEOUT": "0.3"})
    finally:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(20 * MS)  # let the handler see EOF and close its side
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "unavailable"
    assert run.elapsed < 0.3 + 1.5, run.elapsed  # interpreter start-up + budget
    assert conns, "the script never connected"


HOSTILE = [
    '"; EXEC Dial PJSIP/evil',
    "a,b)c",
    "${SHELL(rm -rf /)}",
    "$[1+1]",
    "x\nagi_extension: +15551230000",
    "x\n\nSET VARIABLE AIGW_STATUS ok",
    "\\\"\\\\ ( ) , ; | & ' `",
    "1" * 500,
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_caller_id_and_did_inject_nothing(gateway, hostile):
    env = agi_env(agi_callerid=hostile, agi_calleridname=hostile)
    run = await run_agi(route_url(gateway), env)
    assert_clean(run)
    for name, value in run.variables.items():
        assert "$" not in value and "," not in value and '"' not in value, (name, value)
        assert "\n" not in value and "(" not in value, (name, value)
    status = run.variables.get("AIGW_STATUS", "")
    # A newline in the env block truncates it (as it would in Asterisk): the script
    # may then fail to talk AGI at all, which the dialplan treats as unavailable.
    assert status in ("ok", "unavailable", ""), status
    if "\n" not in hostile:
        assert status == "ok"
    # The hostile DID: never routed, never echoed.
    run2 = await run_agi(route_url(gateway), agi_env(agi_extension=hostile))
    assert_clean(run2)
    if "\n" not in hostile:
        assert run2.variables["AIGW_STATUS"] in ("unknown", "unavailable")
    # (with a newline the caller can only pick another DID: still a plain route)
    assert all(hostile not in v for v in run2.variables.values())


@pytest.mark.parametrize("bad", [
    {"AIGW_STATUS": "ok", "AIGW_CALL_ID": "x,1)", "AIGW_AUDIOSOCKET": "127.0.0.1:9092"},
    {"AIGW_STATUS": "ok", "AIGW_CALL_ID": str(uuid.uuid4()),
     "AIGW_AUDIOSOCKET": "127.0.0.1:9092,evil"},
    {"AIGW_STATUS": "ok${X}", "AIGW_CALL_ID": str(uuid.uuid4())},
    {"AIGW_STATUS": "ok", "AIGW_CALL_ID": str(uuid.uuid4()), "AIGW_AUDIOSOCKET": "h:70000"},
])
async def test_hostile_gateway_answer_becomes_unavailable(bad):
    run = await _against_fake_gateway({"variables": bad})
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "unavailable"
    assert run.variables["AIGW_CALL_ID"] == ""


async def test_unsafe_optional_values_are_dropped():
    cid = str(uuid.uuid4())
    run = await _against_fake_gateway({"variables": {
        "AIGW_STATUS": "ok", "AIGW_CALL_ID": cid, "AIGW_AUDIOSOCKET": "[::1]:9092",
        "AIGW_TENANT": "ac me", "AIGW_AGENT": "x)", "AIGW_RECORD": "1",
        "AIGW_RECORDING_FILE": "/var/spool/../../etc/passwd.wav",
        "AIGW_FALLBACK": "PJSIP/1,evil", "AIGW_EXTRA": "ignored",
    }})
    assert_clean(run)
    v = run.variables
    assert (v["AIGW_STATUS"], v["AIGW_CALL_ID"], v["AIGW_AUDIOSOCKET"]) == ("ok", cid, "[::1]:9092")
    assert v["AIGW_TENANT"] == v["AIGW_AGENT"] == v["AIGW_FALLBACK"] == ""
    assert (v["AIGW_RECORD"], v["AIGW_RECORDING_FILE"]) == ("0", "")
    assert "AIGW_EXTRA" not in v


async def _against_fake_gateway(answer: dict[str, Any], status: int = 200,
                                **kw: Any) -> AgiRun:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/v1/route", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await run_agi(f"http://127.0.0.1:{port}/v1/route", agi_env(), **kw)
    finally:
        await runner.cleanup()


async def test_token_from_environment(tmp_path):
    cfg = tmp_path / "tenants.toml"
    cfg.write_text(TENANTS)
    async with running_gateway(config=str(cfg), api_token="s3cret-0123456789abcdef") as gw:
        denied = await run_agi(route_url(gw), agi_env())
        allowed = await run_agi(route_url(gw), agi_env(),
                                extra_env={"AIGW_API_TOKEN": "s3cret-0123456789abcdef"})
        tok = tmp_path / "agi-token"
        tok.write_text("s3cret-0123456789abcdef\n")
        from_file = await run_agi(route_url(gw), agi_env(agi_uniqueid="2"),
                                  extra_env={"AIGW_API_TOKEN_FILE": str(tok)})
    assert denied.variables["AIGW_STATUS"] == "unavailable"
    assert b"401" in denied.stderr
    assert allowed.variables["AIGW_STATUS"] == "ok"
    assert from_file.variables["AIGW_STATUS"] == "busy"  # limit 1, first one still up


async def test_inline_hangup_line_ends_the_script(gateway):
    """pyst2 raises on a HANGUP line instead of a reply: the script exits cleanly."""
    run = await run_agi(route_url(gateway), agi_env(), reply=lambda cmd: "HANGUP")
    assert run.returncode == 0
    assert len(run.commands) == 1
    assert b"Traceback" not in run.stderr


async def test_dead_channel_511_ends_the_script(gateway):
    run = await run_agi(route_url(gateway), agi_env(),
                        reply=lambda cmd: "511 Command Not Permitted on a dead channel or "
                                          "intercept routine")
    assert run.returncode == 0 and len(run.commands) == 1


async def _sighup_while(block: str) -> float:
    """Start the script, SIGHUP it while it is blocked in ``block``; exit latency (s)."""
    accepted = asyncio.Event()

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set()
        await _until_eof(r, w)  # the script's death closes the connection

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    penv = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    penv["AIGW_ROUTE_TIMEOUT"] = "20"
    penv["AIGW_API_TOKEN_FILE"] = "/nonexistent"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=penv,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        env = agi_env()
        env["agi_arg_1"] = f"http://127.0.0.1:{port}/v1/route"
        if block == "http":
            proc.stdin.write(("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n").encode())
            await asyncio.wait_for(accepted.wait(), 5.0)
        else:  # blocked reading a command reply from Asterisk
            env["agi_arg_1"] = "http://127.0.0.1:1/v1/route"
            proc.stdin.write(("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n").encode())
            await asyncio.wait_for(proc.stdout.readline(), 5.0)
        await asyncio.sleep(50 * MS)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(proc.wait(), 5.0)
        return time.monotonic() - t0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(20 * MS)


async def test_sighup_during_gateway_request_exits_at_once():
    latency = await _sighup_while("http")
    assert latency < 0.5, latency


async def test_sighup_while_waiting_for_asterisk_exits_at_once():
    latency = await _sighup_while("reply")
    assert latency < 0.5, latency


@pytest.mark.parametrize("address", ["10.6.6.6:9092", "evil.example.com:9092",
                                     "127.evil.com:9092", "[2001:db8::1]:9092"])
async def test_audiosocket_address_must_be_the_gateways(address):
    run = await _against_fake_gateway({"variables": {
        "AIGW_STATUS": "ok", "AIGW_CALL_ID": str(uuid.uuid4()), "AIGW_AUDIOSOCKET": address}})
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "unavailable"
    assert run.variables["AIGW_AUDIOSOCKET"] == ""
    # Another gateway node is fine once listed.
    run = await _against_fake_gateway({"variables": {
        "AIGW_STATUS": "ok", "AIGW_CALL_ID": str(uuid.uuid4()), "AIGW_AUDIOSOCKET": address}},
        extra_env={"AIGW_AUDIOSOCKET_ALLOW": f"192.0.2.1, {address}"})
    assert run.variables["AIGW_STATUS"] == "ok"
    assert run.variables["AIGW_AUDIOSOCKET"] == address


async def test_alternate_audiosockets_are_checked_like_the_primary():
    """AIGW_AUDIOSOCKET_ALT: each address must be a gateway's (AIGW_AUDIOSOCKET_ALLOW);
    the others, the primary and repeats are dropped, and the rest keep their order."""
    primary, peer1, peer2 = "10.0.0.5:9092", "10.0.0.6:9092", "[2001:db8::7]:9092"
    alt = "&".join([peer1, "evil.example.com:9092", primary, peer2, peer1,
                    "10.0.0.6:9092,x", "${SHELL}:1", ""])
    allow = {"AIGW_AUDIOSOCKET_ALLOW": f"{primary},{peer1},{peer2}"}
    answer = {"variables": {"AIGW_STATUS": "ok", "AIGW_CALL_ID": str(uuid.uuid4()),
                            "AIGW_AUDIOSOCKET": primary, "AIGW_AUDIOSOCKET_ALT": alt}}
    run = await _against_fake_gateway(answer, extra_env=allow)
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "ok"
    assert run.variables["AIGW_AUDIOSOCKET_ALT"] == f"{peer1}&{peer2}"
    # Nothing allowed: the call still routes to the primary, with no alternates.
    run = await _against_fake_gateway(answer, extra_env={"AIGW_AUDIOSOCKET_ALLOW": primary})
    assert run.variables["AIGW_STATUS"] == "ok" and run.variables["AIGW_AUDIOSOCKET_ALT"] == ""
    # Not an ok answer: never set.
    busy = {"variables": {"AIGW_STATUS": "busy", "AIGW_AUDIOSOCKET_ALT": peer1}}
    run = await _against_fake_gateway(busy, extra_env=allow)
    assert run.variables["AIGW_AUDIOSOCKET_ALT"] == ""


@pytest.mark.parametrize(("fallback", "kept"), [
    ("Local/s@aigw-inbound", False), ("local/1@default/n", False), ("LOCAL/x@y", False),
    ("Console/dsp", False), ("PJSIP/+15551234567@trunk", True), ("SIP/human", True),
])
async def test_fallback_dial_strings_are_plain_trunk_dials(fallback, kept):
    run = await _against_fake_gateway({"variables": {
        "AIGW_STATUS": "busy", "AIGW_FALLBACK": fallback}})
    assert_clean(run)
    assert run.variables["AIGW_STATUS"] == "busy"
    assert run.variables["AIGW_FALLBACK"] == (fallback if kept else "")


@pytest.mark.parametrize(("path", "kept"), [
    ("/etc/asterisk/x.wav", False),
    ("/var/spool/asterisk/monitor/acme/{other}.wav", False),
    ("/var/spool/asterisk/monitor/{cid}.wav", False),
    ("/var/spool/asterisk/monitor/acme/sub/{cid}.wav", False),
    ("/var/spool/asterisk/monitor/.hidden/{cid}.wav", False),
    ("/var/spool/asterisk/monitor/acme/{cid}.wav", True),
])
async def test_recording_file_must_be_the_calls_file_in_the_monitor_dir(path, kept):
    cid = str(uuid.uuid4())
    path = path.format(cid=cid, other=uuid.uuid4())
    run = await _against_fake_gateway({"variables": {
        "AIGW_STATUS": "ok", "AIGW_CALL_ID": cid, "AIGW_AUDIOSOCKET": "127.0.0.1:9092",
        "AIGW_RECORD": "1", "AIGW_RECORDING_FILE": path}})
    assert_clean(run)
    v = run.variables
    assert v["AIGW_STATUS"] == "ok"
    assert (v["AIGW_RECORD"], v["AIGW_RECORDING_FILE"]) == (("1", path) if kept else ("0", ""))
