"""The console's server side over real HTTP: the page, the SSE stream, signed media links,
Range requests on the recording, the live transcript, slow event clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from audiosocket_gw.console.component import QUEUE_LIMIT, ConsoleComponent

from ..helpers import MS
from .stack import (
    BOT_LINE,
    CALLER_LINE,
    TOKEN,
    auth,
    base_url,
    console_gateway,
    route_call,
    simulate,
    wait_recording,
)


async def read_events(resp: aiohttp.ClientResponse, until: Any, within: float) -> list[
        tuple[str, dict[str, Any]]]:
    """SSE events from ``resp`` until ``until(events)`` is true."""
    events: list[tuple[str, dict[str, Any]]] = []
    buf = b""
    async with asyncio.timeout(within):
        while not until(events):
            chunk = await resp.content.readany()
            assert chunk, "the stream ended"
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                kind, data = "message", ""
                for line in block.decode().split("\n"):
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                if data:
                    events.append((kind, json.loads(data)))
    return events


async def test_console_page_is_public_and_data_needs_the_token(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        base = base_url(gw)
        for path, kind in (("/console", "text/html"), ("/console/console.js",
                                                        "application/javascript"),
                           ("/console/console.css", "text/css")):
            async with http.get(base + path) as r:
                assert r.status == 200 and r.content_type == kind
                body = await r.text()
        async with http.get(base + "/console") as r:
            page = await r.text()
        assert "<html lang=\"en\">" in page and "http://" not in page and "https://" not in page
        async with http.get(base + "/console/../v1/calls") as r:
            assert r.status == 401
        async with http.get(base + "/console/secrets.txt") as r:
            assert r.status == 401  # only the page's own files are public
        async with http.get(base + "/console/secrets.txt", headers=auth()) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        for path in ("/v1/events", "/v1/calls"):
            async with http.get(base + path) as r:
                assert r.status == 401
            async with http.get(base + path, headers=auth("wrong-token-0123456789")) as r:
                assert r.status == 401
        assert body  # the stylesheet is not empty


async def test_event_stream_shows_a_simulated_call_start_and_end(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        async with http.get(base_url(gw) + "/v1/events", headers=auth()) as stream:
            assert stream.status == 200
            assert stream.content_type == "text/event-stream"
            cid = await route_call(gw)
            sim = asyncio.create_task(simulate(gw, cid, 0.6))

            def ended(evs: list[tuple[str, dict[str, Any]]]) -> bool:
                return any(k == "call" and d["id"] == cid and d["status"] == "completed"
                           for k, d in evs)

            events = await read_events(stream, ended, within=10)
            report = await sim
        assert report.calls[0].connected
        statuses = [d["status"] for k, d in events if k == "call" and d["id"] == cid]
        assert statuses[0] == "ringing" and "in-progress" in statuses
        assert statuses[-1] == "completed"
        ups = [d["up"] for k, d in events if k == "live" and d["id"] == cid]
        assert ups == [True, False]
        done = next(d for k, d in events if k == "call" and d["status"] == "completed")
        assert done["tenant"] == "acme" and done["agent"] == "support"
        assert done["direction"] == "inbound" and done["from"] == "+15557654321"
        assert len(gw.component(ConsoleComponent).clients) <= 1


async def test_transcript_is_live_while_the_call_is_up(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        cid = await route_call(gw)
        sim = asyncio.create_task(simulate(gw, cid, 1.5))
        url = f"{base_url(gw)}/v1/calls/{cid}/transcript"
        deadline = time.monotonic() + 5
        while cid not in gw.audiosocket.calls:
            assert time.monotonic() < deadline
            await asyncio.sleep(10 * MS)
        async with http.get(url, headers=auth()) as r:
            live = await r.json()
        assert live["live"] is True
        assert [(x["role"], x["text"]) for x in live["lines"]] == [
            ("bot", BOT_LINE), ("caller", CALLER_LINE)]
        await sim
        for _ in range(200):
            async with http.get(url, headers=auth()) as r:
                after = await r.json()
            if not after["live"] and after["lines"]:
                break
            await asyncio.sleep(20 * MS)
        assert after["live"] is False and after["lines"] == live["lines"]


async def test_recording_media_signed_link_and_range(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        base = base_url(gw)
        cid = await route_call(gw)
        await simulate(gw, cid, 0.8)
        rec = await wait_recording(gw, cid)
        async with http.get(f"{base}/v1/console/calls/{cid}/media-link") as r:
            assert r.status == 401
        async with http.get(f"{base}/v1/console/calls/{cid}/media-link",
                            headers=auth()) as r:
            link = await r.json()
        assert link["url"].startswith(f"/v1/calls/{cid}/recording/media?exp=")
        assert TOKEN not in link["url"]
        async with http.get(base + link["url"]) as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            whole = await r.read()
        assert whole[:4] == b"RIFF" and len(whole) == rec["size"]
        async with http.get(base + link["url"], headers={"Range": "bytes=44-143"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 44-143/{len(whole)}"
            assert await r.read() == whole[44:144]
        async with http.get(f"{base}/v1/calls/{cid}/recording/media", headers=auth()) as r:
            assert r.status == 200 and await r.read() == whole
        bad = link["url"][:-4] + ("0000" if not link["url"].endswith("0000") else "1111")
        expired = link["url"].replace(f"exp={link['expires']}", "exp=1000")
        other = link["url"].replace(cid, "00000000-0000-4000-8000-000000000000")
        for url in (bad, expired, other, f"/v1/calls/{cid}/recording/media",
                    f"/v1/calls/{cid}/recording?" + link["url"].split("?")[1]):
            async with http.get(base + url) as r:
                assert r.status == 401, url
        async with http.get(f"{base}/v1/calls/00000000-0000-4000-8000-000000000000/"
                            "recording/media", headers=auth()) as r:
            assert r.status == 404


async def test_a_slow_event_client_is_dropped_and_never_blocks(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        comp = gw.component(ConsoleComponent)
        async with http.get(base_url(gw) + "/v1/events", headers=auth()) as stream:
            for _ in range(100):
                if comp.clients:
                    break
                await asyncio.sleep(10 * MS)
            (client,) = comp.clients
            t0 = time.perf_counter()
            for i in range(QUEUE_LIMIT * 4):  # no await: the client cannot keep up
                comp.publish("live", {"id": str(i), "up": True})
            assert time.perf_counter() - t0 < 500 * MS
            assert client.dropped and comp.dropped == 1
            events = await read_events(stream, lambda evs: bool(evs) and evs[-1][0] == "dropped",
                                       within=5)
            assert len(events) == 1  # its backlog was discarded, then it was told
            assert await stream.content.read() == b""  # and the stream ended
        assert not comp.clients


async def test_timeline_lists_the_call_log_in_time_order(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as gw, aiohttp.ClientSession() as http:
        cid = await route_call(gw)
        await simulate(gw, cid, 0.4)
        url = f"{base_url(gw)}/v1/console/calls/{cid}/timeline"
        for _ in range(200):
            async with http.get(url, headers=auth()) as r:
                body = await r.json()
            if any(e["kind"] == "quality" for e in body["events"]):
                break
            await asyncio.sleep(20 * MS)
        # a barge-in stored at the call's end still shows at its own time
        await gw.store.append_event(cid, "barge_in", body["events"][0]["at"] + 0.001,
                                    {"source": "local-vad"})
        async with http.get(url, headers=auth()) as r:
            events = (await r.json())["events"]
        ats = [e["at"] for e in events]
        assert ats == sorted(ats)
        assert [e["kind"] for e in events][:2] == ["input", "barge_in"]
        changes = [e["data"]["to"] for e in events if e["kind"] == "input"
                   and e["data"].get("changed")]
        assert changes == ["ringing", "in-progress", "completed"]
        assert "transcript" not in {e["kind"] for e in events}
        async with http.get(url) as r:
            assert r.status == 401
        async with http.get(url.replace(cid, "00000000-0000-4000-8000-000000000000"),
                            headers=auth()) as r:
            assert r.status == 404


async def test_loopback_without_a_token_needs_none(tmp_path: Path) -> None:
    async with console_gateway(tmp_path, api_token="") as gw, aiohttp.ClientSession() as http:
        base = base_url(gw)
        cid = await route_call(gw)
        await simulate(gw, cid, 0.4)
        await wait_recording(gw, cid)
        async with http.get(f"{base}/v1/console/calls/{cid}/media-link") as r:
            link = await r.json()
        assert link == {"url": f"/v1/calls/{cid}/recording/media", "expires": None}
        async with http.get(base + link["url"], headers={"Range": "bytes=0-3"}) as r:
            assert r.status == 206 and await r.read() == b"RIFF"
        async with http.get(base + "/v1/events") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
