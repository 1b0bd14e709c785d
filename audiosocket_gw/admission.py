"""The one admission path: a new call (inbound DID or outbound request) is admitted
here, and only here.

Steps, in order, each undone if a later one fails:

1. resolve the tenant and agent (``resolve_did`` for inbound, ``resolve_outbound``);
2. take one of the tenant's limiter slots, atomically in the store (``LimitExceeded``
   when full: nothing else happens);
3. create the call record (inbound: ``ringing`` through the status writer; outbound:
   ``queued``);
4. pre-register the call id in the AudioSocket ``CallRegistry`` with the agent, so
   the AudioSocket Asterisk opens for it is accepted;
5. answer the advertised AudioSocket address (``advertised_audiosocket``) and the
   MixMonitor file when the agent records through Asterisk.

Routing (``POST /v1/route``) and the outbound provider both call ``admit``; the Twilio
REST API (``twilio/rest.py``) places calls through the provider, its per-call options
in ``call_metadata``. Errors: ``TelephonyError`` root; ``UnknownTenant``,
``UnknownAgent``, ``InvalidNumber`` (the request is wrong), ``LimitExceeded``
(retry later).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .ami_metrics import CallMetrics
from .callstate import CallInput
from .config import format_hostport
from .settings import RoutingSettings
from .store.base import CallRecord, CallStore, Direction
from .tenants import Agent, Tenant, TenantsConfig, normalize_e164

if TYPE_CHECKING:
    from .backends.base import CallInfo
    from .server import CallRegistry
    from .status import StatusWriter

__all__ = [
    "Admission",
    "Admitted",
    "InvalidNumber",
    "LimitExceeded",
    "TelephonyError",
    "UnknownAgent",
    "UnknownTenant",
    "recording_path",
]

log = logging.getLogger("audiosocket_gw.admission")

ID_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
"""Tenant and agent ids that may appear in paths and dialplan arguments."""


CALL_METADATA_KEY: Final = "call_metadata"
"""Record metadata key holding the call's own metadata when it differs from the
record's (see ``call_metadata_of``)."""


def call_metadata_of(record_metadata: Mapping[str, Any]) -> dict[str, str]:
    """The metadata a call travels with, from its record (another node's admission)."""
    own = record_metadata.get(CALL_METADATA_KEY)
    source = own if isinstance(own, Mapping) else record_metadata
    return {str(k): v for k, v in source.items() if isinstance(v, str)}


class TelephonyError(Exception):
    """Root of the errors placing or admitting a call."""


class UnknownTenant(TelephonyError):
    pass


class UnknownAgent(TelephonyError):
    pass


class InvalidNumber(TelephonyError):
    pass


class LimitExceeded(TelephonyError):
    """The tenant already has ``max_concurrent_calls`` calls."""


def safe_id(value: str) -> bool:
    return bool(ID_RE.fullmatch(value)) and value not in (".", "..")


def recording_path(recording_dir: str, tenant: str, call_id: str) -> str:
    """``{dir}/{tenant}/{call_id}.wav`` (docs/PROTOCOLS.md §5.3); validated ids."""
    if not safe_id(tenant):
        raise ValueError(f"tenant id {tenant!r} is not usable in a path")
    if str(uuid.UUID(call_id)) != call_id.lower():
        raise ValueError(f"call id {call_id!r} is not a canonical UUID")
    return f"{recording_dir.rstrip('/')}/{tenant}/{call_id}.wav"


@dataclass(frozen=True)
class Admitted:
    """A call that holds a slot, has a record and is expected on the AudioSocket."""

    call_id: str
    tenant: Tenant
    agent: Agent
    record: CallRecord
    info: CallInfo
    audiosocket: str
    recording_file: str
    """MixMonitor's file when the agent records through Asterisk, else ""."""


class Admission:
    def __init__(
        self,
        *,
        tenants: TenantsConfig,
        store: CallStore,
        status: StatusWriter,
        registry: CallRegistry,
        call_info: Callable[..., CallInfo],
        routing: RoutingSettings,
        metrics: CallMetrics,
        clock: Callable[[], float],
        bound_audiosocket: Callable[[], tuple[str, int]],
        node_id: str | None = None,
    ) -> None:
        self.node_id = node_id
        """Recorded on every call this node admits (``AIGW_NODE_ID``)."""
        self.tenants = tenants
        self.store = store
        self.status = status
        self.registry = registry
        self.call_info = call_info
        self.routing = routing
        self.metrics = metrics
        self.clock = clock
        self._bound = bound_audiosocket

    # -- resolution ------------------------------------------------------------------

    def resolve_did(self, did: str) -> tuple[Tenant, Agent] | None:
        number = self.tenants.lookup_did(did)
        agent = self.tenants.agent(number.agent) if number is not None else None
        if agent is None:
            return None
        return self.tenants.tenant_of(agent), agent

    def resolve_outbound(self, tenant_id: str, agent: str | None) -> tuple[Tenant, Agent]:
        tenant = self.tenants.tenants.get(tenant_id)
        if tenant is None:
            raise UnknownTenant(f"unknown tenant {tenant_id!r}")
        if agent is None:
            cfg = next((a for a in self.tenants.agents.values() if a.tenant == tenant_id), None)
            if cfg is None:
                raise UnknownAgent(f"tenant {tenant_id!r} has no agent")
            return tenant, cfg
        cfg = self.tenants.agents.get(agent)
        if cfg is None or cfg.tenant != tenant_id:
            raise UnknownAgent(f"unknown agent {agent!r} for tenant {tenant_id!r}")
        return tenant, cfg

    # -- addresses -------------------------------------------------------------------

    def advertised_audiosocket(self) -> str:
        """This node's AudioSocket ``host:port`` as Asterisk should dial it."""
        if self.routing.advertise_audiosocket:
            return self.routing.advertise_audiosocket
        host, port = self._bound()
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return format_hostport(host, port)

    def recording_file(self, tenant: Tenant, agent: Agent, call_id: str) -> str:
        if not (agent.record and agent.recording_source == "mixmonitor"):
            return ""
        return recording_path(self.routing.recording_dir, tenant.id, call_id)

    # -- the admission ---------------------------------------------------------------

    async def admit(
        self,
        tenant: Tenant,
        agent: Agent,
        *,
        direction: Direction,
        from_: str,
        to: str,
        metadata: Mapping[str, Any] | None = None,
        call_metadata: Mapping[str, str] | None = None,
        call_id: str | None = None,
    ) -> Admitted:
        """Take a slot, create the record, pre-register the id (see the module doc).

        ``metadata`` is stored with the record; ``call_metadata`` travels with the
        call to its backend (Twilio custom parameters, Asterisk ids).
        """
        call_id = call_id or str(uuid.uuid4())
        # Before taking a slot: a refused path (ValueError) must not leak one.
        recording_file = self.recording_file(tenant, agent, call_id)
        if not await self.store.try_acquire_slot(tenant.id, call_id,
                                                 tenant.max_concurrent_calls):
            self.metrics.limiter_rejections.labels(tenant.id, direction).inc()
            log.info("admission: tenant %s at its limit (%d)", tenant.id,
                     tenant.max_concurrent_calls)
            raise LimitExceeded(
                f"tenant {tenant.id!r} is at its limit of {tenant.max_concurrent_calls} calls")
        now = self.clock()
        stored = {str(k): v for k, v in (metadata or {}).items()}
        if call_metadata and dict(call_metadata) != stored:
            # What travels with the call, kept with the record too: another worker or
            # node that receives the call's AudioSocket rebuilds it from the store.
            stored[CALL_METADATA_KEY] = dict(call_metadata)
        try:
            record = CallRecord(
                id=call_id, tenant=tenant.id, agent=agent.name, direction=direction,
                from_=from_, to=to, created_at=now, node_id=self.node_id,
                metadata=stored)
            await self.store.create_call(record)
            self.metrics.calls_by_status.labels(tenant.id, direction,
                                                record.status.value).inc()
            if direction == "inbound":
                after = await self.status.apply(call_id, CallInput.ROUTED_INBOUND, at=now)
                if after is not None:
                    record = after
            else:
                self.metrics.tenant_active_calls.labels(tenant.id).set(
                    await self.store.active_slots(tenant.id))
        except BaseException:
            await self.store.release_slot(call_id)
            raise
        info = self.call_info(agent, call_id, direction=direction, from_=from_, to=to)
        if call_metadata:
            info = dataclasses.replace(info, metadata=dict(call_metadata))
        self.registry.register(info)
        return Admitted(call_id=call_id, tenant=tenant, agent=agent, record=record, info=info,
                        audiosocket=self.advertised_audiosocket(),
                        recording_file=recording_file)


def clean_number(s: str) -> str:
    """A number for the call record: E.164 when it is one, else printable and short."""
    e164 = normalize_e164(s)
    if e164 is not None:
        return e164
    return "".join(c for c in s if c.isprintable())[:64]
