"""Inbound routing API: ``POST /v1/route``, asked by the AGI script for every call.

The dialplan (``dialplan/extensions_aigw.conf``) runs ``agi/aigw_route.py`` for each
inbound DID; the script posts ``{did, caller, uniqueid, channel}`` here and copies the
answer onto the channel as ``AIGW_*`` variables. This module decides:

1. the DID (normalised to E.164) -> number -> agent -> tenant (``unknown`` if none);
2. the tenant's concurrent-call limit, atomically in the store (``busy`` if full);
3. a fresh call id (uuid4), which is also the AudioSocket UUID the dialplan dials
   with: the call record is created (inbound, ringing) and the id pre-registered in
   the ``CallRegistry`` with the agent, so the AudioSocket server accepts it;
4. the variables: ``AIGW_STATUS`` (ok|busy|unknown), ``AIGW_CALL_ID``,
   ``AIGW_AUDIOSOCKET`` (this node as Asterisk should dial it), ``AIGW_TENANT``,
   ``AIGW_AGENT``, ``AIGW_RECORD`` (1 when the agent records through MixMonitor),
   ``AIGW_RECORDING_FILE`` (docs/PROTOCOLS.md §5.3: ``{dir}/{tenant}/{call_id}.wav``) and
   ``AIGW_FALLBACK`` (a dial string for when the AI leg is unavailable, or empty).

Every value returned is built from our own configuration, never from the request:
caller ID and DID are attacker-controlled and must not reach the dialplan. They are
stored with the call (``from``/``to``) but never logged at info level.

Slots: a routed call holds its tenant's slot from routing on. If its AudioSocket
never arrives (the caller hung up during the AGI, the dialplan fell back), the slot
is released once the registry entry has expired (``CallRegistry.ttl``), and the call
is closed as failed. When the AudioSocket call ends, the call tracker applies the
end to the store (which releases the slot); this component only stops expecting a
call once its AudioSocket has arrived (``events.started``).

The pure part (``parse_route_request``, ``route_variables``, ``recording_path``) has
no I/O; ``RoutingComponent`` is the thin aiohttp/asyncio shell.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

from .admission import LimitExceeded, clean_number, recording_path, safe_id
from .callstate import CallInput
from .config import format_hostport, parse_hostport
from .httpapi import JsonBodyError, api_error, parse_json_object, read_body
from .settings import DIAL_RE, SAFE_DIR_RE, RoutingSettings
from .store.base import StoreError
from .tenants import normalize_e164

if TYPE_CHECKING:
    from .call import Call
    from .context import GatewayContext

__all__ = [
    "DEPLOYMENT_VARIABLES",
    "MAX_BODY",
    "ORIGINATE_VARIABLES",
    "ROUTE_VARIABLES",
    "RouteRequest",
    "RouteRequestError",
    "RoutingComponent",
    "RoutingSettings",
    "originate_variables",
    "parse_route_request",
    "recording_path",
    "route_variables",
]

log = logging.getLogger("audiosocket_gw.routing")

MAX_BODY: Final = 4096
"""Largest request body accepted (the AGI script sends ~200 bytes)."""

_FIELD_LIMITS: Final = {"did": 64, "caller": 128, "uniqueid": 64, "channel": 256}
STATUSES: Final = ("ok", "busy", "unknown", "unavailable")

ROUTE_VARIABLES: Final = (
    "AIGW_STATUS", "AIGW_CALL_ID", "AIGW_AUDIOSOCKET", "AIGW_AUDIOSOCKET_ALT",
    "AIGW_TENANT", "AIGW_AGENT", "AIGW_RECORD", "AIGW_RECORDING_FILE", "AIGW_FALLBACK",
)
"""What ``POST /v1/route`` returns and the AGI script sets on an inbound channel."""

ORIGINATE_VARIABLES: Final = (
    "AIGW_CALL_ID", "AIGW_AUDIOSOCKET", "AIGW_AUDIOSOCKET_ALT", "AIGW_TENANT", "AIGW_AGENT",
    "AIGW_RECORD", "AIGW_RECORDING_FILE", "AIGW_AMD", "AIGW_AMD_MS", "AIGW_VOICEMAIL_ACTION",
)
"""What ``[aigw-outbound]`` reads: the AMI ``Originate`` must pass these as
``Variable:`` headers (see ``originate_variables``)."""

DEPLOYMENT_VARIABLES: Final = (
    "AIGW_ROUTE_URL", "AIGW_HTTP_URL", "AIGW_FALLBACK_DIAL", "AIGW_ANNOUNCEMENT",
)
"""Optional globals (``[globals]`` or a trunk endpoint's ``set_var``) the dialplan
reads; each has a default in the dialplan (see ``docs/DEPLOY.md``)."""


class RouteRequestError(ValueError):
    """The request body is not a valid route request (the message says why)."""


@dataclass(frozen=True)
class RouteRequest:
    """A validated ``POST /v1/route`` body; every field is untrusted caller data."""

    did: str
    caller: str
    uniqueid: str
    channel: str


def parse_route_request(body: bytes) -> RouteRequest:
    """Decode and bound a request body; raise ``RouteRequestError`` on anything odd.

    Fields must be strings within ``_FIELD_LIMITS`` without control characters;
    missing ``caller``/``uniqueid``/``channel`` become "" (``did`` is required).
    """
    if len(body) > MAX_BODY:
        raise RouteRequestError(f"body larger than {MAX_BODY} bytes")
    try:
        data = parse_json_object(body, max_depth=4)
    except JsonBodyError as exc:
        raise RouteRequestError(str(exc)) from None
    out: dict[str, str] = {}
    for name, limit in _FIELD_LIMITS.items():
        v = data.get(name, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise RouteRequestError(f"{name} must be a string")
        if len(v) > limit:
            raise RouteRequestError(f"{name} longer than {limit} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise RouteRequestError(f"{name} contains control characters")
        out[name] = v
    if not out["did"]:
        raise RouteRequestError("did is required")
    return RouteRequest(**out)


def route_variables(
    status: str,
    *,
    call_id: str = "",
    audiosocket: str = "",
    audiosocket_alt: Sequence[str] = (),
    tenant: str = "",
    agent: str = "",
    record: bool = False,
    recording_file: str = "",
    fallback: str = "",
) -> dict[str, str]:
    """The ``AIGW_*`` channel variables of one answer (every key always present).

    ``audiosocket_alt``: other nodes' AudioSocket addresses the dialplan tries, in
    order, when ``audiosocket`` refuses the connection; ``&``-joined in
    ``AIGW_AUDIOSOCKET_ALT`` (the primary itself is left out).
    """
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {
        "AIGW_STATUS": status,
        "AIGW_CALL_ID": call_id,
        "AIGW_AUDIOSOCKET": audiosocket,
        "AIGW_AUDIOSOCKET_ALT": "&".join(a for a in audiosocket_alt if a != audiosocket),
        "AIGW_TENANT": tenant,
        "AIGW_AGENT": agent,
        "AIGW_RECORD": "1" if record else "0",
        "AIGW_RECORDING_FILE": recording_file,
        "AIGW_FALLBACK": fallback,
    }


def originate_variables(
    *,
    call_id: str,
    audiosocket: str,
    tenant: str,
    agent: str,
    audiosocket_alt: Sequence[str] = (),
    record: bool = False,
    recording_file: str = "",
    amd: bool = True,
    amd_ms: int = 5000,
    voicemail_action: str = "hangup",
) -> dict[str, str]:
    """The channel variables an AMI ``Originate`` into ``[aigw-outbound]`` must set.

    ``amd``: run Asterisk's ``AMD()`` before the bridge, for at most ``amd_ms``
    (its totalAnalysisTime; AMD blocks the channel, docs/PROTOCOLS.md §5.1). On ``MACHINE``
    with ``voicemail_action`` "hangup" the dialplan hangs up; with "leave_message"
    the bot is connected anyway. ``audiosocket_alt``: the peer nodes the bridge tries
    when ``audiosocket`` refuses (as for inbound: ``route_variables``). Values are
    checked: they end up in app arguments.
    """
    uuid.UUID(call_id)
    host, port = parse_hostport(audiosocket, setting="audiosocket")
    if not safe_id(tenant) or not safe_id(agent):
        raise ValueError("tenant and agent must be [A-Za-z0-9_.-] ids")
    if recording_file and not (SAFE_DIR_RE.fullmatch(recording_file) and ".." not in
                               recording_file.split("/")):
        raise ValueError("recording_file must be a safe absolute path")
    if voicemail_action not in ("hangup", "leave_message"):
        raise ValueError("voicemail_action must be hangup or leave_message")
    if not 500 <= amd_ms <= 60000:
        raise ValueError("amd_ms must be within 500..60000")
    return {
        "AIGW_CALL_ID": call_id,
        "AIGW_AUDIOSOCKET": format_hostport(host, port),
        "AIGW_AUDIOSOCKET_ALT": "&".join(
            format_hostport(*parse_hostport(a, setting="audiosocket_alt")) for a in audiosocket_alt
            if a != format_hostport(host, port)),
        "AIGW_TENANT": tenant,
        "AIGW_AGENT": agent,
        "AIGW_RECORD": "1" if record and recording_file else "0",
        "AIGW_RECORDING_FILE": recording_file if record else "",
        "AIGW_AMD": "1" if amd else "0",
        "AIGW_AMD_MS": str(int(amd_ms)),
        "AIGW_VOICEMAIL_ACTION": voicemail_action,
    }


class RoutingComponent:
    """``POST /v1/route`` over the admission path, plus expiry of unclaimed calls.

    A routed call whose AudioSocket never arrives (the caller hung up during the AGI,
    the dialplan fell back) is closed as failed once its registry entry has expired
    (``CallRegistry.ttl``), which releases its slot; the check runs on a timer armed
    only while such calls are pending.
    """

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.routing
        # call id -> monotonic deadline after which an unclaimed call is released
        self.pending: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/route", self._route)]

    async def start(self) -> None:
        self._unsubscribe = self.ctx.events.started.connect(self._call_started)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    # -- HTTP ----------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, max_body=MAX_BODY)
        except JsonBodyError as exc:
            return exc.response()
        try:
            req = parse_route_request(body)
        except RouteRequestError as exc:
            return api_error(400, "bad_request", str(exc))
        try:
            variables = await self.route(req)
        except StoreError:
            log.exception("route: store failure")
            return api_error(503, "store_unavailable", "store unavailable")
        return web.json_response({"variables": variables})

    # -- the decision --------------------------------------------------------------

    def audiosocket_address(self) -> str:
        """This node's AudioSocket ``host:port`` as Asterisk should dial it."""
        return self.ctx.admission.advertised_audiosocket()

    async def route(self, req: RouteRequest) -> dict[str, str]:
        """Decide one inbound call; returns the channel variables (see module doc)."""
        admission = self.ctx.admission
        found = admission.resolve_did(req.did)
        if found is None:
            log.info("route: unknown DID (uniqueid %s)", req.uniqueid)
            return route_variables("unknown", fallback=self.settings.fallback_dial)
        tenant, agent = found
        fallback = agent.extra.get("fallback_dial", "") or self.settings.fallback_dial
        if fallback and not DIAL_RE.fullmatch(fallback):
            log.warning("route: agent %s has an invalid fallback_dial; ignored", agent.name)
            fallback = ""
        metadata = {"asterisk_uniqueid": req.uniqueid, "asterisk_channel": req.channel}
        try:
            admitted = await admission.admit(
                tenant, agent, direction="inbound", from_=clean_number(req.caller),
                to=normalize_e164(req.did) or "", metadata=metadata, call_metadata=metadata)
        except ValueError as exc:  # an id unusable in a path: refused before any slot
            log.error("route: tenant %s: %s: unavailable", tenant.id, exc)
            return route_variables("unavailable", fallback=fallback)
        except LimitExceeded:
            return route_variables("busy", tenant=tenant.id, agent=agent.name,
                                   fallback=fallback)
        call_id = admitted.call_id
        self._expect(call_id)
        log.info("route: call %s -> tenant %s, agent %s", call_id, tenant.id, agent.name)
        return route_variables(
            "ok", call_id=call_id, audiosocket=admitted.audiosocket,
            audiosocket_alt=self.settings.peer_audiosockets, tenant=tenant.id,
            agent=agent.name, record=bool(admitted.recording_file),
            recording_file=admitted.recording_file, fallback=fallback,
        )

    # -- unclaimed calls -----------------------------------------------------------

    def _expect(self, call_id: str) -> None:
        self.pending[call_id] = self.ctx.clock.monotonic() + self.ctx.registry.ttl
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        if not self.pending:
            self._timer = None
            return
        delay = max(0.0, min(self.pending.values()) - self.ctx.clock.monotonic()) + 0.05
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._sweep_and_rearm())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_and_rearm(self) -> None:
        try:
            await self.sweep()
        except StoreError:
            log.exception("routing sweep: store failure")
        if self._timer is None:
            self._arm()

    def _call_started(self, call: Call) -> None:
        self.pending.pop(call.call_id, None)

    async def sweep(self) -> int:
        """Close routed calls whose AudioSocket never came; returns how many."""
        now = self.ctx.clock.monotonic()
        expired = [cid for cid, deadline in self.pending.items() if deadline <= now]
        released = 0
        for cid in expired:
            if cid in self.ctx.calls or self.ctx.registry.is_registered(cid):
                continue  # connected meanwhile, or still claimable
            del self.pending[cid]
            if self.ctx.registry.lookup is not None:  # a shared store
                rec = await self.ctx.store.get_call(cid)
                if rec is not None and rec.last_alive_at is not None:
                    continue  # its AudioSocket reached another worker or node
            log.info("call %s: AudioSocket never connected; slot released", cid)
            await self.ctx.status.apply(cid, CallInput.VANISHED,
                                        {"reason": "audiosocket-never-connected"})
            await self.ctx.store.release_slot(cid)
            released += 1
        return released
