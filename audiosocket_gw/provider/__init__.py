"""The application's telephony library: one interface, Twilio or Asterisk behind it.

::

    from audiosocket_gw.provider import get_telephony_provider

    provider = get_telephony_provider()        # TELEPHONY_PROVIDER=twilio|asterisk|rollout
    call_id = provider.start_outbound_call(tenant_id, to, from_, metadata)

- ``TwilioProvider``: the old path (the official ``twilio`` SDK; the ``provider`` extra).
- ``AsteriskProvider``: the gateway's HTTP API (``/v1/calls``), standard library only.
  Not the gateway-internal ``audiosocket_gw.telephony.AsteriskProvider`` (AMI, inside
  the gateway process); same idea, other side of the HTTP API.
- ``RolloutProvider``: a sticky percentage of new calls to Asterisk, the rest (and every
  call the gateway cannot take) to Twilio; ``ProviderCounters`` counts both.
- ``AsyncProvider`` / ``get_async_telephony_provider()``: the asyncio variants.

Light by design: this subpackage imports nothing from the rest of ``audiosocket_gw``
and only the standard library at import time (``twilio`` when a ``TwilioProvider`` is
built, ``prometheus_client`` only in ``ProviderCounters.register_prometheus``), so an
app can install it next to its own code without the gateway's dependencies (numpy,
soundfile, panoramisk, websockets, prometheus_client, aiohttp).
"""

from __future__ import annotations

from .aio import AsyncProvider
from .asterisk_provider import AsteriskProvider, CircuitBreaker
from .base import (
    AsyncTelephonyProvider,
    CallOutcomeUnknown,
    ProviderCall,
    ProviderError,
    ProviderRecording,
    ProviderUnavailable,
    RequestRejected,
    TelephonyProvider,
    UnsupportedOperation,
    bucket,
    effective_percent,
    is_twilio_call_sid,
)
from .counters import ProviderCounters
from .factory import ENV_VARS, get_async_telephony_provider, get_telephony_provider
from .rollout import Decision, GatewayRolloutState, RolloutProvider
from .twilio_provider import TwilioProvider

__all__ = [
    "ENV_VARS",
    "AsteriskProvider",
    "AsyncProvider",
    "AsyncTelephonyProvider",
    "CallOutcomeUnknown",
    "CircuitBreaker",
    "Decision",
    "GatewayRolloutState",
    "ProviderCall",
    "ProviderCounters",
    "ProviderError",
    "ProviderRecording",
    "ProviderUnavailable",
    "RequestRejected",
    "RolloutProvider",
    "TelephonyProvider",
    "TwilioProvider",
    "UnsupportedOperation",
    "bucket",
    "effective_percent",
    "get_async_telephony_provider",
    "get_telephony_provider",
    "is_twilio_call_sid",
]
