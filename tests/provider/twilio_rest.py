"""A tiny Twilio REST API on loopback: the few calls the ``twilio`` SDK makes here.

``test_twilio_provider.py`` points the official SDK at this server (``api_base_url``)
to check the provider's mapping and error handling in isolation;
``test_providers_on_the_gateway.py`` runs ``TwilioProvider`` against the gateway's own
Twilio REST emulation (``/2010-04-01/...``) with real calls.

Routes (HTTP Basic auth with the account SID and auth token; Twilio's JSON error
shape otherwise): ``POST/GET .../Calls.json``, ``GET/POST .../Calls/{sid}.json``
(``Status=completed`` ends a call, ``Twiml``/``Url`` redirect it), ``GET
.../Recordings.json?CallSid=``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"


@dataclass
class TwilioRest:
    base_url: str
    account_sid: str
    auth_token: str
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    recordings: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": 20000 + status, "message": message,
                              "more_info": "https://www.twilio.com/docs/errors", "status": status},
                             status=status)


def _app(state: TwilioRest) -> web.Application:
    prefix = f"/2010-04-01/Accounts/{state.account_sid}"
    expected = "Basic " + base64.b64encode(
        f"{state.account_sid}:{state.auth_token}".encode()).decode()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        state.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != expected:
            return _error(401, "Authenticate")
        if not request.path.startswith(prefix + "/"):
            return _error(404, "The requested resource was not found")
        return await handler(request)  # type: ignore[no-any-return]

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        if not form.get("To") or not form.get("From"):
            return _error(400, "A 'To' and a 'From' phone number are required.")
        if not form.get("Url") and not form.get("Twiml"):
            return _error(400, "Either a 'Url' or 'Twiml' parameter is required.")
        sid = "CA" + uuid.uuid4().hex
        call = {"sid": sid, "account_sid": state.account_sid, "to": form["To"],
                "from": form["From"], "status": "queued", "direction": "outbound-api",
                "duration": None, "answered_by": None, "api_version": "2010-04-01",
                "uri": f"{prefix}/Calls/{sid}.json",
                "url": form.get("Url"), "twiml": form.get("Twiml")}
        state.calls[sid] = call
        return web.json_response(call, status=201)

    async def list_calls(request: web.Request) -> web.Response:
        to = request.query.get("To")
        calls = [c for c in state.calls.values() if to is None or c["to"] == to]
        return web.json_response({"calls": calls, "next_page_uri": None, "page": 0,
                                  "page_size": len(calls), "uri": request.path})

    async def fetch(request: web.Request) -> web.Response:
        call = state.calls.get(request.match_info["sid"])
        if call is None:
            return _error(404, "The requested resource was not found")
        return web.json_response(call)

    async def update(request: web.Request) -> web.Response:
        call = state.calls.get(request.match_info["sid"])
        if call is None:
            return _error(404, "The requested resource was not found")
        form = await request.post()
        if form.get("Status") == "completed":
            call["status"] = "completed"
        if form.get("Twiml"):
            call["twiml"] = form["Twiml"]
        if form.get("Url"):
            call["url"] = form["Url"]
        return web.json_response(call)

    async def recordings(request: web.Request) -> web.Response:
        sid = request.query.get("CallSid")
        recs = [r for r in state.recordings.values() if sid is None or r["call_sid"] == sid]
        return web.json_response({"recordings": recs, "next_page_uri": None, "page": 0,
                                  "page_size": len(recs), "uri": request.path})

    app = web.Application(middlewares=[auth])
    app.router.add_post(prefix + "/Calls.json", create)
    app.router.add_get(prefix + "/Calls.json", list_calls)
    app.router.add_get(prefix + "/Calls/{sid}.json", fetch)
    app.router.add_post(prefix + "/Calls/{sid}.json", update)
    app.router.add_get(prefix + "/Recordings.json", recordings)
    return app


@asynccontextmanager
async def twilio_rest_server() -> AsyncIterator[TwilioRest]:
    state = TwilioRest(base_url="", account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    runner = web.AppRunner(_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base_url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def add_recording(state: TwilioRest, call_sid: str, duration: int = 7) -> str:
    sid = "RE" + uuid.uuid4().hex
    state.recordings[sid] = {
        "sid": sid, "call_sid": call_sid, "account_sid": state.account_sid,
        "status": "completed", "duration": str(duration), "channels": 1, "source": "RecordVerb",
        "uri": f"/2010-04-01/Accounts/{state.account_sid}/Recordings/{sid}.json"}
    return sid
