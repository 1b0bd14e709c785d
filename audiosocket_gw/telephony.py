"""Telephony providers: place, end and look up calls, independent of the PBX.

``TelephonyProvider`` is the interface the HTTP API, the CLI and Python users call;
``AsteriskProvider`` implements it over AMI (docs/PROTOCOLS.md §2.7):

1. the tenant's limiter slot first (atomic in the store): over the limit the call is
   refused with ``LimitExceeded`` and nothing else happens;
2. a ``queued`` outbound record in the store;
3. the call id pre-registered in the AudioSocket ``CallRegistry`` with its agent, so
   the AudioSocket that the outbound dialplan opens is accepted;
4. AMI ``Originate`` with ``Async: true``, ``ChannelId`` = the call id, variables
   ``AIGW_CALL_ID``, ``AIGW_TENANT``, ``AIGW_AGENT``, ``AIGW_AUDIOSOCKET`` (the
   gateway's AudioSocket address as Asterisk should dial it), into ``[aigw-outbound]``.
   The ``OriginateResponse`` reaches the tracker, which maps its ``Reason`` to the
   status through ``callstate``. A refused Originate ends the call as ``failed``
   (slot released) and raises ``OriginateRejected``.

Errors: ``TelephonyError`` root; ``UnknownTenant``/``UnknownAgent``/``InvalidNumber``
(the request is wrong), ``LimitExceeded`` (retry later), ``ProviderUnavailable``
(AMI is down), ``OriginateRejected``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .ami.client import AmiClient, AmiClientError
from .callstate import ACTIVE, CallInput, CallStatus
from .config import format_hostport
from .routing import RoutingSettings, originate_variables, recording_path
from .store.base import CallRecord
from .tenants import normalize_e164

if TYPE_CHECKING:
    from .ami.tracker import CallTracker
    from .ami_metrics import CallMetrics
    from .app import Gateway

log = logging.getLogger("audiosocket_gw.telephony")

__all__ = [
    "AsteriskProvider",
    "InvalidNumber",
    "LimitExceeded",
    "OriginateRejected",
    "ProviderUnavailable",
    "TelephonyError",
    "TelephonyProvider",
    "UnknownAgent",
    "UnknownTenant",
]


class TelephonyError(Exception):
    """Root of the provider errors."""


class UnknownTenant(TelephonyError):
    pass


class UnknownAgent(TelephonyError):
    pass


class InvalidNumber(TelephonyError):
    pass


class LimitExceeded(TelephonyError):
    """The tenant already has ``max_concurrent_calls`` calls."""


class ProviderUnavailable(TelephonyError):
    """The PBX cannot be reached (AMI not configured or disconnected)."""


class OriginateRejected(TelephonyError):
    """Asterisk refused the Originate action."""


class TelephonyProvider(Protocol):
    """Place, end and look up calls."""

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None, *,
                                  agent: str | None = None) -> str:
        """Place a call; returns its id (status ``queued``)."""

    async def hangup(self, call_id: str) -> CallRecord | None:
        """End a call (cancel if not answered yet); the call after, None if unknown."""

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call as stored, or None."""


class AsteriskProvider:
    """``TelephonyProvider`` over AMI ``Originate`` (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        client: AmiClient | None,
        tracker: CallTracker,
        metrics: CallMetrics,
        *,
        context: str = "aigw-outbound",
        dial_template: str = "PJSIP/{to}@aigw-trunk",
        originate_timeout_ms: int = 30_000,
        audiosocket_address: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway
        self.client = client
        self.tracker = tracker
        self.metrics = metrics
        self.context = context
        self.dial_template = dial_template
        self.originate_timeout_ms = originate_timeout_ms
        self.audiosocket_address = audiosocket_address
        self.clock = clock

    def _audiosocket_target(self) -> str:
        if self.audiosocket_address:
            return self.audiosocket_address
        host, port = self.gateway.audiosocket.address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return format_hostport(host, port)

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None, *,
                                  agent: str | None = None) -> str:
        tenants = self.gateway.tenants
        tenant = tenants.tenants.get(tenant_id)
        if tenant is None:
            raise UnknownTenant(f"unknown tenant {tenant_id!r}")
        if agent is None:
            agent_cfg = next((a for a in tenants.agents.values() if a.tenant == tenant_id), None)
            if agent_cfg is None:
                raise UnknownAgent(f"tenant {tenant_id!r} has no agent")
        else:
            agent_cfg = tenants.agents.get(agent)
            if agent_cfg is None or agent_cfg.tenant != tenant_id:
                raise UnknownAgent(f"unknown agent {agent!r} for tenant {tenant_id!r}")
        to_e164 = normalize_e164(to)
        from_e164 = normalize_e164(from_) if from_ else ""
        if to_e164 is None or from_e164 is None:
            raise InvalidNumber("'to' and 'from' must be phone numbers (E.164)")
        client = self.client
        if client is None or not client.connected:
            raise ProviderUnavailable("AMI is not connected")
        store = self.gateway.store
        call_id = str(uuid.uuid4())
        if not await store.try_acquire_slot(tenant_id, call_id, tenant.max_concurrent_calls):
            self.metrics.limiter_rejections.labels(tenant_id, "outbound").inc()
            raise LimitExceeded(
                f"tenant {tenant_id!r} is at its limit of {tenant.max_concurrent_calls} calls")
        meta = {str(k): v for k, v in (metadata or {}).items()}
        try:
            await store.create_call(CallRecord(
                id=call_id, tenant=tenant_id, agent=agent_cfg.name, direction="outbound",
                from_=from_e164, to=to_e164, created_at=self.clock(), metadata=meta))
        except BaseException:
            await store.release_slot(call_id)
            raise
        self.metrics.calls_by_status.labels(tenant_id, "outbound", "queued").inc()
        self.metrics.tenant_active_calls.labels(tenant_id).set(
            await store.active_slots(tenant_id))
        self.gateway.registry.register(self.gateway.agent_info(
            agent_cfg, call_id, direction="outbound", from_=from_e164, to=to_e164))
        # Everything [aigw-outbound] reads: the bridge, AMD with the agent's budget
        # (Asterisk's totalAnalysisTime), the voicemail action and the recording.
        mixmonitor = agent_cfg.record and agent_cfg.recording_source == "mixmonitor"
        settings = RoutingSettings.from_env()
        variables = originate_variables(
            call_id=call_id,
            audiosocket=self._audiosocket_target(),
            tenant=tenant_id,
            agent=agent_cfg.name,
            record=mixmonitor,
            recording_file=recording_path(settings.recording_dir, tenant_id, call_id)
            if mixmonitor else "",
            amd=agent_cfg.voicemail_budget_s > 0,
            amd_ms=int(min(60.0, max(0.5, agent_cfg.voicemail_budget_s)) * 1000),
            voicemail_action=agent_cfg.voicemail_action,
        )
        try:
            await client.originate(
                channel=self.dial_template.format(to=to_e164),
                channel_id=call_id,
                context=self.context,
                exten="s",
                timeout_ms=self.originate_timeout_ms,
                caller_id=from_e164 or None,
                variables=variables,
            )
        except AmiClientError as exc:
            self.gateway.registry.discard(call_id)
            await self.tracker.apply(call_id, CallInput.ORIGINATE_FAILED,
                                     {"reason": "originate-rejected", "error": str(exc)})
            log.warning("call %s: Originate refused: %s", call_id, exc)
            raise OriginateRejected(str(exc)) from exc
        await self.tracker.apply(call_id, CallInput.ORIGINATE_QUEUED, {"source": "api"})
        log.info("call %s: originated (tenant %s, agent %s)", call_id, tenant_id,
                 agent_cfg.name)
        return call_id

    async def hangup(self, call_id: str) -> CallRecord | None:
        store = self.gateway.store
        rec = await store.get_call(call_id)
        if rec is None or rec.is_terminal:
            return rec
        live = self.gateway.audiosocket.calls.get(call_id)
        if live is not None:
            live.hangup("api-hangup")  # the tracker records it when the AudioSocket ends
        channel = self.tracker.channels.get(call_id)
        if rec.status in ACTIVE and rec.status is not CallStatus.IN_PROGRESS:
            await self.tracker.apply(call_id, CallInput.CANCELED, {"reason": "api-hangup"})
        elif live is None:
            await self.tracker.apply(call_id, CallInput.GATEWAY_HANGUP, {"reason": "api-hangup"})
        self.gateway.registry.discard(call_id)
        if channel and self.client is not None and self.client.connected:
            try:
                await self.client.hangup(channel)
            except AmiClientError as exc:
                log.info("call %s: AMI Hangup: %s", call_id, exc)
        return await store.get_call(call_id)

    async def get_call(self, call_id: str) -> CallRecord | None:
        return await self.gateway.store.get_call(call_id)
