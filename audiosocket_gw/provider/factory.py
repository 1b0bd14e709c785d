"""``get_telephony_provider()``: the provider the environment asks for.

This is app-side code: it reads its own environment variables (the gateway's
``settings.py`` rule does not apply to the app's process):

==============================  ==========================================================
``TELEPHONY_PROVIDER``          ``twilio`` (default) | ``asterisk`` | ``rollout``
``TELEPHONY_ROLLOUT_PERCENT``   0..100: pin the Asterisk share (unset: ask the gateway,
                                ``GET /v1/rollout``, what ``audiosocket-gw rollout`` set)
``TELEPHONY_ROLLOUT_TENANTS``   per-tenant overrides, ``acme=50,beta=0``
``TELEPHONY_ROLLOUT_STICKY``    ``to`` (default: per destination number) | ``tenant``
``TELEPHONY_TWILIO_VOICE_URL``  default TwiML URL of Twilio calls without ``url``/``twiml``
``TELEPHONY_TWILIO_API_URL``    the Twilio REST base URL (default https://api.twilio.com)
``AIGW_API_URL``                the gateway's HTTP API (default http://127.0.0.1:9094)
``AIGW_API_TOKEN``              its bearer token
``TWILIO_ACCOUNT_SID``          Twilio credentials (``twilio`` and ``rollout``)
``TWILIO_AUTH_TOKEN``
==============================  ==========================================================

``asterisk`` sends every call to the gateway, with no fallback (the end state of the
migration); ``rollout`` splits and falls back (see ``RolloutProvider``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .aio import AsyncProvider
from .asterisk_provider import AsteriskProvider
from .base import TelephonyProvider
from .counters import ProviderCounters
from .rollout import GatewayRolloutState, RolloutProvider
from .twilio_provider import TwilioProvider

__all__ = ["DEFAULT_API_URL", "ENV_VARS", "get_async_telephony_provider",
           "get_telephony_provider"]

DEFAULT_API_URL = "http://127.0.0.1:9094"
ENV_VARS = frozenset({
    "TELEPHONY_PROVIDER", "TELEPHONY_ROLLOUT_PERCENT", "TELEPHONY_ROLLOUT_TENANTS",
    "TELEPHONY_ROLLOUT_STICKY", "TELEPHONY_TWILIO_VOICE_URL", "TELEPHONY_TWILIO_API_URL",
    "AIGW_API_URL", "AIGW_API_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
})
"""Every environment variable the provider library reads."""


def _percent(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}: expected a whole number 0..100, got {raw!r}") from None
    if not 0 <= value <= 100:
        raise ValueError(f"{name}: must be within 0..100, got {value}")
    return value


def _overrides(raw: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, pct = item.partition("=")
        if not sep or not tenant.strip():
            raise ValueError(f"TELEPHONY_ROLLOUT_TENANTS: expected tenant=percent, got {item!r}")
        out[tenant.strip()] = _percent("TELEPHONY_ROLLOUT_TENANTS", pct)
    return out


def _twilio(env: Mapping[str, str]) -> TwilioProvider:
    sid, token = env.get("TWILIO_ACCOUNT_SID", ""), env.get("TWILIO_AUTH_TOKEN", "")
    if not sid or not token:
        raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required for the "
                         "Twilio path")
    return TwilioProvider(sid, token, api_base_url=env.get("TELEPHONY_TWILIO_API_URL") or None,
                          default_url=env.get("TELEPHONY_TWILIO_VOICE_URL") or None)


def _asterisk(env: Mapping[str, str]) -> AsteriskProvider:
    return AsteriskProvider(env.get("AIGW_API_URL") or DEFAULT_API_URL,
                            env.get("AIGW_API_TOKEN") or None)


def get_telephony_provider(env: Mapping[str, str] | None = None, *,
                           counters: ProviderCounters | None = None) -> TelephonyProvider:
    """The sync provider ``TELEPHONY_PROVIDER`` names (``ValueError`` on a bad setting)."""
    env = os.environ if env is None else env
    kind = (env.get("TELEPHONY_PROVIDER") or "twilio").strip().lower()
    if kind == "twilio":
        return _twilio(env)
    if kind == "asterisk":
        return _asterisk(env)
    if kind == "rollout":
        gateway = _asterisk(env)
        raw_pct = env.get("TELEPHONY_ROLLOUT_PERCENT", "").strip()
        sticky = (env.get("TELEPHONY_ROLLOUT_STICKY") or "to").strip()
        if sticky not in ("to", "tenant"):
            raise ValueError(f"TELEPHONY_ROLLOUT_STICKY: 'to' or 'tenant', got {sticky!r}")
        return RolloutProvider(
            gateway, _twilio(env),
            percent=_percent("TELEPHONY_ROLLOUT_PERCENT", raw_pct) if raw_pct else None,
            overrides=_overrides(env.get("TELEPHONY_ROLLOUT_TENANTS", "")),
            sticky="to" if sticky == "to" else "tenant",
            state=None if raw_pct else GatewayRolloutState(gateway),
            counters=counters,
        )
    raise ValueError(f"TELEPHONY_PROVIDER: twilio | asterisk | rollout, got {kind!r}")


def get_async_telephony_provider(env: Mapping[str, str] | None = None, *,
                                 counters: ProviderCounters | None = None) -> AsyncProvider:
    """The asyncio variant of ``get_telephony_provider``."""
    return AsyncProvider(get_telephony_provider(env, counters=counters))
