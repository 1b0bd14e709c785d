# ruff: noqa: ASYNC110  (tests poll the store/simulator state with a deadline)
"""AI agent tools end to end: the OpenAI backend against the local Realtime bot (scripted
function calls, GA shape), the PBX simulator (AMI + real AudioSocket legs) and a real
aiohttp webhook receiver on loopback that checks the signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from audiosocket_gw.agenttools import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    redact,
    sign,
    tool_definitions,
    verify,
)
from audiosocket_gw.api import CallsApi
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.tenants import loads_tenants
from audiosocket_gw.testing.localbot import BotSession, LocalRealtimeBot, ScriptStep
from audiosocket_gw.testing.simulator.ami import AmiSimulator, Outcome
from tests.helpers import MS, ami_gateway, make_config, until

SECRET = "tool-secret-0123456789abcdef"
CALLEE = "+15550001111"
HUMAN = "+15550002222"
FALLBACK = "+15550003333"

TOML = """
[tenants.acme]
max_concurrent_calls = 10

[agents.bot]
tenant = "acme"
backend = "openai"
greeting = "Hello from the bot."
silence_timeout_s = 30.0
builtin_tools = ["end_call", "transfer_call", "send_dtmf"]
dtmf_to_model = true
dtmf_debounce_ms = {debounce}
max_concurrent_tools = {max_tools}

[[agents.bot.tools]]
name = "lookup_order"
description = "Look an order up."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }} }}
url = "{hooks}/order"
timeout_s = {timeout}
secret_env = "AIGW_T_TOOL_SECRET"

[[agents.bot.tools]]
name = "slow_lookup"
url = "{hooks}/slow"
timeout_s = {timeout}

[agents.bot.transfer_destinations]
sales = {{ number = "{human}", description = "Sales", timeout_s = 5 }}
night = {{ number = "{human}", fallback = "backup", timeout_s = 5 }}
backup = {{ number = "{fallback}", timeout_s = 5, on_failure = "hangup" }}
queue = {{ extension = "600", description = "The support queue", timeout_s = 5 }}
boss = {{ number = "{human}", mode = "attended", timeout_s = 5, decide_timeout_s = {decide} }}
"""


class Hooks:
    """The company's webhook server: checks every signature, answers or stalls."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.signature_ok: list[bool] = []
        self.slow_s = 5.0
        self.inflight = 0
        self.max_inflight = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def order(self, request: web.Request) -> web.Response:
        body = await request.read()
        # Checked as a company's webhook would, from the documented scheme (README:
        # HMAC-SHA256 of "<timestamp>.<body>", hex, "sha256=" prefix), not with our code.
        ts = request.headers.get(TIMESTAMP_HEADER, "")
        expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        self.signature_ok.append(
            hmac.compare_digest(expected, request.headers.get(SIGNATURE_HEADER, ""))
            and abs(time.time() - float(ts or 0)) < 300)
        self.requests.append(json.loads(body))
        return web.json_response({"status": "shipped", "eta_days": 2})

    async def slow(self, request: web.Request) -> web.Response:
        self.requests.append(json.loads(await request.read()))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.slow_s)
        finally:
            self.inflight -= 1
        return web.json_response({"status": "late"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/order", self.order)
        app.router.add_post("/slow", self.slow)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Stack:
    def __init__(self, gw: Gateway, sim: AmiSimulator, bot: LocalRealtimeBot,
                 hooks: Hooks) -> None:
        self.gw, self.sim, self.bot, self.hooks = gw, sim, bot, hooks

    async def call(self) -> str:
        p = self.gw.component(CallsApi).provider
        assert isinstance(p, AsteriskProvider)
        cid = await p.start_outbound_call("acme", CALLEE, "+15559990000")
        # (a short script may end the leg before a poll sees it live)
        await until(lambda: cid in self.gw.audiosocket.calls or self.sim.legs)
        return cid

    async def events(self, cid: str, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in await self.gw.store.events(cid) if e.kind == kind]


@asynccontextmanager
async def stack(monkeypatch: pytest.MonkeyPatch, script: list[ScriptStep], *,
                timeout_s: float = 2.0, debounce_ms: int = 300, reply_ms: int = 400,
                outcomes: dict[str, Outcome] | None = None,
                seconds: float = 4.0, max_tools: int = 2,
                slow_s: float = 5.0, decide_s: float = 5.0) -> AsyncIterator[Stack]:
    hooks = Hooks()
    hooks.slow_s = slow_s
    await hooks.start()
    bot = LocalRealtimeBot(reply_ms=reply_ms, script=script, vad_threshold=1e9)
    await bot.start()
    sim = AmiSimulator(connect_audiosocket=True, audiosocket_seconds=seconds,
                       outcomes={CALLEE: Outcome("answered", caller_audio=False),
                                 **(outcomes or {})})
    monkeypatch.setenv("AIGW_T_TOOL_SECRET", SECRET)
    cfg = Path(tempfile.mkdtemp(prefix="aigw-t-")) / "t.toml"
    cfg.write_text(TOML.format(hooks=hooks.url, timeout=timeout_s, debounce=debounce_ms,
                               human=HUMAN, fallback=FALLBACK, max_tools=max_tools,
                               decide=decide_s))
    try:
        async with sim, ami_gateway(monkeypatch, sim.address, config=str(cfg),
                                    allow_unregistered=False, openai_url=bot.url) as gw:
            yield Stack(gw, sim, bot, hooks)
    finally:
        await bot.stop()
        await hooks.stop()


def outputs(session: BotSession) -> list[dict[str, Any]]:
    return [i for i in session.items if i.get("type") == "function_call_output"]


def creates_after_output(session: BotSession) -> int:
    """``response.create`` events received after the first function_call_output."""
    types = session.event_types()
    seen = False
    n = 0
    for i, t in enumerate(types):
        data = session.events[i].data
        if t == "conversation.item.create" and data["item"]["type"] == "function_call_output":
            seen = True
        elif t == "response.create" and seen:
            n += 1
    return n


# -- webhooks ------------------------------------------------------------------------


async def test_webhook_tool_round_trip_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say=None, call="lookup_order", arguments={"order_id": "42"})]
    async with stack(monkeypatch, script) as st:
        cid = await st.call()
        await until(lambda: st.bot.sessions and outputs(st.bot.sessions[0]))
        session = st.bot.sessions[0]
        # the session declared the tools, GA shape
        names = [t["name"] for t in (session.session_config or {}).get("tools", [])]
        assert names == ["end_call", "transfer_call", "send_dtmf", "lookup_order",
                         "slow_lookup"]
        # the webhook saw the call context and a valid signature
        assert st.hooks.signature_ok == [True]
        req = st.hooks.requests[0]
        assert req["tool"] == "lookup_order" and req["arguments"] == {"order_id": "42"}
        assert (req["call_id"], req["tenant"], req["agent"]) == (cid, "acme", "bot")
        assert req["direction"] == "outbound" and req["to"] == CALLEE
        # the result went back, then a response was asked for
        out = outputs(session)[0]
        assert json.loads(out["output"]) == {"status": "shipped", "eta_days": 2}
        await until(lambda: creates_after_output(session) == 1)
        await until(lambda: len(session.responses) == 2)  # the bot spoke about it
        await until(lambda: st.events(cid, "tool"))
        tools = await st.events(cid, "tool")
        assert tools[0]["name"] == "lookup_order" and tools[0]["outcome"] == "ok"
        assert tools[0]["arguments"] == {"order_id": "42"} and tools[0]["status"] == 200
        assert st.gw.metrics.tool_calls.labels("lookup_order", "ok")._value.get() == 1
        # ... and GET /v1/calls/{id} lists it
        async with ClientSession() as http:
            host, port = st.gw.http_address
            async with http.get(f"http://{host}:{port}/v1/calls/{cid}") as resp:
                body = await resp.json()
        assert [e["event"] for e in body["agent_events"]] == ["tool"]
        assert body["agent_events"][0]["latency_ms"] >= 0


async def test_slow_webhook_times_out_and_the_call_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = 300 * MS
    script = [ScriptStep(say=None, call="slow_lookup", arguments={"q": "x"})]
    async with stack(monkeypatch, script, timeout_s=timeout) as st:
        cid = await st.call()
        start = time.monotonic()
        await until(lambda: st.bot.sessions and outputs(st.bot.sessions[0]))
        took = time.monotonic() - start
        out = json.loads(outputs(st.bot.sessions[0])[0]["output"])
        assert out["error"] == "timeout" and "did not answer" in out["message"]
        assert took < timeout + 1500 * MS
        await until(lambda: len(st.bot.sessions[0].responses) == 2)
        assert cid in st.gw.audiosocket.calls  # still up
        await until(lambda: st.events(cid, "tool"))
        ev = (await st.events(cid, "tool"))[0]
        assert ev["outcome"] == "timeout" and ev["latency_ms"] >= timeout * 1000 * 0.9
        assert st.gw.metrics.tool_calls.labels("slow_lookup", "timeout")._value.get() == 1


async def test_tool_calls_of_one_call_run_at_most_max_concurrent_tools_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slow = 200 * MS
    script = [ScriptStep(say=None, call="slow_lookup", arguments={"n": 1},
                         more_calls=(("slow_lookup", {"n": 2}), ("slow_lookup", {"n": 3})))]
    async with stack(monkeypatch, script, max_tools=2, slow_s=slow, timeout_s=3.0) as st:
        cid = await st.call()
        start = time.monotonic()
        await until(lambda: st.bot.sessions and len(outputs(st.bot.sessions[0])) == 3)
        assert time.monotonic() - start >= 2 * slow * 0.9  # the third waited for a slot
        assert st.hooks.max_inflight == 2 and len(st.hooks.requests) == 3
        assert sorted(r["arguments"]["n"] for r in st.hooks.requests) == [1, 2, 3]
        assert all(json.loads(o["output"]) == {"status": "late"}
                   for o in outputs(st.bot.sessions[0]))
        assert cid in st.gw.audiosocket.calls


# -- built-ins -----------------------------------------------------------------------


async def test_end_call_after_the_goodbye_was_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    reply_ms = 800
    script = [ScriptStep(say="Goodbye now.", call="end_call")]
    async with stack(monkeypatch, script, reply_ms=reply_ms) as st:
        cid = await st.call()
        await until(lambda: st.sim.legs, within=6.0)
        leg = st.sim.legs[0]
        assert leg.ended_by == "gateway-hangup"
        audible = sum(1 for _, level in leg.heard if level >= 256.0) * 20
        assert audible >= reply_ms - 60, (audible, reply_ms)
        rec = await st.gw.store.get_call(cid)
        assert rec is not None
        await until(lambda: st.events(cid, "tool"))
        assert (await st.events(cid, "tool"))[0]["name"] == "end_call"
        call_end = [e for e in await st.gw.store.events(cid)
                    if "agent-ended" in json.dumps(e.data)]
        assert call_end, "the end reason agent-ended is recorded"


async def test_send_dtmf_plays_digits_through_playdtmf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say=None, call="send_dtmf", arguments={"digits": "12#"})]
    async with stack(monkeypatch, script) as st:
        cid = await st.call()
        await until(lambda: len(st.sim.dtmf_played) == 3)
        assert [d for _, d, _ in st.sim.dtmf_played] == ["1", "2", "#"]
        assert all(a.get("Action") != "PlayDTMF" or a.get("Receive") in (None, "")
                   for a in st.sim.actions)
        await until(lambda: st.bot.sessions and outputs(st.bot.sessions[0]))
        assert json.loads(outputs(st.bot.sessions[0])[0]["output"])["sent"] == "12#"
        assert cid in st.gw.audiosocket.calls


async def test_blind_transfer_busy_comes_back_to_the_bot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say="Transferring you to sales.", call="transfer_call",
                         arguments={"destination": "sales"})]
    async with stack(monkeypatch, script, outcomes={HUMAN: Outcome("busy", ring_s=0.05)}
                     ) as st:
        cid = await st.call()
        await until(lambda: st.sim.dials, within=6.0)
        setvars = {(a.get("Variable") or ""): (a.get("Value") or "")
                   for a in st.sim.actions if a.get("Action") == "Setvar"}
        assert HUMAN in setvars["AIGW_DIAL_TARGETS"] and setvars["AIGW_NEXT"] == "dial"
        assert setvars["AIGW_RESUME_ID"]
        assert st.sim.legs[0].ended_by == "gateway-hangup"
        # the caller comes back to a new bot session that is told what happened
        await until(lambda: len(st.bot.sessions) >= 2, within=6.0)
        second = st.bot.sessions[1]
        await until(lambda: any("did not go through (busy)" in json.dumps(i)
                                for i in second.items))
        # ... and remembers the conversation before the transfer
        said = [c.get("text") for i in second.items if i.get("role") == "assistant"
                for c in i.get("content", [])]
        assert "Transferring you to sales." in said
        await until(lambda: "response.create" in second.event_types())
        await until(lambda: st.events(cid, "dial_outcome"))
        assert (await st.events(cid, "dial_outcome"))[0]["status"] == "busy"
        await until(lambda: _count(st, cid, "transfer", 2))
        transfers = [(e["destination"], e["outcome"]) for e in await st.events(cid, "transfer")]
        assert transfers == [("sales", "started"), ("sales", "busy")]
        m = st.gw.metrics.transfers
        assert m.labels("blind", "started")._value.get() == 1
        assert m.labels("blind", "busy")._value.get() == 1


async def _count(st: Stack, cid: str, kind: str, n: int) -> bool:
    return len(await st.events(cid, kind)) >= n


async def test_blind_transfer_fallback_then_hangup(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say=None, call="transfer_call", arguments={"destination": "night"})]
    async with stack(monkeypatch, script,
                     outcomes={HUMAN: Outcome("no-answer", ring_s=0.05),
                               FALLBACK: Outcome("busy", ring_s=0.05)}) as st:
        cid = await st.call()
        await until(lambda: len(st.sim.dials) == 2, within=8.0)
        assert HUMAN in st.sim.dials[0][1] and FALLBACK in st.sim.dials[1][1]
        # backup has on_failure = hangup: no resume id, the call ends
        assert "g" not in st.sim.dials[1][3]
        # every outcome comes from AMI, also the last one (no leg comes back)
        await until(lambda: _count(st, cid, "transfer", 4))
        outcomes = [(e["destination"], e["outcome"]) for e in await st.events(cid, "transfer")]
        assert sorted(outcomes) == sorted([("night", "started"), ("night", "no-answer"),
                                           ("backup", "started"), ("backup", "busy")])
        assert outcomes[0] == ("night", "started")
        m = st.gw.metrics.transfers
        assert m.labels("blind", "no-answer")._value.get() == 1
        assert m.labels("blind", "busy")._value.get() == 1
        assert len(st.bot.sessions) == 1  # the bot never came back


async def test_answered_transfer_to_an_extension_ends_the_ai_part(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say=None, call="transfer_call", arguments={"destination": "queue"})]
    async with stack(monkeypatch, script,
                     outcomes={"600": Outcome("answered", ring_s=0.05, talk_s=0.3)}) as st:
        cid = await st.call()
        await until(lambda: st.sim.dials, within=6.0)
        assert st.sim.dials[0][1] == "Local/600@from-internal"
        await until(lambda: _count(st, cid, "transfer", 2), within=6.0)
        outcomes = [(e["destination"], e["outcome"]) for e in await st.events(cid, "transfer")]
        assert outcomes == [("queue", "started"), ("queue", "completed")]
        # the person hung up: the caller's resumed leg is ended at once, no bot again
        await until(lambda: len(st.sim.legs) == 2, within=6.0)
        assert st.sim.legs[1].ended_by == "gateway-hangup"
        assert len(st.bot.sessions) == 1
        await until(lambda: _status_is(st, cid, "completed"))


async def _status_is(st: Stack, cid: str, status: str) -> bool:
    rec = await st.gw.store.get_call(cid)
    return rec is not None and rec.status.value == status


async def test_caller_dtmf_reaches_the_bot_as_one_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with stack(monkeypatch, [], debounce_ms=300) as st:
        cid = await st.call()
        await until(lambda: any(ch.leg is not None for ch in st.sim.channels.values()))
        leg = next(ch.leg for ch in st.sim.channels.values() if ch.leg is not None)
        await until(lambda: st.bot.sessions and st.bot.sessions[0].responses)
        leg.send_dtmf.extend(["4", "2"])
        await asyncio.sleep(50 * MS)
        leg.send_dtmf.append("#")

        def texts() -> list[str]:
            return [c.get("text", "") for i in st.bot.sessions[0].items
                    if i.get("type") == "message" and i.get("role") == "user"
                    for c in i.get("content", [])]
        await until(lambda: any("pressed" in t for t in texts()))
        assert [t for t in texts() if "pressed" in t] == [
            "[The caller pressed the phone keys: 42#]"]
        await until(lambda: st.events(cid, "dtmf"))
        assert (await st.events(cid, "dtmf"))[0]["digits"] == 3


# -- pure parts ----------------------------------------------------------------------


def test_signature_and_redaction() -> None:
    body = b'{"a":1}'
    sig = sign("k" * 16, "1700000000", body)
    # A fixed vector: HMAC-SHA256("kkkkkkkkkkkkkkkk", "1700000000.{\"a\":1}")
    assert sig == "sha256=" + hmac.new(b"k" * 16, b'1700000000.{"a":1}',
                                       hashlib.sha256).hexdigest()
    assert verify("k" * 16, "1700000000", body, sig, now=1700000010)
    assert not verify("k" * 16, "1700000000", body + b" ", sig, now=1700000010)
    assert not verify("k" * 16, "1700000000", body, sig, now=1700009999)  # too old
    assert redact({"order_id": "42", "pin": "1234", "card_number": "4111"}) == {
        "order_id": "42", "pin": "[redacted]", "card_number": "[redacted]"}


def test_tool_definitions_follow_the_config() -> None:
    cfg = loads_tenants(TOML.format(hooks="https://h.example", timeout=2.0, debounce=500,
                                    human=HUMAN, fallback=FALLBACK, max_tools=2, decide=5))
    defs = tool_definitions(cfg.agents["bot"])
    transfer = next(d for d in defs if d["name"] == "transfer_call")
    props = transfer["parameters"]["properties"]
    assert props["destination"]["enum"] == ["sales", "night", "backup", "queue", "boss"]
    # an attended destination: the model writes the person's summary
    assert "boss" in props["summary"]["description"]
    assert all(d["type"] == "function" for d in defs)


async def test_unknown_tool_and_bad_arguments_are_results_not_failures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = [ScriptStep(say=None, call="no_such_tool"),
              ScriptStep(say=None, call="send_dtmf", arguments={"digits": "12;"}),
              ScriptStep(say=None, call="transfer_call", arguments={"destination": "moon"})]
    async with stack(monkeypatch, script) as st:
        cid = await st.call()
        await until(lambda: st.bot.sessions and len(outputs(st.bot.sessions[0])) == 3)
        errors = [json.loads(o["output"])["error"] for o in outputs(st.bot.sessions[0])]
        assert errors == ["unknown_tool", "invalid_arguments", "unknown_destination"]
        await until(lambda: len(st.bot.sessions[0].responses) == 4)  # spoke after each
        assert cid in st.gw.audiosocket.calls and not st.sim.dtmf_played and not st.sim.dials
        m = st.gw.metrics.tool_calls
        assert m.labels("unknown", "unknown_tool")._value.get() == 1
        assert m.labels("send_dtmf", "invalid_arguments")._value.get() == 1


def test_a_tool_secret_missing_from_the_environment_stops_the_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIGW_T_TOOL_SECRET", raising=False)
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML.format(hooks="https://h.example", timeout=2.0, debounce=500,
                               human=HUMAN, fallback=FALLBACK, max_tools=2, decide=5))
    gw = Gateway(make_config(config=str(cfg), openai_url="ws://127.0.0.1:9/v1/realtime"))
    with pytest.raises(ValueError, match="agent 'bot': tool 'lookup_order': secret_env "
                                         "AIGW_T_TOOL_SECRET"):
        gw.check_agents()
