"""The operators' console: a live call list and call pages in the browser.

Routes (a component, wired by the composition root):

- ``GET /console`` and ``GET /console/{asset}``: the page and its script and style,
  plain files shipped inside the package (``package_data``), no build step, no CDN.
  They are public (they hold no data); every data call the page makes needs the API's
  bearer token, which the page asks for once and keeps in ``sessionStorage``
  (on a loopback-only gateway without a token, nothing is asked).
- ``GET /v1/events``: a Server-Sent Events stream of call changes (bearer-protected
  like the rest of ``/v1``). The browser reads it with ``fetch()`` streaming, so the
  token travels in the ``Authorization`` header, never in a URL (``EventSource``
  cannot set headers). Each event is ``event: call`` with the call as
  ``GET /v1/calls/{id}`` shows it (without history), or ``event: live`` with
  ``{"id", "up"}`` when the AudioSocket leg connects or ends. Each client has a
  bounded queue (``QUEUE_LIMIT``); a client that falls behind is dropped (its stream
  ends with ``event: dropped``; the page reconnects and reloads the list). Publishing
  never awaits: the audio path and the status writer are never held up.
- ``GET /v1/console/calls/{id}/timeline``: every event of the call's log with its
  time (status inputs, quality, transfers...), for the call page.
- ``GET /v1/console/calls/{id}/media-link``: a short-lived signed link to the call's
  recording (``/v1/calls/{id}/recording/media?exp=..&sig=..``) for the page's
  ``<audio>`` element, which cannot send a bearer header either. The signature is an
  HMAC keyed by the API token; the auth middleware accepts it for that one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ..api import call_to_json
from ..httpapi import api_error

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext
    from ..events import StatusChange

__all__ = ["ConsoleComponent", "media_signature", "PUBLIC_PATHS"]

log = logging.getLogger("audiosocket_gw.console")

QUEUE_LIMIT: Final = 256
MAX_CLIENTS: Final = 64
HEARTBEAT_S: Final = 15.0
MEDIA_LINK_TTL_S: Final = 600
ASSETS: Final = {"console.js": "application/javascript", "console.css": "text/css"}
PUBLIC_PATHS: Final = frozenset({"/console", "/console/"} | {f"/console/{a}" for a in ASSETS})
MEDIA_PATH_RE: Final = re.compile(r"/v1/calls/([0-9a-fA-F-]{36})/recording/media")


def media_signature(token: str, call_id: str, exp: int) -> str:
    """HMAC-SHA256 (hex) of ``call_id`` and ``exp`` under a key derived from ``token``."""
    key = hashlib.sha256(b"aigw-console-media:" + token.encode()).digest()
    return hmac.new(key, f"{call_id}:{exp}".encode(), hashlib.sha256).hexdigest()


def media_link_ok(token: str, request: web.Request, now: float | None = None) -> bool:
    """True when ``request`` is a recording media GET with a valid, unexpired link."""
    m = MEDIA_PATH_RE.fullmatch(request.path)
    if m is None or request.method not in ("GET", "HEAD"):
        return False
    exp_raw, sig = request.query.get("exp", ""), request.query.get("sig", "")
    if not exp_raw.isdigit() or len(exp_raw) > 12 or not sig:
        return False
    exp = int(exp_raw)
    if exp < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sig.encode("ascii", "replace"),
                               media_signature(token, m.group(1).lower(), exp).encode())


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class _Client:
    __slots__ = ("dropped", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(QUEUE_LIMIT)
        self.dropped = False


class ConsoleComponent:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.clients: set[_Client] = set()
        self.dropped = 0
        self._unsubscribe: list[Callable[[], None]] = []
        self._index = _asset("index.html")
        self._assets = {name: _asset(name) for name in ASSETS}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.index),
            web.get("/console/", self.index),
            web.get("/console/{asset}", self.asset),
            web.get("/v1/events", self.events),
            web.get("/v1/console/calls/{id}/media-link", self.media_link),
            web.get("/v1/console/calls/{id}/timeline", self.timeline),
        ]

    async def start(self) -> None:
        ev = self.ctx.events
        self._unsubscribe = [ev.status_changed.connect(self._status_changed),
                             ev.started.connect(self._started),
                             ev.ended.connect(self._ended)]

    async def stop(self) -> None:
        for off in self._unsubscribe:
            off()
        self._unsubscribe = []
        for client in list(self.clients):
            self._close(client)

    # -- publishing (synchronous, never blocks) ------------------------------------------

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        for client in list(self.clients):
            if client.dropped:
                continue
            try:
                client.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("console: an event stream fell %d events behind; dropped",
                            QUEUE_LIMIT)
                self._close(client)

    def _close(self, client: _Client) -> None:
        client.dropped = True
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)

    def _status_changed(self, change: StatusChange) -> None:
        if self.clients:
            self.publish("call", call_to_json(change.after))

    def _record_id(self, call: Call) -> str:
        return call.info.metadata.get("parent_call_id") or call.call_id

    def _started(self, call: Call) -> None:
        if self.clients:
            self.publish("live", {"id": self._record_id(call), "up": True})

    def _ended(self, call: Call) -> None:
        if self.clients:
            self.publish("live", {"id": self._record_id(call), "up": False})

    # -- HTTP ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._index, content_type="text/html", charset="utf-8",
                            headers=_NO_STORE)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        if name not in self._assets:
            return api_error(404, "not_found", "no such console file")
        return web.Response(body=self._assets[name], content_type=ASSETS[name],
                            charset="utf-8", headers=_NO_STORE)

    async def events(self, request: web.Request) -> web.StreamResponse:
        if len(self.clients) >= MAX_CLIENTS:
            return api_error(503, "busy", "too many console event streams",
                             **{"Retry-After": "5"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        client = _Client()
        self.clients.add(client)
        try:
            await resp.write(b"retry: 2000\n: connected\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    await resp.write(b"event: dropped\ndata: {}\n\n")
                    break
                kind, data = item
                await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        except ConnectionError:
            return resp
        finally:
            self.clients.discard(client)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        """Every event of the call's log in time order (status inputs, quality,
        barge-ins, digits...), transcript lines left to the transcript route."""
        call_id = request.match_info["id"].lower()
        if await self.ctx.store.get_call(call_id) is None:
            return api_error(404, "not_found", "no such call")
        log_ = sorted((ev for ev in await self.ctx.store.events(call_id)
                       if ev.kind != "transcript"), key=lambda ev: ev.at)
        events = [{"at": ev.at, "kind": ev.kind, "data": ev.data} for ev in log_]
        return web.json_response({"id": call_id, "events": events})

    async def media_link(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["id"].lower()
        if await self.ctx.store.get_call(call_id) is None:
            return api_error(404, "not_found", "no such call")
        path = f"/v1/calls/{call_id}/recording/media"
        token = self.ctx.settings.core.api_token
        if not token:
            return web.json_response({"url": path, "expires": None})
        exp = int(self.ctx.clock.wall()) + MEDIA_LINK_TTL_S
        sig = media_signature(token, call_id, exp)
        return web.json_response({"url": f"{path}?exp={exp}&sig={sig}", "expires": exp})


_NO_STORE: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
