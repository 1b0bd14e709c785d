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
   ``AIGW_RECORDING_FILE`` (PROTOCOLS.md 5: ``{dir}/{tenant}/{call_id}.wav``) and
   ``AIGW_FALLBACK`` (a dial string for when the AI leg is unavailable, or empty).

Every value returned is built from our own configuration, never from the request:
caller ID and DID are attacker-controlled and must not reach the dialplan. They are
stored with the call (``from``/``to``) but never logged at info level.

Slots: a routed call holds its tenant's slot from routing on. If its AudioSocket
never arrives (the caller hung up during the AGI, the dialplan fell back), the slot
is released once the registry entry has expired (``CallRegistry.ttl``), and the call
is closed as failed. When the AudioSocket call ends, this component applies the end
to the store (which releases the slot): the AMI tracker may apply the same end too,
the state machine absorbs the duplicate.

The pure part (``parse_route_request``, ``route_variables``, ``recording_path``) has
no I/O; ``RoutingComponent`` is the thin aiohttp/asyncio shell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .callstate import CallInput
from .config import ConfigError, format_hostport, parse_hostport
from .store.base import CallRecord, StoreError
from .tenants import normalize_e164

if TYPE_CHECKING:
    from .app import Gateway
    from .call import Call

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
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # as tenants.py
_DIAL_RE: Final = re.compile(r"[A-Za-z0-9]{1,16}/[A-Za-z0-9@_.+:/-]{1,200}")
_DIR_RE: Final = re.compile(r"/[A-Za-z0-9_./-]{0,200}")
STATUSES: Final = ("ok", "busy", "unknown")

DEFAULT_RECORDING_DIR: Final = "/var/spool/asterisk/monitor"

ROUTE_VARIABLES: Final = (
    "AIGW_STATUS", "AIGW_CALL_ID", "AIGW_AUDIOSOCKET", "AIGW_TENANT", "AIGW_AGENT",
    "AIGW_RECORD", "AIGW_RECORDING_FILE", "AIGW_FALLBACK",
)
"""What ``POST /v1/route`` returns and the AGI script sets on an inbound channel."""

ORIGINATE_VARIABLES: Final = (
    "AIGW_CALL_ID", "AIGW_AUDIOSOCKET", "AIGW_TENANT", "AIGW_AGENT", "AIGW_RECORD",
    "AIGW_RECORDING_FILE", "AIGW_AMD", "AIGW_AMD_MS", "AIGW_VOICEMAIL_ACTION",
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


@dataclass(frozen=True)
class RoutingSettings:
    """Per-process routing settings, from the environment (see ``.env.example``).

    ``advertise_audiosocket``: the ``host:port`` Asterisk dials (env
    ``AIGW_ADVERTISE_AUDIOSOCKET``, else ``AIGW_AUDIOSOCKET_PUBLIC``, which the
    outbound API reads; default: the bound address, with a wildcard
    host replaced by 127.0.0.1). ``recording_dir``: where MixMonitor writes (env
    ``AIGW_MIXMONITOR_DIR``). ``fallback_dial``: default dial string for the AI leg's
    fallback (env ``AIGW_FALLBACK_DIAL``; an agent's ``extra.fallback_dial`` wins).
    """

    advertise_audiosocket: str | None = None
    recording_dir: str = DEFAULT_RECORDING_DIR
    fallback_dial: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RoutingSettings:
        """Read and validate; ``ConfigError`` names the variable on a bad value."""
        env = os.environ if env is None else env
        name = "AIGW_ADVERTISE_AUDIOSOCKET"
        adv = env.get(name) or None
        if adv is None and env.get("AIGW_AUDIOSOCKET_PUBLIC"):
            name = "AIGW_AUDIOSOCKET_PUBLIC"  # the outbound API's name for the same thing
            adv = env[name]
        if adv is not None:
            host, port = parse_hostport(adv, setting=name)
            if port == 0 or host in ("0.0.0.0", "::", ""):
                raise ConfigError(f"{name}: needs a concrete host and port")
            adv = format_hostport(host, port)
        rec = (env.get("AIGW_MIXMONITOR_DIR") or DEFAULT_RECORDING_DIR).rstrip("/") or "/"
        if not _DIR_RE.fullmatch(rec) or ".." in rec.split("/"):
            raise ConfigError(
                "AIGW_MIXMONITOR_DIR: an absolute path of A-Z a-z 0-9 _ . - / without '..'"
            )
        fb = env.get("AIGW_FALLBACK_DIAL") or ""
        if fb and not _DIAL_RE.fullmatch(fb):
            raise ConfigError(
                "AIGW_FALLBACK_DIAL: a dial string like PJSIP/100 or PJSIP/+15551230000@trunk "
                "(no commas, spaces, quotes, & or ${})"
            )
        return cls(advertise_audiosocket=adv, recording_dir=rec, fallback_dial=fb)


def parse_route_request(body: bytes) -> RouteRequest:
    """Decode and bound a request body; raise ``RouteRequestError`` on anything odd.

    Fields must be strings within ``_FIELD_LIMITS`` without control characters;
    missing ``caller``/``uniqueid``/``channel`` become "" (``did`` is required).
    """
    if len(body) > MAX_BODY:
        raise RouteRequestError(f"body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RouteRequestError("body is not JSON") from None
    if not isinstance(data, dict):
        raise RouteRequestError("body must be a JSON object")
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


def recording_path(recording_dir: str, tenant: str, call_id: str) -> str:
    """``{dir}/{tenant}/{call_id}.wav`` (PROTOCOLS.md 5); all parts are validated ids."""
    if not _ID_RE.fullmatch(tenant) or tenant in (".", ".."):
        raise ValueError(f"tenant id {tenant!r} is not usable in a path")
    if str(uuid.UUID(call_id)) != call_id.lower():
        raise ValueError(f"call id {call_id!r} is not a canonical UUID")
    return f"{recording_dir.rstrip('/')}/{tenant}/{call_id}.wav"


def route_variables(
    status: str,
    *,
    call_id: str = "",
    audiosocket: str = "",
    tenant: str = "",
    agent: str = "",
    record: bool = False,
    recording_file: str = "",
    fallback: str = "",
) -> dict[str, str]:
    """The ``AIGW_*`` channel variables of one answer (every key always present)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {
        "AIGW_STATUS": status,
        "AIGW_CALL_ID": call_id,
        "AIGW_AUDIOSOCKET": audiosocket,
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
    record: bool = False,
    recording_file: str = "",
    amd: bool = True,
    amd_ms: int = 5000,
    voicemail_action: str = "hangup",
) -> dict[str, str]:
    """The channel variables an AMI ``Originate`` into ``[aigw-outbound]`` must set.

    ``amd``: run Asterisk's ``AMD()`` before the bridge, for at most ``amd_ms``
    (its totalAnalysisTime; AMD blocks the channel, PROTOCOLS.md 4). On ``MACHINE``
    with ``voicemail_action`` "hangup" the dialplan hangs up; with "leave_message"
    the bot is connected anyway. Values are checked: they end up in app arguments.
    """
    uuid.UUID(call_id)
    host, port = parse_hostport(audiosocket, setting="audiosocket")
    if not _ID_RE.fullmatch(tenant) or not _ID_RE.fullmatch(agent):
        raise ValueError("tenant and agent must be [A-Za-z0-9_.-] ids")
    if recording_file and not (_DIR_RE.fullmatch(recording_file) and ".." not in
                               recording_file.split("/")):
        raise ValueError("recording_file must be a safe absolute path")
    if voicemail_action not in ("hangup", "leave_message"):
        raise ValueError("voicemail_action must be hangup or leave_message")
    if not 500 <= amd_ms <= 60000:
        raise ValueError("amd_ms must be within 500..60000")
    return {
        "AIGW_CALL_ID": call_id,
        "AIGW_AUDIOSOCKET": format_hostport(host, port),
        "AIGW_TENANT": tenant,
        "AIGW_AGENT": agent,
        "AIGW_RECORD": "1" if record and recording_file else "0",
        "AIGW_RECORDING_FILE": recording_file if record else "",
        "AIGW_AMD": "1" if amd else "0",
        "AIGW_AMD_MS": str(int(amd_ms)),
        "AIGW_VOICEMAIL_ACTION": voicemail_action,
    }


def _clean_number(s: str) -> str:
    """A number for the call record: E.164 when it is one, else printable and short."""
    e164 = normalize_e164(s)
    if e164 is not None:
        return e164
    return "".join(c for c in s if c.isprintable())[:64]


class RoutingComponent:
    """``POST /v1/route`` on the gateway's HTTP app, plus slot bookkeeping.

    ``clock`` stamps store records (epoch seconds); ``monotonic`` drives expiry of
    routed calls whose AudioSocket never arrives (checked every ``sweep_interval``).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        settings: RoutingSettings | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sweep_interval: float = 5.0,
    ) -> None:
        self.gw = gateway
        self.settings = settings if settings is not None else RoutingSettings.from_env()
        self._clock = clock
        self._monotonic = monotonic
        self.sweep_interval = sweep_interval
        # call id -> monotonic deadline after which an unclaimed call is released
        self.pending: dict[str, float] = {}
        # call ids routed here whose AudioSocket is connected
        self.connected: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        gateway.http_app.router.add_post("/v1/route", self._route)
        gateway.audiosocket.on_call_start.append(self._call_started)
        gateway.audiosocket.on_call_end.append(self._call_ended)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    # -- HTTP ----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        token = self.gw.config.api_token
        if not token:
            return True
        got = request.headers.get("Authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    async def _route(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(
                {"error": "unauthorized"}, status=401,
                headers={"WWW-Authenticate": 'Bearer realm="audiosocket-gw"'},
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        body = await request.content.read(MAX_BODY + 1)
        try:
            req = parse_route_request(body)
        except RouteRequestError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            variables = await self.route(req)
        except StoreError:
            log.exception("route: store failure")
            return web.json_response({"error": "store unavailable"}, status=503)
        return web.json_response({"variables": variables})

    # -- the decision --------------------------------------------------------------

    def audiosocket_address(self) -> str:
        """This node's AudioSocket ``host:port`` as Asterisk should dial it."""
        if self.settings.advertise_audiosocket:
            return self.settings.advertise_audiosocket
        host, port = self.gw.audiosocket.address
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return format_hostport(host, port)

    async def route(self, req: RouteRequest) -> dict[str, str]:
        """Decide one inbound call; returns the channel variables (see module doc)."""
        tenants = self.gw.tenants
        number = tenants.lookup_did(req.did)
        agent = tenants.agent(number.agent) if number is not None else None
        if number is None or agent is None:
            log.info("route: unknown DID (uniqueid %s)", req.uniqueid)
            return route_variables("unknown", fallback=self.settings.fallback_dial)
        tenant = tenants.tenant_of(agent)
        fallback = agent.extra.get("fallback_dial", "") or self.settings.fallback_dial
        if fallback and not _DIAL_RE.fullmatch(fallback):
            log.warning("route: agent %s has an invalid fallback_dial; ignored", agent.name)
            fallback = ""
        call_id = str(uuid.uuid4())
        record = agent.record and agent.recording_source == "mixmonitor"
        try:  # before taking a slot: a refused path must not leak one (or answer 500)
            rec_file = recording_path(self.settings.recording_dir, tenant.id, call_id)
        except ValueError as exc:
            log.error("route: tenant %s: %s: unavailable", tenant.id, exc)
            return route_variables("unavailable", fallback=fallback)
        store = self.gw.store
        if not await store.try_acquire_slot(tenant.id, call_id, tenant.max_concurrent_calls):
            log.info("route: tenant %s at its limit (%d): busy", tenant.id,
                     tenant.max_concurrent_calls)
            return route_variables("busy", tenant=tenant.id, agent=agent.name,
                                   fallback=fallback)
        now = self._clock()
        to = normalize_e164(req.did) or ""
        from_ = _clean_number(req.caller)
        metadata = {"asterisk_uniqueid": req.uniqueid, "asterisk_channel": req.channel}
        try:
            await store.create_call(CallRecord(
                id=call_id, tenant=tenant.id, agent=agent.name, direction="inbound",
                from_=from_, to=to, created_at=now, metadata=dict(metadata),
            ))
            await store.apply_input(call_id, CallInput.ROUTED_INBOUND, now)
        except BaseException:
            await store.release_slot(call_id)
            raise
        info = self.gw.agent_info(agent, call_id, direction="inbound", from_=from_, to=to)
        self.gw.registry.register(dataclasses.replace(info, metadata=metadata))
        self.pending[call_id] = self._monotonic() + self.gw.registry.ttl
        log.info("route: call %s -> tenant %s, agent %s", call_id, tenant.id, agent.name)
        return route_variables(
            "ok", call_id=call_id, audiosocket=self.audiosocket_address(), tenant=tenant.id,
            agent=agent.name, record=record, recording_file=rec_file if record else "",
            fallback=fallback,
        )

    # -- slot bookkeeping ----------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call_started(self, call: Call) -> None:
        cid = call.call_id
        if self.pending.pop(cid, None) is None:
            return
        self.connected.add(cid)
        self._spawn(self._apply(cid, CallInput.ANSWERED, None))

    def _call_ended(self, call: Call) -> None:
        cid = call.call_id
        if cid not in self.connected:
            return
        self.connected.discard(cid)
        reason = call.end_reason or "unknown"
        inp = (CallInput.AUDIOSOCKET_EOF if reason == "caller-hangup"
               else CallInput.GATEWAY_HANGUP)
        self._spawn(self._apply(cid, inp, {"reason": reason}))

    async def _apply(self, call_id: str, inp: CallInput, detail: dict[str, Any] | None) -> None:
        try:
            rec = await self.gw.store.apply_input(call_id, inp, self._clock(), detail)
            if rec is not None and rec.is_terminal:
                await self.gw.store.release_slot(call_id)
        except StoreError:
            log.exception("call %s: store failure applying %s", call_id, inp.value)

    async def sweep(self) -> int:
        """Release routed calls whose AudioSocket never came; returns how many."""
        now = self._monotonic()
        expired = [cid for cid, deadline in self.pending.items() if deadline <= now]
        released = 0
        for cid in expired:
            if cid in self.gw.audiosocket.calls or self.gw.registry.is_registered(cid):
                continue  # connected meanwhile, or still claimable
            del self.pending[cid]
            log.info("call %s: AudioSocket never connected; slot released", cid)
            await self._apply(cid, CallInput.VANISHED, {"reason": "audiosocket-never-connected"})
            await self.gw.store.release_slot(cid)
            released += 1
        return released

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except StoreError:
                log.exception("routing sweep: store failure")
