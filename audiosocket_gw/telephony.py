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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .admission import (
    InvalidNumber,
    LimitExceeded,
    TelephonyError,
    UnknownAgent,
    UnknownTenant,
)
from .ami.client import AmiClient, AmiClientError
from .callstate import ACTIVE, CallInput, CallStatus
from .routing import originate_variables
from .settings import OutboundSettings
from .store.base import CallRecord
from .tenants import normalize_e164
from .twilio.callopts import CallOptions

if TYPE_CHECKING:
    from .ami.tracker import CallTracker
    from .ami_metrics import CallMetrics
    from .context import GatewayContext

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


def _amd_timeout(raw: str) -> float:
    """Twilio's ``MachineDetectionTimeout`` (3..59 s, default 30)."""
    try:
        return float(min(59, max(3, int(raw))))
    except ValueError:
        return 30.0


class ProviderUnavailable(TelephonyError):
    """The PBX cannot be reached (AMI not configured or disconnected)."""


class OriginateRejected(TelephonyError):
    """Asterisk refused the Originate action."""


class TelephonyProvider(Protocol):
    """Place, end and look up calls."""

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None, *,
                                  agent: str | None = None,
                                  ring_timeout_s: float | None = None,
                                  call_metadata: Mapping[str, str] | None = None) -> str:
        """Place a call; returns its id (status ``queued``). ``call_metadata`` travels
        with the call to its backend session (``CallInfo.metadata``)."""

    async def hangup(self, call_id: str) -> CallRecord | None:
        """End a call (cancel if not answered yet); the call after, None if unknown."""

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call as stored, or None."""


class AsteriskProvider:
    """``TelephonyProvider`` over AMI ``Originate`` (see the module docstring)."""

    def __init__(
        self,
        ctx: GatewayContext,
        client: AmiClient | None,
        tracker: CallTracker,
        metrics: CallMetrics,
        settings: OutboundSettings,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.tracker = tracker
        self.metrics = metrics
        self.settings = settings

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None, *,
                                  agent: str | None = None,
                                  ring_timeout_s: float | None = None,
                                  call_metadata: Mapping[str, str] | None = None) -> str:
        admission = self.ctx.admission
        tenant, agent_cfg = admission.resolve_outbound(tenant_id, agent)
        to_e164 = normalize_e164(to)
        from_e164 = normalize_e164(from_) if from_ else ""
        if to_e164 is None or from_e164 is None:
            raise InvalidNumber("'to' and 'from' must be phone numbers (E.164)")
        if ring_timeout_s is not None and not 1 <= ring_timeout_s <= 600:
            raise InvalidNumber("'timeout' must be within 1..600 seconds")
        client = self.client
        if client is None or not client.connected:
            raise ProviderUnavailable("AMI is not connected")
        admitted = await admission.admit(
            tenant, agent_cfg, direction="outbound", from_=from_e164, to=to_e164,
            metadata=metadata, call_metadata=call_metadata)
        call_id = admitted.call_id
        opts = CallOptions.from_metadata(call_metadata or {})
        amd_s = agent_cfg.voicemail_budget_s
        if opts.machine_detection and amd_s <= 0:  # asked per call (Twilio MachineDetection)
            amd_s = _amd_timeout(opts.machine_detection_timeout)
        # Everything [aigw-outbound] reads: the bridge, AMD with the agent's budget
        # (Asterisk's totalAnalysisTime), the voicemail action and the recording.
        variables = originate_variables(
            call_id=call_id,
            audiosocket=admitted.audiosocket,
            audiosocket_alt=self.ctx.settings.routing.peer_audiosockets,
            tenant=tenant.id,
            agent=agent_cfg.name,
            record=bool(admitted.recording_file),
            recording_file=admitted.recording_file,
            amd=amd_s > 0,
            amd_ms=int(min(60.0, max(0.5, amd_s)) * 1000),
            voicemail_action=agent_cfg.voicemail_action,
        )
        ring = self.settings.ring_timeout_s if ring_timeout_s is None else ring_timeout_s
        try:
            await client.originate(
                channel=self.settings.dial_template.format(to=to_e164),
                channel_id=call_id,
                context=self.settings.context,
                exten="s",
                timeout_ms=int(ring * 1000),
                caller_id=from_e164 or None,
                variables=variables,
            )
        except AmiClientError as exc:
            self.ctx.registry.discard(call_id)
            await self.ctx.status.apply(call_id, CallInput.ORIGINATE_FAILED,
                                        {"reason": "originate-rejected", "error": str(exc)})
            log.warning("call %s: Originate refused: %s", call_id, exc)
            raise OriginateRejected(str(exc)) from exc
        await self.ctx.status.apply(call_id, CallInput.ORIGINATE_QUEUED, {"source": "api"})
        log.info("call %s: originated (tenant %s, agent %s)", call_id, tenant.id,
                 agent_cfg.name)
        return call_id

    async def hangup(self, call_id: str) -> CallRecord | None:
        store = self.ctx.store
        rec = await store.get_call(call_id)
        if rec is None or rec.is_terminal:
            return rec
        live = self.ctx.calls.get(call_id)
        if live is not None:
            live.hangup("api-hangup")  # the tracker records it when the AudioSocket ends
        channel = self.tracker.channels.get(call_id)
        if rec.status in ACTIVE and rec.status is not CallStatus.IN_PROGRESS:
            await self.ctx.status.apply(call_id, CallInput.CANCELED, {"reason": "api-hangup"})
        elif live is None:
            await self.ctx.status.apply(call_id, CallInput.GATEWAY_HANGUP,
                                        {"reason": "api-hangup"})
        self.ctx.registry.discard(call_id)
        if channel and self.client is not None and self.client.connected:
            try:
                await self.client.hangup(channel)
            except AmiClientError as exc:
                log.info("call %s: AMI Hangup: %s", call_id, exc)
        return await store.get_call(call_id)

    async def get_call(self, call_id: str) -> CallRecord | None:
        return await self.ctx.store.get_call(call_id)
