"""The migration rollout: which calls take the Asterisk path while numbers are at Twilio.

Inbound (a component built in ``gateway.py``): the numbers' Voice URL at Twilio points
to ``POST /v1/rollout/voice``. Per call it answers TwiML:

- ``<Redirect method="POST">{original voice URL}</Redirect>``: the call stays on
  Twilio and reaches the app exactly as before (Twilio re-posts the call's parameters
  to that URL, signed for it). The original URL is the number's agent ``voice_url``,
  which ``audiosocket-gw numbers import`` writes from each number's Twilio ``voice_url``.
- ``<Dial action="/v1/rollout/voice/dial-status"><Sip>sip:{DID}@{AIGW_ROLLOUT_SIP_HOST}
  </Sip></Dial>``: the call moves to Asterisk over the SIP trunk and reaches the same
  agent through the dialplan and AudioSocket. If that leg fails (``DialCallStatus``
  ``failed``/``busy``/``no-answer``), the dial-status callback logs the failure and
  answers the ``<Redirect>`` above: the caller still reaches the app on Twilio.

Which: the most specific rule (the DID's, the tenant's, the global one) gives the
percentage; the caller's number picks a stable bucket (``provider.base.bucket``: sha256
-> 0..99, the same function the app's ``RolloutProvider`` uses), so a caller keeps the
same path while the percentage stays put. A draining gateway, or no
``AIGW_ROLLOUT_SIP_HOST``, keeps every call on Twilio.

Both webhook paths are public for the bearer middleware and verified with
``X-Twilio-Signature`` instead (the tenant's auth token, ``twilio.ids.auth_token_for``;
the URL is ``AIGW_ROLLOUT_PUBLIC_URL`` when set): anything unsigned or wrongly signed
gets 403.

Control (bearer-protected): ``GET /v1/rollout`` (rules, effective percentages and the
last hour's decisions and failures per tenant, DID and path) and ``PUT /v1/rollout``
(``{"percent": N, "tenant"?: T, "did"?: D}`` or ``{"action": "rollback",
"tenant"?: T}``), which the ``audiosocket-gw rollout`` CLI calls. Rules live in the
call store (``rollout_rules``), so they survive restarts and every gateway process
sharing the store sees them; each change is logged (a DID only by its last digits)
and counted (``aigw_rollout_changes_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from aiohttp import web
from prometheus_client import Counter, Gauge

from .httpapi import JsonBodyError, api_error, read_form, read_json
from .provider.base import bucket, effective_percent
from .settings import RolloutSettings
from .store.base import RolloutRule
from .tenants import normalize_e164
from .twilio.ids import auth_token_for
from .twilio.signature import SIGNATURE_HEADER, validate_signature

if TYPE_CHECKING:
    from .context import GatewayContext

__all__ = ["PUBLIC_PATHS", "VOICE_PATH", "RolloutComponent", "rollout_document"]

log = logging.getLogger("audiosocket_gw.rollout")

VOICE_PATH: Final = "/v1/rollout/voice"
DIAL_STATUS_PATH: Final = "/v1/rollout/voice/dial-status"
PUBLIC_PATHS: Final = frozenset({VOICE_PATH, DIAL_STATUS_PATH})
STATS_WINDOW_S: Final = 3600.0
_MAX_FORM: Final = 64 * 1024
_DIAL_FAILED: Final = frozenset({"failed", "busy", "no-answer"})
_XML: Final = '<?xml version="1.0" encoding="UTF-8"?>'


def _mask(did: str) -> str:
    """A number as it may appear in logs: its last four digits."""
    return "..." + did[-4:] if did else ""


def rollout_document(rules: list[RolloutRule]) -> dict[str, Any]:
    """Rules as the ``GET /v1/rollout`` document (``provider.base.effective_percent``
    reads it)."""
    doc: dict[str, Any] = {"percent": 0, "tenants": {}, "dids": {}, "rules": []}
    for r in rules:
        if r.scope == "global":
            doc["percent"] = r.percent
        elif r.scope == "tenant":
            doc["tenants"][r.target] = r.percent
        else:
            doc["dids"][r.target] = {"percent": r.percent, "tenant": r.tenant}
        doc["rules"].append({"scope": r.scope, "target": r.target, "percent": r.percent,
                             "tenant": r.tenant, "updated_at": r.updated_at, "note": r.note})
    return doc


class RolloutComponent:
    """The rollout webhook and its control API (see the module docstring)."""

    def __init__(self, ctx: GatewayContext, settings: RolloutSettings, *,
                 healthy: Callable[[], bool] = lambda: True) -> None:
        self.ctx = ctx
        self.settings = settings
        self.healthy = healthy
        reg = ctx.metrics.registry
        self.decisions = Counter("aigw_rollout_decisions_total",
                                 "Inbound rollout webhook answers by path and reason",
                                 ["path", "reason"], registry=reg)
        self.failures = Counter("aigw_rollout_dial_failures_total",
                                "Calls sent to Asterisk whose SIP leg failed (then redirected "
                                "back to Twilio)", ["status"], registry=reg)
        self.changes = Counter("aigw_rollout_changes_total", "Rollout percentage changes",
                               ["scope", "action"], registry=reg)
        self.percent = Gauge("aigw_rollout_percent",
                             "Asterisk share of new calls (tenant '*' is the global rule)",
                             ["tenant"], registry=reg)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(VOICE_PATH, self.voice),
            web.post(DIAL_STATUS_PATH, self.dial_status),
            web.get("/v1/rollout", self.get),
            web.put("/v1/rollout", self.put),
        ]

    async def start(self) -> None:
        self._update_gauges(await self.ctx.store.rollout_rules())

    async def stop(self) -> None:
        """Nothing to close."""

    def _update_gauges(self, rules: list[RolloutRule]) -> None:
        self.percent.clear()
        self.percent.labels("*").set(0)
        for r in rules:
            if r.scope in ("global", "tenant"):
                self.percent.labels("*" if r.scope == "global" else r.target).set(r.percent)

    # -- the Twilio webhook ---------------------------------------------------------

    async def _form(self, request: web.Request) -> dict[str, str]:
        return dict(await read_form(request, max_body=_MAX_FORM))

    def _signed_url(self, request: web.Request) -> str:
        """The URL Twilio signed: the configured public URL (path adjusted), or ours."""
        if not self.settings.public_url:
            return str(request.url)
        base = urlsplit(self.settings.public_url)
        path = base.path.replace(VOICE_PATH, request.path, 1)
        return urlunsplit((base.scheme, base.netloc, path, request.query_string, ""))

    async def _verified(self, request: web.Request) -> tuple[dict[str, str], Any] | web.Response:
        """The form and the DID's number, or the 4xx answer."""
        try:
            form = await self._form(request)
        except JsonBodyError as exc:
            return exc.response()
        tenants = self.ctx.tenants
        number = tenants.lookup_did(form.get("To", ""))
        agent = tenants.agent(number.agent) if number is not None else None
        tenant = tenants.tenants.get(number.tenant) if number is not None else None
        token = auth_token_for(tenant=tenant, agent=agent, env=self.ctx.settings.environ)
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not token or not signature or not validate_signature(
                token, self._signed_url(request), form, signature):
            return api_error(403, "forbidden", "missing or wrong X-Twilio-Signature")
        if number is None:
            return api_error(404, "unknown_number", "the called number is not in the DID map")
        return form, number

    def _original_url(self, agent_name: str) -> str | None:
        agent = self.ctx.tenants.agent(agent_name)
        return agent.voice_url if agent is not None else None

    @staticmethod
    def _twiml(body: str) -> web.Response:
        return web.Response(text=f"{_XML}<Response>{body}</Response>",
                            content_type="application/xml")

    def _redirect(self, url: str) -> web.Response:
        return self._twiml(f'<Redirect method="POST">{escape(url)}</Redirect>')

    async def voice(self, request: web.Request) -> web.StreamResponse:
        checked = await self._verified(request)
        if isinstance(checked, web.Response):
            return checked
        form, number = checked
        did, tenant = number.did_e164, number.tenant
        rules = await self.ctx.store.rollout_rules()
        pct = effective_percent(rollout_document(rules), tenant, did)
        b = bucket(form.get("From") or form.get("CallSid", ""))
        original = self._original_url(number.agent)
        if not self.settings.sip_host:
            path, reason = "twilio", "no_sip_host"
        elif not self.healthy():
            path, reason = "twilio", "gateway_unhealthy"
        elif b < pct:
            path, reason = "asterisk", "rollout"
        else:
            path, reason = "twilio", "rollout_excluded"
        if path == "twilio" and original is None:
            if not self.settings.sip_host:
                return api_error(503, "no_route", "the number has no original voice URL and "
                                 "AIGW_ROLLOUT_SIP_HOST is not set")
            path, reason = "asterisk", "no_original_url"
        await self.ctx.store.log_rollout(self.ctx.clock.wall(), tenant, did, path, "call",
                                         reason)
        self.decisions.labels(path, reason).inc()
        if path == "twilio":
            assert original is not None
            return self._redirect(original)
        sip = escape(f"sip:{did}@{self.settings.sip_host}")
        action = DIAL_STATUS_PATH
        if self.settings.public_url:  # behind a proxy the path may carry a prefix
            action = self.settings.public_url.replace(VOICE_PATH, DIAL_STATUS_PATH, 1)
        return self._twiml(f'<Dial action="{escape(action)}" method="POST">'
                           f"<Sip>{sip}</Sip></Dial>")

    async def dial_status(self, request: web.Request) -> web.StreamResponse:
        """After the SIP leg: a failed leg goes back to the app on Twilio."""
        checked = await self._verified(request)
        if isinstance(checked, web.Response):
            return checked
        form, number = checked
        status = form.get("DialCallStatus", "")
        if status not in _DIAL_FAILED:
            return self._twiml("<Hangup/>")
        now = self.ctx.clock.wall()
        await self.ctx.store.log_rollout(now, number.tenant, number.did_e164, "asterisk",
                                         "failure", f"dial_{status}")
        self.failures.labels(status).inc()
        original = self._original_url(number.agent)
        log.warning("rollout: SIP leg to Asterisk %s for tenant %s (number %s)%s", status,
                    number.tenant, _mask(number.did_e164),
                    ": back to Twilio" if original else "")
        if original is None:
            return self._twiml("<Hangup/>")
        await self.ctx.store.log_rollout(now, number.tenant, number.did_e164, "twilio", "call",
                                         f"dial_{status}")
        self.decisions.labels("twilio", f"dial_{status}").inc()
        return self._redirect(original)

    # -- control ----------------------------------------------------------------------

    async def document(self) -> dict[str, Any]:
        rules = await self.ctx.store.rollout_rules()
        doc = rollout_document(rules)
        since = self.ctx.clock.wall() - STATS_WINDOW_S
        doc["sip_host"] = self.settings.sip_host
        doc["stats"] = {"since": since, "window_s": STATS_WINDOW_S, "rows": [
            {"tenant": s.tenant, "did": s.did, "path": s.path, "calls": s.calls,
             "failures": s.failures,
             "percent": effective_percent(doc, s.tenant, s.did)}
            for s in await self.ctx.store.rollout_stats(since)]}
        doc["effective"] = {
            "tenants": {t: effective_percent(doc, t) for t in sorted(self.ctx.tenants.tenants)},
            "dids": {n.did_e164: effective_percent(doc, n.tenant, n.did_e164)
                     for n in self.ctx.tenants.numbers.values()},
        }
        return doc

    async def get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.document())

    async def put(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request, max_body=4096)
        except JsonBodyError as exc:
            return exc.response()
        tenant, did, note = body.get("tenant"), body.get("did"), body.get("note", "")
        action = body.get("action", "set")
        if tenant is not None and (not isinstance(tenant, str)
                                   or tenant not in self.ctx.tenants.tenants):
            return api_error(404, "unknown_tenant", "no such tenant")
        if not isinstance(note, str) or len(note) > 200:
            return api_error(400, "bad_request", "'note' must be a string (200 characters)")
        rules = await self.ctx.store.rollout_rules()
        now = self.ctx.clock.wall()
        if action == "rollback":
            if did is not None:
                return api_error(400, "bad_request", "rollback takes a tenant or nothing")
            return await self._apply(*self._rollback(rules, tenant, now, note),
                                     scope="tenant" if tenant else "global", action="rollback",
                                     what=f"tenant {tenant}" if tenant else "everything", pct=0)
        if action != "set":
            return api_error(400, "bad_request", "'action' is 'set' or 'rollback'")
        pct = body.get("percent")
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            return api_error(400, "bad_request", "'percent' must be a whole number 0..100")
        if did is not None:
            e164 = normalize_e164(did) if isinstance(did, str) else None
            number = self.ctx.tenants.numbers.get(e164) if e164 else None
            if number is None:
                return api_error(404, "unknown_number", "the number is not in the DID map")
            if tenant is not None and number.tenant != tenant:
                return api_error(400, "bad_request", "the number belongs to another tenant")
            rule = RolloutRule("did", number.did_e164, pct, now, number.tenant, note)
            what, scope = f"number {_mask(number.did_e164)} of tenant {number.tenant}", "did"
        elif tenant is not None:
            rule, what, scope = RolloutRule("tenant", tenant, pct, now, "", note), \
                f"tenant {tenant}", "tenant"
        else:
            rule, what, scope = RolloutRule("global", "", pct, now, "", note), "everything", \
                "global"
        return await self._apply([rule], [], scope=scope, action="set", what=what, pct=pct)

    @staticmethod
    def _rollback(rules: list[RolloutRule], tenant: str | None, now: float,
                  note: str) -> tuple[list[RolloutRule], list[tuple[str, str]]]:
        """0 % for ``tenant`` (its DID rules dropped) or for everyone (every rule dropped)."""
        if tenant is None:
            deletes: list[tuple[str, str]] = [(r.scope, r.target) for r in rules
                                              if r.scope != "global"]
            return [RolloutRule("global", "", 0, now, "", note or "rollback")], deletes
        deletes = [(r.scope, r.target) for r in rules
                   if r.scope == "did" and r.tenant == tenant]
        return [RolloutRule("tenant", tenant, 0, now, "", note or "rollback")], deletes

    async def _apply(self, upserts: list[RolloutRule], deletes: list[tuple[str, str]], *,
                     scope: str, action: str, what: str, pct: int) -> web.Response:
        await self.ctx.store.change_rollout(upserts, deletes)
        self.changes.labels(scope, action).inc()
        self._update_gauges(await self.ctx.store.rollout_rules())
        log.warning("rollout %s: %s -> %d %% on Asterisk%s", action, what, pct,
                    f" ({len(deletes)} narrower rules dropped)" if deletes else "")
        return web.json_response(await self.document())


