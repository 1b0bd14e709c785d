"""Structured logs: --log-format text|json (AIGW_LOG_FORMAT), the JSON line's fields, and
no phone numbers at INFO in either format over a full inbound and outbound test call
(routing + the PBX simulator, the AMI simulator placing the outbound call)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from audiosocket_gw.backends.base import CallInfo, CallLog
from audiosocket_gw.cli import build_parser
from audiosocket_gw.config import Config, ConfigError
from audiosocket_gw.logfmt import JsonFormatter, make_formatter
from audiosocket_gw.testing.simulator.ami import AmiSimulator
from audiosocket_gw.testing.simulator.audio import speech_like
from audiosocket_gw.testing.simulator.pbx import CallPlan, run_simulation
from tests.helpers import MS, ami_gateway

CID = "0b8e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
DID, CALLER = "+15551230000", "+15557654321"
CALLEE, CALLER_ID = "+15550001111", "+15559990000"
TOML = f"""
default_agent = "bot"
[tenants.acme]
[agents.bot]
tenant = "acme"
backend = "echo"
[numbers."{DID}"]
agent = "bot"
"""


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("audiosocket_gw.x", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_line_fields_from_the_call_logger() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(node="gw-1"))
    logger = logging.getLogger("audiosocket_gw.test_logfmt")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        log = CallLog.for_call(logger, CallInfo(call_id=CID, tenant="acme", agent="bot"))
        log.info("backend opened in %d ms", 12)
        log.info("with extra", extra={"agent": "other"})
        logger.info("no call here")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("call %s: failed", CID)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    first = lines[0]
    assert set(first) == {"time", "level", "logger", "message", "call_id", "tenant", "agent",
                          "node"}
    assert first["message"] == f"call {CID}: backend opened in 12 ms"
    assert (first["level"], first["logger"], first["node"]) == (
        "info", "audiosocket_gw.test_logfmt", "gw-1")
    assert (first["call_id"], first["tenant"], first["agent"]) == (CID, "acme", "bot")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert lines[1]["agent"] == "other"
    assert "call_id" not in lines[2] and lines[2]["message"] == "no call here"
    assert lines[3]["call_id"] == CID and "ValueError: boom" in lines[3]["exc"]


def test_text_format_is_one_human_line() -> None:
    line = make_formatter("text").format(record("call %s: hello", CID))
    assert line.endswith(f"INFO audiosocket_gw.x: call {CID}: hello")
    assert "{" not in line


def test_log_format_setting_flag_and_env() -> None:
    assert Config.from_env(env={}).log_format == "text"
    assert Config.from_env(env={"AIGW_LOG_FORMAT": "json"}).log_format == "json"
    assert Config.from_env(env={"AIGW_LOG_FORMAT": "json"}, log_format="text").log_format == \
        "text"
    with pytest.raises(ConfigError, match="AIGW_LOG_FORMAT"):
        Config.from_env(env={"AIGW_LOG_FORMAT": "xml"})
    args = build_parser().parse_args(["serve", "--log-format", "json"])
    assert args.log_format == "json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-format", "yaml"])


@contextmanager
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every INFO+ line of the process, in both formats."""
    text, js = io.StringIO(), io.StringIO()
    handlers = []
    for buf, fmt in ((text, "text"), (js, "json")):
        h = logging.StreamHandler(buf)
        h.setFormatter(make_formatter(fmt))
        h.setLevel(logging.INFO)
        handlers.append(h)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for h in handlers:
        root.addHandler(h)
    try:
        yield text, js
    finally:
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(level)


async def test_full_test_call_logs_no_numbers_and_every_call_line_has_its_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Path(tempfile.mkdtemp(prefix="aigw-logs-")) / "t.toml"
    cfg.write_text(TOML)
    sim = AmiSimulator(connect_audiosocket=True, ring_s=20 * MS, audiosocket_seconds=0.4)
    with captured() as (text, js):
        async with sim, ami_gateway(monkeypatch, sim.address, config=str(cfg),
                                    allow_unregistered=False) as gw:
            base = "http://{}:{}".format(*gw.http_address)
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/v1/route", json={
                        "did": DID, "caller": CALLER, "uniqueid": "1760000000.1",
                        "channel": "PJSIP/trunk-00000001"}) as r:
                    inbound = (await r.json())["variables"]["AIGW_CALL_ID"]
                a_host, a_port = gw.audiosocket.address
                await run_simulation(a_host, a_port, plans=[CallPlan(
                    seconds=0.4, audio=speech_like(1.4), call_id=inbound)])
                async with http.post(f"{base}/v1/calls", json={
                        "to": CALLEE, "from": CALLER_ID, "tenant": "acme"}) as r:
                    assert r.status == 201, await r.text()
                    outbound = (await r.json())["id"]
                deadline = time.monotonic() + 10
                while True:
                    recs = [await gw.store.get_call(c) for c in (inbound, outbound)]
                    if all(x is not None and x.is_terminal for x in recs):
                        break
                    assert time.monotonic() < deadline, recs
                    await asyncio.sleep(20 * MS)
            assert [x.status.value for x in recs if x] == ["completed", "completed"]
    text_out, json_out = text.getvalue(), js.getvalue()
    for number in (DID, CALLER, CALLEE, CALLER_ID):
        digits = number.lstrip("+")
        assert digits[1:] not in text_out, number
        assert digits[1:] not in json_out, number
    lines = [json.loads(x) for x in json_out.splitlines()]
    assert len(lines) == len(text_out.splitlines()) > 5
    for line in lines:
        assert {"time", "level", "logger", "message", "node"} <= set(line)
        for cid in (inbound, outbound):
            if cid in line["message"]:
                assert line.get("call_id") == cid, line
    for cid in (inbound, outbound):
        mine = [x for x in lines if x.get("call_id") == cid]
        assert len(mine) >= 2, cid
        assert any(x.get("tenant") == "acme" and x.get("agent") == "bot" for x in mine), mine


def test_call_id_found_in_a_message_without_the_call_logger() -> None:
    fmt = JsonFormatter(node="")
    assert json.loads(fmt.format(record("recording for %s queued", CID)))["call_id"] == CID
    other = "11111111-2222-4333-8444-555555555555"
    line = json.loads(fmt.format(record("call %s: moved from %s", CID, other)))
    assert line["call_id"] == CID and "node" not in line
    assert "call_id" not in json.loads(fmt.format(record("RecordingSid RE%s", "ab" * 16)))
