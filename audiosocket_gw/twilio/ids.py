"""Twilio identities: every SID the gateway shows an app, and the account's auth token.

Why: a Twilio app correlates what it receives by SID: the voice webhook, the Media Streams
``start``/``stop``, every call status callback and the recording status callback of one
call carry the same ``CallSid`` and ``AccountSid``, and apps key their state (and match a
recording to its call) by them. Deriving each SID in one place, one way, from what the
gateway already knows (the call id, the tenant) keeps every sender in agreement without
shared state, across restarts and between the gateway and the standalone recording worker.
This module is that one place; nothing else builds a SID or picks an auth token.

Shape: a two-letter uppercase type prefix + 32 lowercase hex digits, exactly Twilio's.

* ``CallSid`` (``CA``), ``StreamSid`` (``MZ``), ``RecordingSid`` (``RE``): the prefix + the
  call id's UUID as 32 hex digits (so :func:`call_id_for_sid` maps any of them back to the
  call; the gateway has at most one stream and one recording per call). A call id that is
  not a UUID gets the first 32 hex digits of its SHA-256 instead (not reversible).
* ``AccountSid`` (``AC``), per tenant (:func:`account_sid_for`): the agent extra
  ``account_sid`` (an agent imported from another Twilio account), else the tenant's
  ``twilio_account_sid`` (tenants TOML), else the environment's ``AIGW_TWILIO_ACCOUNT_SID``,
  else :func:`derived_account_sid` of the tenant id (stable across restarts).
* Auth token (:func:`auth_token_for`), the key of ``X-Twilio-Signature`` on every request
  to the app, read from the environment variable named by, in order: the agent extra
  ``auth_token_env``, the tenant's ``twilio_auth_token_env``, else ``AIGW_TWILIO_AUTH_TOKEN``.
  A named variable that is unset means unsigned requests (never another account's token).

Pure: no I/O; the environment is passed in.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Final, Protocol


class Agent(Protocol):
    """What identity derivation reads of an agent (``tenants.Agent``)."""

    @property
    def extra(self) -> Mapping[str, str]: ...


class Tenant(Protocol):
    """What identity derivation reads of a tenant (``tenants.Tenant``); a protocol so
    that ``tenants`` can import this module to validate SIDs without a cycle."""

    @property
    def twilio_account_sid(self) -> str | None: ...

    @property
    def twilio_auth_token_env(self) -> str | None: ...

__all__ = [
    "ACCOUNT_PREFIX",
    "ACCOUNT_SID_ENV",
    "AUTH_TOKEN_ENV",
    "CALL_PREFIX",
    "RECORDING_PREFIX",
    "STREAM_PREFIX",
    "account_sid_for",
    "auth_token_for",
    "call_id_for_sid",
    "call_sid_for",
    "derived_account_sid",
    "is_sid",
    "recording_sid_for",
    "stream_sid_for",
]

STREAM_PREFIX: Final = "MZ"
"""Prefix of a Media Streams stream SID."""

CALL_PREFIX: Final = "CA"
"""Prefix of a call SID."""

RECORDING_PREFIX: Final = "RE"
"""Prefix of a recording SID."""

ACCOUNT_PREFIX: Final = "AC"
"""Prefix of an account SID."""

AUTH_TOKEN_ENV: Final = "AIGW_TWILIO_AUTH_TOKEN"
"""Environment variable with the auth token when neither agent nor tenant names one."""

ACCOUNT_SID_ENV: Final = "AIGW_TWILIO_ACCOUNT_SID"
"""Environment variable with the AccountSid of tenants that configure none."""

_PREFIX_RE = re.compile(r"[A-Z]{2}")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"SID prefix must be two uppercase ASCII letters, got {prefix!r}")


def is_sid(prefix: str, s: object) -> bool:
    """Return True if ``s`` is a string of the form ``prefix`` + 32 lowercase hex digits.

    Only the shape is checked. Anything that is not a ``str`` gives False.
    Raises ValueError if ``prefix`` is not two uppercase ASCII letters.
    """
    _check_prefix(prefix)
    if not isinstance(s, str) or len(s) != 34 or not s.startswith(prefix):
        return False
    return _HEX32_RE.fullmatch(s, 2) is not None


# -- call-scoped SIDs ---------------------------------------------------------------------


def _call_hex(call_id: str) -> str:
    try:
        return uuid.UUID(call_id).hex
    except ValueError:
        return hashlib.sha256(call_id.encode("utf-8")).hexdigest()[:32]


def call_sid_for(call_id: str) -> str:
    """The ``CallSid`` of gateway call ``call_id`` (``CA`` + 32 hex digits)."""
    return CALL_PREFIX + _call_hex(call_id)


def _indexed_hex(call_id: str, kind: str, index: int) -> str:
    if index == 0:
        return _call_hex(call_id)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    raw = f"{_call_hex(call_id)}:{kind}:{index}"
    return hashlib.sha256(raw.encode("ascii")).hexdigest()[:32]


def stream_sid_for(call_id: str, index: int = 0) -> str:
    """The ``streamSid`` of call ``call_id``'s Media Stream (``MZ`` + 32 hex digits).

    ``index`` 0 is the call's first stream (reversible with :func:`call_id_for_sid`);
    later streams of the same call (another ``<Connect><Stream>``, ``<Start><Stream>``
    forks) get ``index`` 1, 2... and a hashed, stable SID.
    """
    return STREAM_PREFIX + _indexed_hex(call_id, "stream", index)


def recording_sid_for(call_id: str, index: int = 0) -> str:
    """The ``RecordingSid`` of call ``call_id``'s recording (``RE`` + 32 hex digits).

    ``index`` 0 is the whole-call recording; TwiML ``<Record>`` takes ``index`` 1, 2...
    (a hashed, stable SID per recording of the call).
    """
    return RECORDING_PREFIX + _indexed_hex(call_id, "recording", index)


def call_id_for_sid(sid: str) -> str | None:
    """The call id behind a ``CA``/``MZ``/``RE`` SID made here, or None.

    Only UUID call ids can be recovered (others are hashed); the result is the UUID's
    canonical text, which is how the gateway writes call ids.
    """
    if not any(is_sid(p, sid) for p in (CALL_PREFIX, STREAM_PREFIX, RECORDING_PREFIX)):
        return None
    return str(uuid.UUID(hex=sid[2:]))


# -- account --------------------------------------------------------------------------------


def derived_account_sid(tenant_id: str) -> str:
    """The ``AccountSid`` of tenant ``tenant_id`` when none is configured (deterministic)."""
    return ACCOUNT_PREFIX + hashlib.sha256(
        ("aigw-account:" + tenant_id).encode("utf-8")).hexdigest()[:32]


def account_sid_for(
    tenant_id: str,
    *,
    tenant: Tenant | None,
    agent: Agent | None,
    env: Mapping[str, str],
) -> str:
    """The ``AccountSid`` of a call of ``agent`` of tenant ``tenant_id``.

    ``tenant`` is that tenant's configuration (None when unknown). In order: the agent
    extra ``account_sid``, the tenant's ``twilio_account_sid``, ``env``'s
    ``AIGW_TWILIO_ACCOUNT_SID``, else :func:`derived_account_sid`.
    """
    if agent is not None and agent.extra.get("account_sid"):
        return agent.extra["account_sid"]
    if tenant is not None and tenant.twilio_account_sid:
        return tenant.twilio_account_sid
    if env.get(ACCOUNT_SID_ENV):
        return env[ACCOUNT_SID_ENV]
    return derived_account_sid(tenant_id)


def auth_token_for(
    *, tenant: Tenant | None, agent: Agent | None, env: Mapping[str, str]
) -> str | None:
    """The auth token signing requests about ``agent``'s calls (None: sent unsigned).

    Read from the ``env`` variable named by the agent extra ``auth_token_env``, else by the
    tenant's ``twilio_auth_token_env``, else ``AIGW_TWILIO_AUTH_TOKEN``. Never logged.
    """
    var: str = AUTH_TOKEN_ENV
    if agent is not None and agent.extra.get("auth_token_env"):
        var = agent.extra["auth_token_env"]
    elif tenant is not None and tenant.twilio_auth_token_env:
        var = tenant.twilio_auth_token_env
    return env.get(var) or None
