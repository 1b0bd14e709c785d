"""Hostile HTTP input gets a 4xx in the one error shape, never a 500, and loses nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from audiosocket_gw.httpapi import JsonBodyError, parse_form
from tests.helpers import MS, running_gateway

TOKEN = "a-long-enough-test-token-123"
TOML = """
[tenants.acme]
max_concurrent_calls = 2

[agents.bot]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "bot"
"""


async def raw_request(addr: tuple[str, int], head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    r, w = await asyncio.open_connection(*addr)
    w.write(head + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5.0)
    w.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("auth", [b"Bearer \xff\xfe\xfd", b"\xc3\x28 token", b"Basic \x80"])
async def test_non_utf8_authorization_is_401(auth: bytes) -> None:
    async with running_gateway(api_token=TOKEN) as gw:
        head = (b"GET /v1/calls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: " + auth + b"\r\n\r\n")
        status, body = await raw_request(gw.http_address, head)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", ["/v1/route", "/v1/calls"])
@pytest.mark.parametrize("body", [
    '{"did": "+15551230000", "x": ' + nested(50_000) + "}",
    '{"did": "+15551230000", "x": ' + nested(100) + "}",
    '{"to": "+15550001111", "tenant": "acme", "metadata": {"a": NaN}}',
    '{"to": "+15550001111", "tenant": "acme", "metadata": {"a": Infinity}}',
    '{"did": "+15551230000", "caller": -Infinity}',
    '{"to": "+15550001111", "tenant": "acme", "timeout": ' + "9" * 400 + "}",
    '\xff\xfe',
])
async def test_hostile_json_is_400_and_takes_no_slot(tmp_path: Path, path: str,
                                                     body: str) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML)
    async with running_gateway(config=str(cfg), allow_unregistered=False) as gw:
        host, port = gw.http_address
        async with aiohttp.ClientSession() as http, http.post(
                f"http://{host}:{port}{path}", data=body.encode("utf-8", "surrogateescape"),
                headers={"Content-Type": "application/json"}) as resp:
            status, got = resp.status, await resp.json()
        assert status in (400, 413), got
        assert set(got["error"]) == {"code", "message"}
        assert await gw.store.active_slots("acme") == 0
        assert await gw.store.list_calls() == []


async def test_every_error_has_one_shape(tmp_path: Path) -> None:
    async with running_gateway(api_token=TOKEN) as gw:
        host, port = gw.http_address
        base = f"http://{host}:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            for method, path, headers in [("GET", "/v1/calls", {}),
                                          ("POST", "/v1/route", {}),
                                          ("GET", "/v1/calls/nope", auth),
                                          ("GET", "/v1/nothing-here", auth),
                                          ("DELETE", "/v1/calls", auth),
                                          ("POST", "/v1/calls", auth)]:
                async with http.request(method, base + path, headers=headers) as resp:
                    body = await resp.json()
                    assert 400 <= resp.status < 500, (path, resp.status)
                    assert set(body["error"]) == {"code", "message"}, (path, body)
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200


async def test_metrics_need_the_token_unless_public() -> None:
    for public, expected in ((False, 401), (True, 200)):
        async with running_gateway(api_token=TOKEN, metrics_public=public) as gw:
            host, port = gw.http_address
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{host}:{port}/metrics") as resp:
                    assert resp.status == expected
                async with http.get(f"http://{host}:{port}/metrics",
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    assert resp.status == 200 and b"aigw_" in await resp.read()


async def test_half_sent_request_heads_are_closed_and_peers_are_capped() -> None:
    """Slowloris: connections that never finish their request head are closed after the
    guard's deadline; one peer cannot hold more than its share; the API still answers."""
    async with running_gateway() as gw:
        guard = gw.http_guard
        guard.head_timeout = 300 * MS
        guard.per_peer = 5
        addr = gw.http_address
        slow = []
        for _ in range(5):
            r, w = await asyncio.open_connection(*addr)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            slow.append((r, w))
        # The sixth connection from the same peer is refused at once.
        r6, w6 = await asyncio.open_connection(*addr)
        assert await asyncio.wait_for(r6.read(), 2.0) == b""
        assert guard.refused_peer == 1
        # The slow ones are closed once their deadline passes...
        for r, _ in slow:
            assert await asyncio.wait_for(r.read(), 3.0) == b""
        assert guard.closed_slow == 5 and guard.peers == {}
        # ...and a well-formed request is served.
        status, _ = await raw_request(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n")
        assert status == 200
        for _, w in slow:
            w.close()
        w6.close()


@pytest.mark.parametrize("raw", [b"\xff\xfe=1", b"a=%ff%fe", b"&".join([b"a=1"] * 201)])
def test_a_bad_form_is_a_400(raw: bytes) -> None:
    with pytest.raises(JsonBodyError) as err:
        parse_form(raw)
    assert err.value.status == 400 and err.value.code == "bad_form"


def test_a_form_keeps_repeated_keys_and_blanks() -> None:
    form = parse_form(b"StatusCallbackEvent=initiated&StatusCallbackEvent=answered&To=&x=%E2%9C%93")
    assert form.getall("StatusCallbackEvent") == ["initiated", "answered"]
    assert form["To"] == "" and form["x"] == "\u2713"
