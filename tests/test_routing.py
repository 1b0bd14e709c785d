"""POST /v1/route on a running gateway, over real HTTP; slot bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.config import ConfigError, format_hostport
from audiosocket_gw.routing import (
    MAX_BODY,
    RouteRequestError,
    RoutingComponent,
    RoutingSettings,
    originate_variables,
    parse_route_request,
    recording_path,
)
from tests.helpers import MS, RawPeer, running_gateway

ROOT = Path(__file__).resolve().parent.parent

TENANTS = """
default_agent = "support"
[tenants.acme]
max_concurrent_calls = 2

[agents.support]
tenant = "acme"
backend = "echo"
record = true
recording_source = "mixmonitor"

[agents.plain]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "support"

[numbers."+15551230001"]
agent = "plain"
"""


@pytest.fixture
def tenants_file(tmp_path):
    p = tmp_path / "tenants.toml"
    p.write_text(TENANTS)
    return str(p)


def component(gw) -> RoutingComponent:
    return next(c for c in gw.components if isinstance(c, RoutingComponent))


async def post(gw, body: object | bytes, token: str | None = None) -> tuple[int, dict]:
    url = f"http://{format_hostport(*gw.http_address)}/v1/route"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, bytes) else None
    async with aiohttp.ClientSession() as s:
        kw = {"data": data} if data is not None else {"json": body}
        async with s.post(url, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)


CALL = {"did": "+1 (555) 123-0000", "caller": "+15557654321", "uniqueid": "1760000000.7",
        "channel": "PJSIP/trunk-00000007"}


async def test_ok_creates_registers_and_answers(tenants_file):
    async with running_gateway(config=tenants_file, allow_unregistered=False) as gw:
        status, body = await post(gw, CALL)
        assert status == 200
        v = body["variables"]
        cid = v["AIGW_CALL_ID"]
        assert str(uuid.UUID(cid)) == cid and uuid.UUID(cid).version == 4
        assert v == {
            "AIGW_STATUS": "ok", "AIGW_CALL_ID": cid,
            "AIGW_AUDIOSOCKET": format_hostport(*gw.audiosocket.address),
            "AIGW_AUDIOSOCKET_ALT": "",
            "AIGW_TENANT": "acme", "AIGW_AGENT": "support", "AIGW_RECORD": "1",
            "AIGW_RECORDING_FILE": f"/var/spool/asterisk/monitor/acme/{cid}.wav",
            "AIGW_FALLBACK": "",
        }
        rec = await gw.store.get_call(cid)
        assert rec is not None
        assert (rec.status.value, rec.direction, rec.from_, rec.to) == (
            "ringing", "inbound", "+15557654321", "+15551230000")
        assert rec.metadata["asterisk_uniqueid"] == "1760000000.7"
        assert gw.registry.is_registered(cid)
        assert await gw.store.active_slots("acme") == 1
        # An agent that does not record through MixMonitor: no file.
        _, body2 = await post(gw, {**CALL, "did": "+15551230001"})
        assert body2["variables"]["AIGW_RECORD"] == "0"
        assert body2["variables"]["AIGW_RECORDING_FILE"] == ""


async def test_unknown_and_busy(tenants_file):
    async with running_gateway(config=tenants_file) as gw:
        _, unknown = await post(gw, {**CALL, "did": "+15550000000"})
        assert unknown["variables"]["AIGW_STATUS"] == "unknown"
        assert unknown["variables"]["AIGW_CALL_ID"] == ""
        assert await gw.store.list_calls() == []
        for _ in range(2):
            _, ok = await post(gw, CALL)
            assert ok["variables"]["AIGW_STATUS"] == "ok"
        _, busy = await post(gw, CALL)
        assert busy["variables"]["AIGW_STATUS"] == "busy"
        assert busy["variables"]["AIGW_TENANT"] == "acme"
        assert busy["variables"]["AIGW_CALL_ID"] == ""
        assert await gw.store.active_slots("acme") == 2
        assert len(await gw.store.list_calls()) == 2


async def test_concurrent_routes_never_exceed_the_limit(tenants_file):
    async with running_gateway(config=tenants_file) as gw:
        results = await asyncio.gather(*(post(gw, CALL) for _ in range(8)))
        statuses = sorted(b["variables"]["AIGW_STATUS"] for _, b in results)
        assert statuses == ["busy"] * 6 + ["ok"] * 2
        assert await gw.store.active_slots("acme") == 2


async def test_bearer_token(tenants_file):
    async with running_gateway(config=tenants_file, api_token="t0ken-0123456789abcdef") as gw:
        assert (await post(gw, CALL))[0] == 401
        assert (await post(gw, CALL, token="wrong"))[0] == 401
        status, body = await post(gw, CALL, token="t0ken-0123456789abcdef")
        assert status == 200 and body["variables"]["AIGW_STATUS"] == "ok"


@pytest.mark.parametrize("body, code", [
    (b"not json", 400),
    (b"[1, 2]", 400),
    (b'{"did": 15551230000}', 400),
    (b'{"caller": "+15557654321"}', 400),
    (b'{"did": "+15551230000", "caller": "a\\nb"}', 400),
    (b'{"did": "' + b"1" * 65 + b'"}', 400),
    (b'{"did": "+15551230000", "pad": "' + b"x" * MAX_BODY + b'"}', 413),
])
async def test_bad_requests(tenants_file, body, code):
    async with running_gateway(config=tenants_file) as gw:
        status, answer = await post(gw, body)
        assert status == code, answer
        assert await gw.store.active_slots("acme") == 0


def test_parse_route_request_unit():
    req = parse_route_request(b'{"did": "+15551230000", "caller": null}')
    assert (req.did, req.caller, req.uniqueid) == ("+15551230000", "", "")
    with pytest.raises(RouteRequestError):
        parse_route_request(b"\xff\xfe")


async def test_slot_released_when_audiosocket_never_comes(tenants_file):
    async with running_gateway(config=tenants_file, allow_unregistered=False) as gw:
        gw.registry.ttl = 50 * MS
        comp = component(gw)
        _, body = await post(gw, CALL)
        cid = body["variables"]["AIGW_CALL_ID"]
        assert await comp.sweep() == 0  # not expired yet
        await asyncio.sleep(80 * MS)
        # Expired now: this sweep or the component's own timer (armed at the deadline
        # plus a fixed 50 ms, so with a large AIGW_TEST_TIME_FACTOR it may come first)
        # releases it, exactly once.
        swept = await comp.sweep()
        assert swept == 1 or cid not in comp.pending
        assert await comp.sweep() == 0
        assert await gw.store.active_slots("acme") == 0
        rec = await gw.store.get_call(cid)
        assert rec is not None and rec.status.value == "failed"
        assert rec.hangup_reason == "audiosocket-never-connected"
        # The expired id is refused by the AudioSocket server now.
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send(asp.encode_uuid(cid))
        events = await peer.read_until_closed(within=2.0)
        assert any(isinstance(e, asp.Hangup) for e in events)


async def test_slot_released_when_the_call_ends(tenants_file):
    async with running_gateway(config=tenants_file, allow_unregistered=False) as gw:
        _, body = await post(gw, CALL)
        cid = body["variables"]["AIGW_CALL_ID"]
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send(asp.encode_uuid(cid))
        peer.send(asp.encode_audio(b"\x00" * 320))
        await peer.read_frames(1)
        await peer.close()  # the caller hangs up: EOF
        rec = None
        for _ in range(200):
            rec = await gw.store.get_call(cid)
            if rec is not None and rec.is_terminal:
                break
            await asyncio.sleep(10 * MS)
        assert rec is not None and rec.status.value == "completed"
        assert rec.answered_at is not None
        assert await gw.store.active_slots("acme") == 0
        assert await component(gw).sweep() == 0


async def test_no_phone_numbers_in_info_logs(tenants_file, caplog):
    caplog.set_level(logging.INFO, logger="audiosocket_gw")
    async with running_gateway(config=tenants_file) as gw:
        await post(gw, CALL)
        await post(gw, {**CALL, "did": "+15550000000"})
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    for number in ("5557654321", "5551230000", "5550000000"):
        assert number not in text
    assert "route: call" in text and "unknown DID" in text


def test_settings_from_env():
    s = RoutingSettings.from_env({"AIGW_ADVERTISE_AUDIOSOCKET": "10.0.0.5:9092",
                                  "AIGW_MIXMONITOR_DIR": "/data/rec/",
                                  "AIGW_FALLBACK_DIAL": "PJSIP/100"})
    assert (s.advertise_audiosocket, s.recording_dir, s.fallback_dial) == (
        "10.0.0.5:9092", "/data/rec", "PJSIP/100")
    assert RoutingSettings.from_env({"AIGW_AUDIOSOCKET_PUBLIC": "[::1]:9"}).advertise_audiosocket \
        == "[::1]:9"
    for bad in ({"AIGW_ADVERTISE_AUDIOSOCKET": "0.0.0.0:9092"},
                {"AIGW_ADVERTISE_AUDIOSOCKET": "h:0"},
                {"AIGW_MIXMONITOR_DIR": "/var/../etc"},
                {"AIGW_MIXMONITOR_DIR": "relative"},
                {"AIGW_FALLBACK_DIAL": "PJSIP/1,tT"},
                {"AIGW_FALLBACK_DIAL": "PJSIP/${X}"},
                {"AIGW_PEER_AUDIOSOCKETS": "10.0.0.6"},
                {"AIGW_PEER_AUDIOSOCKETS": "0.0.0.0:9092"},
                {"AIGW_PEER_AUDIOSOCKETS": "10.0.0.6:0"},
                {"AIGW_PEER_AUDIOSOCKETS": "a&b:9092"},
                {"AIGW_PEER_AUDIOSOCKETS": "${X}:9092"},
                {"AIGW_PEER_AUDIOSOCKETS": ",".join(f"10.0.0.{i}:9092" for i in range(9))}):
        with pytest.raises(ConfigError):
            RoutingSettings.from_env(bad)


async def test_advertised_address_and_fallback(tenants_file, monkeypatch):
    monkeypatch.setenv("AIGW_ADVERTISE_AUDIOSOCKET", "192.0.2.7:9092")
    monkeypatch.setenv("AIGW_FALLBACK_DIAL", "PJSIP/200@office")
    async with running_gateway(config=tenants_file) as gw:
        _, body = await post(gw, CALL)
        assert body["variables"]["AIGW_AUDIOSOCKET"] == "192.0.2.7:9092"
        assert body["variables"]["AIGW_FALLBACK"] == "PJSIP/200@office"
        assert body["variables"]["AIGW_AUDIOSOCKET_ALT"] == ""


async def test_route_answer_names_the_peer_gateways(tenants_file, monkeypatch):
    monkeypatch.setenv("AIGW_ADVERTISE_AUDIOSOCKET", "192.0.2.7:9092")
    # This node's own address in the list (one list for every node) is left out.
    monkeypatch.setenv("AIGW_PEER_AUDIOSOCKETS",
                       " 192.0.2.8:9092, 192.0.2.7:9092,[2001:db8::9]:9092,192.0.2.8:9092")
    assert RoutingSettings.from_env(dict(os.environ)).peer_audiosockets == (
        "192.0.2.8:9092", "192.0.2.7:9092", "[2001:db8::9]:9092")
    async with running_gateway(config=tenants_file) as gw:
        _, body = await post(gw, CALL)
        assert body["variables"]["AIGW_AUDIOSOCKET"] == "192.0.2.7:9092"
        assert body["variables"]["AIGW_AUDIOSOCKET_ALT"] == "192.0.2.8:9092&[2001:db8::9]:9092"
        _, body = await post(gw, {**CALL, "did": "+19999999999"})
        assert body["variables"]["AIGW_AUDIOSOCKET_ALT"] == ""  # only on ok answers


def test_recording_path_and_originate_variables():
    cid = str(uuid.uuid4())
    assert recording_path("/r/", "acme", cid) == f"/r/acme/{cid}.wav"
    for tenant in ("..", "a/b", ""):
        with pytest.raises(ValueError):
            recording_path("/r", tenant, cid)
    v = originate_variables(call_id=cid, audiosocket="127.0.0.1:9092", tenant="acme",
                            agent="support", record=True, recording_file=f"/r/acme/{cid}.wav",
                            amd_ms=15000, voicemail_action="leave_message")
    assert v["AIGW_RECORD"] == "1" and v["AIGW_AMD_MS"] == "15000"
    with pytest.raises(ValueError):
        originate_variables(call_id="x", audiosocket="127.0.0.1:9092", tenant="a", agent="b")
    with pytest.raises(ValueError):
        originate_variables(call_id=cid, audiosocket="127.0.0.1:9092", tenant="a,b", agent="b")


async def test_recording_done_hook_posts_call_id_with_token(tmp_path):
    """``aigw_route.py --recording-done`` (MixMonitor's command) calls the gateway."""
    seen: list[tuple[str, str, str]] = []

    async def done(request: web.Request) -> web.Response:
        seen.append((request.path, request.query.get("call_id", ""),
                     request.headers.get("Authorization", "")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/recordings/mixmonitor-done", done)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cid = str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    env["AIGW_API_TOKEN"] = "hooktok"
    try:
        ok = await asyncio.to_thread(subprocess.run, [
            sys.executable, str(ROOT / "agi/aigw_route.py"), "--recording-done", cid,
            f"http://127.0.0.1:{port}"], capture_output=True, timeout=30, env=env)
        bad = await asyncio.to_thread(subprocess.run, [
            sys.executable, str(ROOT / "agi/aigw_route.py"), "--recording-done", "x;rm",
            f"http://127.0.0.1:{port}"], capture_output=True, timeout=30, env=env)
    finally:
        await runner.cleanup()
    assert ok.returncode == 0, ok.stderr
    assert seen == [("/v1/recordings/mixmonitor-done", cid, "Bearer hooktok")]
    assert bad.returncode == 2


async def test_another_node_rebuilds_the_call_with_its_metadata(tenants_file):
    """A call whose AudioSocket reaches another worker or node is rebuilt from the store
    with what it travels with: the Asterisk ids of a routed call, the REST options of
    an admitted one (they differ from the record's own metadata)."""
    async with running_gateway(config=tenants_file, allow_unregistered=False) as gw:
        _, body = await post(gw, CALL)
        cid = body["variables"]["AIGW_CALL_ID"]
        info = await gw.lookup_call(cid)
        assert info is not None and info.agent == "support"
        assert info.metadata == {"asterisk_uniqueid": "1760000000.7",
                                 "asterisk_channel": "PJSIP/trunk-00000007"}
        tenant, agent = gw.admission.resolve_outbound("acme", "support")
        admitted = await gw.admission.admit(
            tenant, agent, direction="outbound", from_="", to="+15550001111",
            metadata={"order": 42}, call_metadata={"twiml": "<Response/>"})
        info = await gw.lookup_call(admitted.call_id)
        assert info is not None and info.metadata == {"twiml": "<Response/>"}
        rec = await gw.store.get_call(admitted.call_id)
        assert rec is not None and rec.metadata["order"] == 42
