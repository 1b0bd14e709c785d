"""The calls HTTP API (a component over a ``TelephonyProvider``).

Routes on the gateway's ``--http`` listener (JSON in, JSON out)::

    POST /v1/calls               {to, from, tenant, agent?, metadata?, timeout?}
                                 -> 201 {id, status}   (timeout: ring seconds)
                                 header Idempotency-Key: see below
    GET  /v1/calls/{id}          -> 200 call | 404
    GET  /v1/calls?status=&tenant=&limit=   -> 200 {calls: [...]}
    POST /v1/calls/{id}/hangup   -> 200 call | 404
    POST /v1/calls/{id}/twiml    {url, method?} or {twiml} -> 200 call | 404 | 400
                                 | 409 not_in_progress   (a live call runs new TwiML)

``/twiml`` is the REST emulation's live update (``Calls/{Sid}.json`` with ``Url`` or
``Twiml``) through the same path (``TwilioRestApi.redirect_live``): the call's
``twilio-stream`` session stops what it runs and runs the new document. 409
``not_in_progress`` when the call is not in progress or its agent runs no TwiML.

Errors are ``{"error": {"code": ..., "message": ...}}`` with 400 (bad request),
401 (token), 404, 429 (tenant limit; ``Retry-After``), 502 (Originate refused),
503 (AMI down), from ``httpapi.api_error``; the bearer token is checked by the
one middleware in ``httpapi``. Phone numbers are never logged at info level.

``Idempotency-Key`` (optional, 1-255 visible ASCII characters): within 24 hours the
same key of the same tenant never places a second call. The first request claims the
key in the call store (``claim_idempotency_key``, so every gateway process sharing the
store agrees); a repeat gets ``201`` with the first call's id and the header
``Idempotent-Replayed: true``; a repeat while the first is still being handled gets
``409 in_progress`` (``Retry-After: 1``); a create that failed releases the key.
Clients (the provider library's ``AsteriskProvider``) retry a timed-out create with
the same key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .callstate import CallStatus
from .httpapi import JsonBodyError, api_error, read_json
from .store.base import CallRecord
from .telephony import (
    InvalidNumber,
    LimitExceeded,
    OriginateRejected,
    ProviderUnavailable,
    TelephonyError,
    TelephonyProvider,
    UnknownAgent,
    UnknownTenant,
)
from .twilio.rest import ERR_CALL_STATE, TwilioApiError, TwilioRestApi

if TYPE_CHECKING:
    from .context import GatewayContext

log = logging.getLogger("audiosocket_gw.api")

__all__ = ["CallsApi", "call_to_json"]
_MAX_BODY = 64 * 1024
IDEMPOTENCY_TTL_S = 24 * 3600.0
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


AGENT_EVENT_KINDS = frozenset({"tool", "transfer", "dtmf", "dial", "dial_outcome"})
"""Event-log kinds listed in ``GET /v1/calls/{id}`` ``agent_events``: function calls
(``tool``: name, outcome, latency_ms, redacted arguments, result), transfers
(``transfer``: destination, kind, outcome), caller DTMF handed to the model (``dtmf``:
digit count only) and the Dial()s under them (``dial``, ``dial_outcome``)."""


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


class CallsApi:
    """The ``/v1/calls`` routes over a ``TelephonyProvider`` (a component)."""

    def __init__(self, ctx: GatewayContext, provider: TelephonyProvider,
                 twiml: TwilioRestApi | None = None) -> None:
        self.ctx = ctx
        self.provider = provider
        self.twiml_api = twiml

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/calls", self.create),
            web.get("/v1/calls", self.list),
            web.get("/v1/calls/{id}", self.get),
            web.post("/v1/calls/{id}/hangup", self.hangup),
            web.post("/v1/calls/{id}/twiml", self.twiml),
            web.get("/v1/calls/{id}/transcript", self.transcript),
        ]

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request, max_body=_MAX_BODY)
        except JsonBodyError as exc:
            return exc.response()
        to, from_, tenant = body.get("to"), body.get("from", ""), body.get("tenant")
        agent, metadata = body.get("agent"), body.get("metadata") or {}
        timeout = body.get("timeout")
        if not isinstance(to, str) or not isinstance(tenant, str) or not isinstance(from_, str):
            return api_error(400, "bad_request", "'to', 'from' and 'tenant' must be strings")
        if agent is not None and not isinstance(agent, str):
            return api_error(400, "bad_request", "'agent' must be a string")
        if not isinstance(metadata, Mapping):
            return api_error(400, "bad_request", "'metadata' must be an object")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float)
                                    or not 0 < timeout <= 600):
            return api_error(400, "bad_request",
                             "'timeout' must be a number of seconds within 1..600")
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            if not _KEY_RE.fullmatch(key):
                return api_error(400, "bad_request",
                                 "'Idempotency-Key' must be 1-255 visible ASCII characters")
            fresh, existing = await self.ctx.store.claim_idempotency_key(
                tenant, key, self.ctx.clock.wall(), IDEMPOTENCY_TTL_S)
            if not fresh:
                if existing is None:
                    return api_error(409, "in_progress", "a request with this Idempotency-Key "
                                     "is still being handled", **{"Retry-After": "1"})
                return await self._created(existing, replayed=True)
        failure: web.StreamResponse | None = None
        call_id = ""
        try:
            call_id = await self.provider.start_outbound_call(
                tenant, to, from_, metadata, agent=agent,
                ring_timeout_s=None if timeout is None else float(timeout))
        except TelephonyError as exc:
            failure = self._create_error(exc)
        finally:
            if key is not None:
                if call_id:
                    await self.ctx.store.complete_idempotency_key(tenant, key, call_id)
                else:
                    await self.ctx.store.release_idempotency_key(tenant, key)
        if failure is not None:
            return failure
        return await self._created(call_id)

    async def _created(self, call_id: str, *, replayed: bool = False) -> web.StreamResponse:
        rec = await self.provider.get_call(call_id)
        status = rec.status.value if rec is not None else "queued"
        return web.json_response({"id": call_id, "status": status}, status=201,
                                 headers={"Idempotent-Replayed": "true"} if replayed else None)

    @staticmethod
    def _create_error(exc: TelephonyError) -> web.Response:
        if isinstance(exc, LimitExceeded):
            return api_error(429, "limit_exceeded", str(exc), **{"Retry-After": "1"})
        if isinstance(exc, UnknownTenant | UnknownAgent):
            return api_error(404 if isinstance(exc, UnknownTenant) else 400, "unknown",
                             str(exc))
        if isinstance(exc, InvalidNumber):
            return api_error(400, "invalid_number", str(exc))
        if isinstance(exc, ProviderUnavailable):
            return api_error(503, "unavailable", str(exc), **{"Retry-After": "2"})
        if isinstance(exc, OriginateRejected):
            return api_error(502, "originate_rejected", str(exc))
        return api_error(503, "error", str(exc))

    async def get(self, request: web.Request) -> web.StreamResponse:
        """One call, with its status history and where its MOS figures came from."""
        call_id = request.match_info["id"]
        rec = await self.provider.get_call(call_id)
        if rec is None:
            return api_error(404, "not_found", "no such call")
        body = call_to_json(rec)
        history: list[dict[str, Any]] = []
        agent_events: list[dict[str, Any]] = []
        quality: dict[str, Any] | None = None
        for ev in await self.ctx.store.events(call_id):
            if ev.kind == "input" and ev.data.get("changed"):
                history.append({"status": ev.data.get("to"), "at": ev.at,
                                "input": ev.data.get("input")})
            elif ev.kind == "quality":
                quality = ev.data
            elif ev.kind in AGENT_EVENT_KINDS:
                agent_events.append({**ev.data, "event": ev.kind, "at": ev.at})
        body["status_history"] = history
        body["agent_events"] = agent_events
        for side in ("in", "out"):
            q = quality.get(side) if quality else None
            body["quality"][f"mos_{side}_source"] = q.get("source") if isinstance(q, dict) \
                else None
        if quality is not None:
            body["quality"]["gateway_loss"] = quality.get("gateway_loss")
            body["quality"]["underruns"] = quality.get("underruns")
        return web.json_response(body)

    async def list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        status: CallStatus | None = None
        if q.get("status"):
            try:
                status = CallStatus(q["status"])
            except ValueError:
                return api_error(400, "bad_request", f"unknown status {q['status']!r}")
        try:
            limit = max(1, min(1000, int(q.get("limit", "100"))))
        except ValueError:
            return api_error(400, "bad_request", "'limit' must be a number")
        calls = await self.ctx.store.list_calls(status=status, tenant=q.get("tenant") or None,
                                                    limit=limit)
        return web.json_response({"calls": [call_to_json(c) for c in calls]})

    async def transcript(self, request: web.Request) -> web.StreamResponse:
        """The conversation as the backend reported it (caller and bot lines); while
        the call is up, the lines so far (``"live": true``).

        Recording transcription (Whisper) is separate: ``/v1/calls/{id}/recording``.
        """
        call_id = request.match_info["id"]
        rec = await self.ctx.store.get_call(call_id)
        if rec is None:
            return api_error(404, "not_found", "no such call")
        lines: list[Any] = []
        for ev in await self.ctx.store.events(call_id):
            if ev.kind == "transcript":
                lines.extend(ev.data.get("lines", []))
        live = False
        for call in list(self.ctx.calls.values()):
            if call_id in (call.call_id, call.info.metadata.get("parent_call_id")):
                live = True  # still up: the lines so far (stored at its end)
                lines.extend({"at": at, "role": role, "text": text}
                             for at, role, text in list(call.transcripts))
        return web.json_response({"id": call_id, "lines": lines, "live": live})

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        rec = await self.provider.hangup(request.match_info["id"])
        if rec is None:
            return api_error(404, "not_found", "no such call")
        return web.json_response(call_to_json(rec))

    async def twiml(self, request: web.Request) -> web.StreamResponse:
        """Run new TwiML on a live call: ``{"url": ..., "method": "POST"}`` or
        ``{"twiml": "<Response>...</Response>"}``."""
        try:
            body = await read_json(request, max_body=_MAX_BODY)
        except JsonBodyError as exc:
            return exc.response()
        url, twiml, method = body.get("url", ""), body.get("twiml", ""), body.get("method")
        if not isinstance(url, str) or not isinstance(twiml, str) \
                or not isinstance(method, str | None):
            return api_error(400, "bad_request", "'url', 'method' and 'twiml' must be strings")
        if self.twiml_api is None:
            return api_error(503, "unavailable", "this gateway does not run TwiML")
        rec = await self.provider.get_call(request.match_info["id"])
        if rec is None:
            return api_error(404, "not_found", "no such call")
        try:
            self.twiml_api.redirect_live(rec, url=url, method=(method or "POST").upper(),
                                         twiml=twiml)
        except TwilioApiError as exc:
            if exc.code == ERR_CALL_STATE:
                return api_error(409, "not_in_progress", str(exc))
            return api_error(400, "bad_request", str(exc))
        return web.json_response(call_to_json(rec))
