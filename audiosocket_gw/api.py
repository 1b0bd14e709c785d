"""The calls HTTP API, and the component that wires call tracking together.

Routes on the gateway's ``--http`` listener (JSON in, JSON out)::

    POST /v1/calls               {to, from, tenant, agent?, metadata?} -> 201 {id, status}
    GET  /v1/calls/{id}          -> 200 call | 404
    GET  /v1/calls?status=&tenant=&limit=   -> 200 {calls: [...]}
    POST /v1/calls/{id}/hangup   -> 200 call | 404

Errors are ``{"error": {"code": ..., "message": ...}}`` with 400 (bad request),
401 (token), 404, 429 (tenant limit; ``Retry-After``), 502 (Originate refused),
503 (AMI down). When ``config.api_token`` is set (``AIGW_API_TOKEN``; the config
refuses to start on a non-loopback ``--http`` without one) every request needs
``Authorization: Bearer <token>``, compared in constant time. Phone numbers are
never logged at info level.

``CallsComponent`` is the one component ``Gateway._install_components`` adds: the
AMI client (only when ``AIGW_AMI_HOST`` is set), the call tracker, the watchdogs,
the Asterisk provider and these routes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .ami.client import AmiClient, AmiSettings
from .ami.tracker import CallTracker
from .ami_metrics import CallMetrics
from .callstate import CallStatus
from .store.base import CallRecord
from .telephony import (
    AsteriskProvider,
    InvalidNumber,
    LimitExceeded,
    OriginateRejected,
    ProviderUnavailable,
    TelephonyError,
    TelephonyProvider,
    UnknownAgent,
    UnknownTenant,
)
from .watchdogs import Watchdogs

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("audiosocket_gw.api")

__all__ = ["CallsApi", "CallsComponent", "call_to_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_BODY = 64 * 1024


def call_to_json(rec: CallRecord) -> dict[str, Any]:
    """The API's view of a call (Twilio-like field meanings)."""
    return {
        "id": rec.id,
        "tenant": rec.tenant,
        "agent": rec.agent,
        "direction": rec.direction,
        "from": rec.from_,
        "to": rec.to,
        "status": rec.status.value,
        "answered_by": rec.answered_by,
        "created_at": rec.created_at,
        "answered_at": rec.answered_at,
        "ended_at": rec.ended_at,
        "hangup_cause": rec.hangup_cause,
        "hangup_reason": rec.hangup_reason,
        "duration_s": rec.duration_s,
        "billable_s": rec.billable_s,
        "metadata": rec.metadata,
        "quality": {
            "mos_in_min": rec.mos_in_min,
            "mos_in_mean": rec.mos_in_mean,
            "mos_out_min": rec.mos_out_min,
            "mos_out_mean": rec.mos_out_mean,
        },
        "recording_ref": rec.recording_ref,
        "transcript_ref": rec.transcript_ref,
    }


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers or None)


class CallsApi:
    """The ``/v1/calls`` routes over a ``TelephonyProvider``."""

    def __init__(self, app: web.Application, provider: TelephonyProvider,
                 gateway: Gateway, *, token: str | None) -> None:
        self.provider = provider
        self.gateway = gateway
        self._token = token.encode() if token else None
        app.router.add_post("/v1/calls", self._auth(self.create))
        app.router.add_get("/v1/calls", self._auth(self.list))
        app.router.add_get("/v1/calls/{id}", self._auth(self.get))
        app.router.add_post("/v1/calls/{id}/hangup", self._auth(self.hangup))
        app.router.add_get("/v1/calls/{id}/transcript", self._auth(self.transcript))

    def _auth(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self._token is not None:
                header = request.headers.get("Authorization", "")
                scheme, _, given = header.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                        given.strip().encode(), self._token):
                    return _error(401, "unauthorized", "missing or wrong bearer token",
                                  **{"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return wrapped

    async def create(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _error(413, "too_large", "request body too large")
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_json", "body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "bad_json", "body must be a JSON object")
        to, from_, tenant = body.get("to"), body.get("from", ""), body.get("tenant")
        agent, metadata = body.get("agent"), body.get("metadata") or {}
        if not isinstance(to, str) or not isinstance(tenant, str) or not isinstance(from_, str):
            return _error(400, "bad_request", "'to', 'from' and 'tenant' must be strings")
        if agent is not None and not isinstance(agent, str):
            return _error(400, "bad_request", "'agent' must be a string")
        if not isinstance(metadata, Mapping):
            return _error(400, "bad_request", "'metadata' must be an object")
        try:
            call_id = await self.provider.start_outbound_call(tenant, to, from_, metadata,
                                                              agent=agent)
        except LimitExceeded as exc:
            return _error(429, "limit_exceeded", str(exc), **{"Retry-After": "1"})
        except (UnknownTenant, UnknownAgent) as exc:
            return _error(404 if isinstance(exc, UnknownTenant) else 400, "unknown", str(exc))
        except InvalidNumber as exc:
            return _error(400, "invalid_number", str(exc))
        except ProviderUnavailable as exc:
            return _error(503, "unavailable", str(exc), **{"Retry-After": "2"})
        except OriginateRejected as exc:
            return _error(502, "originate_rejected", str(exc))
        except TelephonyError as exc:
            return _error(500, "error", str(exc))
        rec = await self.provider.get_call(call_id)
        status = rec.status.value if rec is not None else "queued"
        return web.json_response({"id": call_id, "status": status}, status=201)

    async def get(self, request: web.Request) -> web.StreamResponse:
        rec = await self.provider.get_call(request.match_info["id"])
        if rec is None:
            return _error(404, "not_found", "no such call")
        return web.json_response(call_to_json(rec))

    async def list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        status: CallStatus | None = None
        if q.get("status"):
            try:
                status = CallStatus(q["status"])
            except ValueError:
                return _error(400, "bad_request", f"unknown status {q['status']!r}")
        try:
            limit = max(1, min(1000, int(q.get("limit", "100"))))
        except ValueError:
            return _error(400, "bad_request", "'limit' must be a number")
        calls = await self.gateway.store.list_calls(status=status, tenant=q.get("tenant") or None,
                                                    limit=limit)
        return web.json_response({"calls": [call_to_json(c) for c in calls]})

    async def transcript(self, request: web.Request) -> web.StreamResponse:
        """The live conversation as the backend reported it (caller and bot lines).

        Recording transcription (Whisper) is separate: ``/v1/calls/{id}/recording``.
        """
        call_id = request.match_info["id"]
        rec = await self.gateway.store.get_call(call_id)
        if rec is None:
            return _error(404, "not_found", "no such call")
        lines: list[Any] = []
        for ev in await self.gateway.store.events(call_id):
            if ev.kind == "transcript":
                lines.extend(ev.data.get("lines", []))
        return web.json_response({"id": call_id, "lines": lines})

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        rec = await self.provider.hangup(request.match_info["id"])
        if rec is None:
            return _error(404, "not_found", "no such call")
        return web.json_response(call_to_json(rec))


class CallsComponent:
    """AMI client + tracker + watchdogs + Asterisk provider + the calls API.

    Settings from the environment (no Config fields needed): ``AIGW_AMI_HOST``,
    ``AIGW_AMI_PORT``, ``AIGW_AMI_USER``, ``AIGW_AMI_SECRET`` (no host: AMI is off and
    outbound calls answer 503), ``AIGW_OUTBOUND_CONTEXT`` (default ``aigw-outbound``),
    ``AIGW_DIAL_TEMPLATE`` (default ``PJSIP/{to}@aigw-trunk``, the sample trunk),
    ``AIGW_ADVERTISE_AUDIOSOCKET`` (alias ``AIGW_AUDIOSOCKET_PUBLIC``)
    (the AudioSocket address Asterisk should dial; default the listener's address).
    """

    def __init__(self, gateway: Gateway, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.gateway = gateway
        self.metrics = CallMetrics(gateway.metrics.registry)
        settings = AmiSettings.from_env(env)
        self.client = AmiClient(settings, on_reconnect=self._lost) if settings else None
        self.watchdogs = Watchdogs(gateway, self.metrics)
        self.tracker = CallTracker(gateway, self.client, self.metrics, watchdogs=self.watchdogs)
        self.provider = AsteriskProvider(
            gateway, self.client, self.tracker, self.metrics,
            context=env.get("AIGW_OUTBOUND_CONTEXT") or "aigw-outbound",
            dial_template=env.get("AIGW_DIAL_TEMPLATE") or "PJSIP/{to}@aigw-trunk",
            # One setting for inbound routing and Originate (the old name still works).
            audiosocket_address=env.get("AIGW_ADVERTISE_AUDIOSOCKET")
            or env.get("AIGW_AUDIOSOCKET_PUBLIC") or None,
        )
        self.api = CallsApi(gateway.http_app, self.provider, gateway,
                            token=gateway.config.api_token)
        if self.client is not None:
            self.client.on_connected.append(self._connected)

    def _lost(self) -> None:
        self.metrics.ami_reconnects.inc()
        self.metrics.ami_connected.set(0)

    async def _connected(self) -> None:
        self.metrics.ami_connected.set(1)

    async def start(self) -> None:
        await self.tracker.start()
        await self.watchdogs.start()
        if self.client is not None:
            await self.client.start()

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()
        await self.watchdogs.stop()
        await self.tracker.stop()
