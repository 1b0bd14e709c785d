"""Tenants, agents and the DID map: a typed TOML file (``tomllib``).

A *tenant* is a customer account (its own concurrent-call limit); an *agent* is a
bot configuration belonging to one tenant (which backend, instructions, recording,
timeouts); a *number* maps a DID (E.164) to an agent, and through it to the agent's
tenant. Everything is read once into frozen dataclasses; nothing here does I/O
after ``load_tenants``.

File format::

    default_agent = "support"        # agent for unregistered AudioSocket calls;
                                     # optional when there is exactly one agent

    [tenants.acme]
    name = "Acme"                    # default: the id
    max_concurrent_calls = 20        # default 10
    # Twilio identity (optional; see audiosocket_gw.twilio.ids): the AccountSid every
    # request to the tenant's apps carries ("AC" + 32 hex digits; default: derived from
    # the tenant id), and the environment variable holding the auth token that signs
    # them (default: AIGW_TWILIO_AUTH_TOKEN). ``account_sid`` is the old name of the first.
    twilio_account_sid = "AC0123456789abcdef0123456789abcdef"
    twilio_auth_token_env = "ACME_TWILIO_AUTH_TOKEN"

    [agents.support]
    tenant = "acme"                  # required, a tenant id above
    backend = "openai"               # required: "echo" | "openai" | "twilio-stream"
    instructions = "You are..."
    voice = "marin"
    greeting = "Hello, Acme support."  # optional: the bot speaks first
    record = true
    recording_source = "gateway"     # or "mixmonitor"
    silence_timeout_s = 20.0
    voicemail_budget_s = 15.0
    voicemail_action = "hangup"      # or "leave_message"
    max_duration_s = 3600.0
    debug_dump = false
    echo_delay_ms = 200
    # twilio-stream backend (stream_url or voice_url required):
    # stream_url = "wss://app.example.com/media"
    # voice_url = "https://app.example.com/voice"     # TwiML webhook
    # status_callback = "https://app.example.com/status"
    # status_events = ["initiated", "ringing", "answered", "completed"]

    # openai backend: tools the model may call (docs in README "Agent tools")
    builtin_tools = ["end_call", "transfer_call", "send_dtmf"]   # default: none
    dtmf_to_model = true             # caller DTMF reaches the model as text (default false)
    dtmf_debounce_ms = 1200          # digits pressed within this pause make one message
    max_concurrent_tools = 2         # webhook calls running at once per call (default 2)

    [[agents.support.tools]]         # a webhook the model may call
    name = "lookup_order"            # [A-Za-z0-9_-]{1,64}, not a built-in's name
    description = "Look an order up by its number."
    # the arguments' JSON schema (an object schema)
    parameters = { type = "object", properties = { order_id = { type = "string" } } }
    url = "https://hooks.acme.example/order"
    timeout_s = 5.0                  # default 5, at most 60
    secret_env = "ACME_TOOL_SECRET"  # HMAC-SHA256 key (X-Aigw-Signature); optional

    [agents.support.transfer_destinations]
    sales = { number = "+15551230001", description = "The sales team" }
    desk = { sip = "sip:desk@pbx.acme.example", timeout_s = 20, on_failure = "hangup" }
    night = { number = "+15551230002", fallback = "sales" }  # tried when night fails
    queue = { extension = "600", context = "from-internal" }  # Local/600@from-internal
    # number = E.164 through the trunk, sip = a SIP URI, or extension (+ context,
    # default from-internal) of your own dialplan: a phone, ring group or Queue();
    # mode = "blind" (default); on_failure = "bot" (default: back to the agent) or "hangup"
    # mode = "attended": the caller waits on hold while the person is called, hears a
    # summary and presses 1 (accept) or 2 (decline) within decide_timeout_s (default 20);
    # summary = "..." is said when the model gives none
    boss = { number = "+15551230003", mode = "attended", decide_timeout_s = 15 }

    [agents.support.extra]           # free-form strings for backends
    model = "gpt-realtime"

    [numbers."+15551230000"]
    agent = "support"                # the number's tenant is the agent's tenant

Ids of tenants and agents are ``[A-Za-z0-9_.-]`` (they become metric labels).
Number keys may be written in any form ``normalize_e164`` accepts; they are stored
in E.164. Unknown keys, wrong types, out-of-range values, and numbers or agents that
reference something undefined raise ``ConfigError`` naming the file and the key.

``load_tenants(None)`` returns the embedded default: tenant ``default``, agent
``default`` (echo backend), no numbers.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from .config import ConfigError
from .twilio.ids import ACCOUNT_PREFIX, is_sid

__all__ = [
    "BACKENDS",
    "BUILTIN_TOOLS",
    "STATUS_EVENTS",
    "Agent",
    "ConfigError",
    "Number",
    "Tenant",
    "TenantsConfig",
    "ToolSpec",
    "TransferDestination",
    "default_config",
    "load_tenants",
    "loads_tenants",
    "normalize_e164",
    "tenants_from_dict",
]

Backend = Literal["echo", "openai", "twilio-stream"]
RecordingSource = Literal["mixmonitor", "gateway"]
VoicemailAction = Literal["hangup", "leave_message"]

BACKENDS: tuple[str, ...] = ("echo", "openai", "twilio-stream")
RECORDING_SOURCES: tuple[str, ...] = ("mixmonitor", "gateway")
VOICEMAIL_ACTIONS: tuple[str, ...] = ("hangup", "leave_message")
STATUS_EVENTS: tuple[str, ...] = ("initiated", "ringing", "answered", "completed")
"""Twilio's ``StatusCallbackEvent`` values."""
BUILTIN_TOOLS: tuple[str, ...] = ("end_call", "transfer_call", "send_dtmf")
"""Tools the gateway itself implements (``builtin_tools``)."""
TRANSFER_ON_FAILURE: tuple[str, ...] = ("bot", "hangup")
MAX_TOOLS = 32
_TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_EMPTY: Mapping[str, str] = MappingProxyType({})
# An id names a directory (recordings) and appears in URLs and dial variables: it
# starts with a letter or digit, so ".", "..", hidden names and option-like "-x" are
# impossible.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Tenant:
    """A customer account."""

    id: str
    name: str
    max_concurrent_calls: int = 10
    twilio_account_sid: str | None = None
    twilio_auth_token_env: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A webhook the model may call (``[[agents.NAME.tools]]``)."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(hash=False)
    """The JSON schema of the arguments (an ``object`` schema), as written in TOML."""
    url: str
    timeout_s: float = 5.0
    secret_env: str | None = None
    """Environment variable holding the HMAC-SHA256 key of the signature header."""


@dataclass(frozen=True)
class TransferDestination:
    """A person or team ``transfer_call`` may hand the caller to."""

    name: str
    kind: Literal["number", "sip", "extension"]
    address: str
    """E.164 number, SIP URI, or ``extension@context`` (``Local/`` channel)."""
    description: str = ""
    mode: Literal["blind", "attended"] = "blind"
    timeout_s: float = 30.0
    """Ring time (``Dial()`` timeout, or the attended Originate's ``Timeout``)."""
    decide_timeout_s: float = 20.0
    """Attended: how long the person has to press 1 or 2 once answered."""
    summary: str = ""
    """Attended: what the person hears when the model gives no ``summary``."""
    on_failure: Literal["bot", "hangup"] = "bot"
    fallback: str | None = None
    """Another destination tried when this one fails (before ``on_failure``)."""


@dataclass(frozen=True)
class Agent:
    """One bot configuration; ``tenant`` is the id of the tenant that owns it."""

    name: str
    tenant: str
    backend: Backend
    instructions: str = ""
    voice: str = "marin"
    greeting: str | None = None
    stream_url: str | None = None
    voice_url: str | None = None
    status_callback: str | None = None
    status_events: tuple[str, ...] = ("completed",)
    record: bool = False
    recording_source: RecordingSource = "gateway"
    silence_timeout_s: float = 20.0
    voicemail_budget_s: float = 15.0
    voicemail_action: VoicemailAction = "hangup"
    max_duration_s: float = 3600.0
    debug_dump: bool = False
    echo_delay_ms: int = 200
    tools: tuple[ToolSpec, ...] = field(default=(), hash=False)
    builtin_tools: tuple[str, ...] = ()
    transfer_destinations: Mapping[str, TransferDestination] = field(
        default_factory=lambda: MappingProxyType({}), hash=False)
    dtmf_to_model: bool = False
    dtmf_debounce_ms: int = 1200
    max_concurrent_tools: int = 2
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if not isinstance(self.transfer_destinations, MappingProxyType):
            object.__setattr__(self, "transfer_destinations",
                               MappingProxyType(dict(self.transfer_destinations)))


@dataclass(frozen=True)
class Number:
    """A DID in E.164 routed to ``agent`` of ``tenant``."""

    did_e164: str
    tenant: str
    agent: str


@dataclass(frozen=True)
class TenantsConfig:
    """The whole file: tenants, agents and numbers by id / E.164."""

    tenants: Mapping[str, Tenant]
    agents: Mapping[str, Agent]
    numbers: Mapping[str, Number]
    default_agent: str

    def lookup_did(self, did: str) -> Number | None:
        """The number a dialled DID routes to, in any format ``normalize_e164`` reads."""
        e164 = normalize_e164(did)
        return None if e164 is None else self.numbers.get(e164)

    def agent(self, name: str) -> Agent | None:
        """The agent called ``name``, or None."""
        return self.agents.get(name)

    def tenant_of(self, agent: Agent) -> Tenant:
        """The tenant owning ``agent`` (always defined: checked at load)."""
        return self.tenants[agent.tenant]


_STRIP = str.maketrans("", "", " -().\t")
_DIGITS = frozenset("0123456789")


def normalize_e164(s: str) -> str | None:
    """``s`` as E.164 (``+`` and 1-15 digits), or None when it is not a phone number.

    Spaces, dashes, parentheses and dots are removed; a ``00`` prefix becomes ``+``;
    10 digits starting 2-9 are a NANP number (``+1`` added); ``1`` + 10 digits gets a
    ``+``. Any other character, a ``+`` not in front, a country code starting with 0,
    more than 15 digits or another digit count without ``+`` (ambiguous national
    formats) give None.
    """
    t = s.strip().translate(_STRIP)
    if t.startswith("00"):
        t = "+" + t[2:]
    if t.startswith("+"):
        digits = t[1:]
        if not 3 <= len(digits) <= 15 or not _DIGITS.issuperset(digits) or digits[0] == "0":
            return None
        return t
    if not _DIGITS.issuperset(t):
        return None
    if len(t) == 10 and t[0] in "23456789":
        return "+1" + t
    if len(t) == 11 and t[0] == "1" and t[1] in "23456789":
        return "+" + t
    return None


# ---------------------------------------------------------------------------
# Loading


def load_tenants(path: str | Path | None) -> TenantsConfig:
    """Read a tenants TOML file; ``None`` gives ``default_config()``.

    Raises ``ConfigError`` (a ``ValueError``) naming the file and key on any problem,
    including an unreadable file or invalid TOML.
    """
    if path is None:
        return default_config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read tenants file: {exc}") from None
    return loads_tenants(text, source=str(p))


def loads_tenants(text: str, *, source: str = "<string>") -> TenantsConfig:
    """Parse tenants TOML from a string; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return tenants_from_dict(data, source=source)


def default_config() -> TenantsConfig:
    """Tenant ``default``, agent ``default`` (echo backend), no numbers."""
    tenant = Tenant(id="default", name="Default")
    agent = Agent(name="default", tenant="default", backend="echo")
    return TenantsConfig(
        tenants=MappingProxyType({tenant.id: tenant}),
        agents=MappingProxyType({agent.name: agent}),
        numbers=MappingProxyType({}),
        default_agent="default",
    )


class _Reader:
    """Typed access to one TOML table, with ``source: key`` in every error."""

    def __init__(self, source: str, where: str, table: object) -> None:
        self.source = source
        self.where = where
        if not isinstance(table, dict):
            raise self.error(f"expected a table, got {_tname(table)}")
        self.table = cast(dict[str, Any], table)
        self.used: set[str] = set()

    def error(self, msg: str, key: str | None = None) -> ConfigError:
        loc = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        return ConfigError(f"{self.source}: {loc}: {msg}" if loc else f"{self.source}: {msg}")

    def _get(self, key: str) -> object:
        self.used.add(key)
        return self.table.get(key)

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        v = self._get(key)
        if v is None:
            if required or default is None:
                raise self.error("is required", key)
            return default
        if not isinstance(v, str):
            raise self.error(f"expected a string, got {_tname(v)}", key)
        return v

    def opt_str(self, key: str) -> str | None:
        v = self._get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.error(f"expected a string, got {_tname(v)}", key)
        return v

    def bool_(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(f"expected true or false, got {_tname(v)}", key)
        return v

    def int_(self, key: str, default: int, *, minimum: int) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"expected an integer, got {_tname(v)}", key)
        if v < minimum:
            raise self.error(f"must be >= {minimum}, got {v}", key)
        return v

    def float_(self, key: str, default: float, *, positive: bool = True) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(f"expected a number, got {_tname(v)}", key)
        f = float(v)
        if not math.isfinite(f) or f < 0 or (positive and f == 0):
            raise self.error(f"must be {'> 0' if positive else '>= 0'}, got {v}", key)
        return f

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        v = self.str_(key, default)
        if v not in choices:
            raise self.error(f"{v!r} is not one of {', '.join(choices)}", key)
        return v

    def str_list(
        self, key: str, default: tuple[str, ...], choices: tuple[str, ...]
    ) -> tuple[str, ...]:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(f"expected a list of strings, got {_tname(v)}", key)
        for x in v:
            if x not in choices:
                raise self.error(f"{x!r} is not one of {', '.join(choices)}", key)
        return tuple(dict.fromkeys(cast(list[str], v)))

    def str_map(self, key: str) -> Mapping[str, str]:
        v = self._get(key)
        if v is None:
            return _EMPTY
        sub = _Reader(self.source, f"{self.where}.{key}", v)
        for k, x in sub.table.items():
            if not isinstance(x, str):
                raise sub.error(f"expected a string, got {_tname(x)}", k)
        return MappingProxyType(dict(sub.table))

    def url(self, key: str, schemes: tuple[str, ...]) -> str | None:
        v = self.opt_str(key)
        if v is not None and not v.startswith(tuple(f"{s}://" for s in schemes)):
            raise self.error(f"must be a {' or '.join(schemes)} URL, got {v!r}", key)
        return v

    def done(self) -> None:
        """Reject keys that were never read."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(f"unknown key {unknown[0]!r}", None)


def _tname(v: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _check_id(r: _Reader, kind: str, ident: str) -> None:
    if not _ID_RE.fullmatch(ident):
        raise r.error(f"{kind} id {ident!r} must be 1-64 characters of A-Z a-z 0-9 _ . -,"
                      " starting with a letter or digit")


def _account_sid(r: _Reader) -> str | None:
    """The tenant's ``twilio_account_sid`` (or its old name ``account_sid``), checked."""
    key = "twilio_account_sid"
    sid = r.opt_str(key)
    legacy = r.opt_str("account_sid")
    if legacy is not None:
        if sid is not None:
            raise r.error("set twilio_account_sid only (account_sid is its old name)",
                          "account_sid")
        key, sid = "account_sid", legacy
    if sid is not None and not is_sid(ACCOUNT_PREFIX, sid):
        raise r.error(f"must be 'AC' followed by 32 lowercase hex digits, got {sid!r}", key)
    return sid


def _env_name(r: _Reader, key: str) -> str | None:
    name = r.opt_str(key)
    if name is not None and not _ENV_NAME_RE.fullmatch(name):
        raise r.error(f"must be an environment variable name, got {name!r}", key)
    return name


def _tools(r: _Reader) -> tuple[ToolSpec, ...]:
    """``[[agents.NAME.tools]]``: webhook tools, each checked."""
    v = r._get("tools")
    if v is None:
        return ()
    if not isinstance(v, list):
        raise r.error(f"expected an array of tables ([[...tools]]), got {_tname(v)}", "tools")
    if len(v) > MAX_TOOLS:
        raise r.error(f"at most {MAX_TOOLS} tools", "tools")
    out: list[ToolSpec] = []
    for i, item in enumerate(v):
        t = _Reader(r.source, f"{r.where}.tools[{i}]", item)
        name = t.str_("name", required=True)
        if not _TOOL_NAME_RE.fullmatch(name):
            raise t.error(f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {name!r}", "name")
        if name in BUILTIN_TOOLS:
            raise t.error(f"{name!r} is a built-in tool: enable it with builtin_tools", "name")
        if any(o.name == name for o in out):
            raise t.error(f"duplicate tool name {name!r}", "name")
        params = t._get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type") != "object":
            raise t.error('must be a JSON schema table with type = "object"', "parameters")
        url = t.url("url", ("http", "https"))
        if url is None:
            raise t.error("is required", "url")
        timeout = t.float_("timeout_s", 5.0)
        if timeout > 60:
            raise t.error(f"must be <= 60, got {timeout}", "timeout_s")
        out.append(ToolSpec(name=name, description=t.str_("description", ""),
                            parameters=MappingProxyType(dict(params)), url=url,
                            timeout_s=timeout, secret_env=_env_name(t, "secret_env")))
        t.done()
    return tuple(out)


def _destinations(r: _Reader) -> Mapping[str, TransferDestination]:
    """``[agents.NAME.transfer_destinations]``: name -> where ``transfer_call`` goes."""
    v = r._get("transfer_destinations")
    if v is None:
        return MappingProxyType({})
    tbl = _Reader(r.source, f"{r.where}.transfer_destinations", v)
    out: dict[str, TransferDestination] = {}
    for name in tbl.table:
        d = _Reader(r.source, f"{tbl.where}.{name}", tbl._get(name))
        if not _TOOL_NAME_RE.fullmatch(name):
            raise d.error("a destination name is 1-64 characters of A-Z a-z 0-9 _ -")
        number, sip = d.opt_str("number"), d.opt_str("sip")
        extension, context = d.opt_str("extension"), d.opt_str("context")
        if sum(x is not None for x in (number, sip, extension)) != 1:
            raise d.error("set exactly one of number (E.164), sip (a SIP URI) or extension")
        if context is not None and extension is None:
            raise d.error("context goes with extension", "context")
        kind: Literal["number", "sip", "extension"]
        if extension is not None:
            if not re.fullmatch(r"[0-9A-Za-z*#+_-]{1,32}", extension):
                raise d.error(f"must be 1-32 characters of 0-9 A-Z a-z * # + _ -, got "
                              f"{extension!r}", "extension")
            ctx = "from-internal" if context is None else context
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ctx):
                raise d.error(f"must be a dialplan context name, got {ctx!r}", "context")
            kind, address = "extension", f"{extension}@{ctx}"
        elif number is not None:
            e164 = normalize_e164(number)
            if e164 is None:
                raise d.error(f"is not a phone number that can be read as E.164: {number!r}",
                              "number")
            kind, address = "number", e164
        else:
            assert sip is not None
            if not re.fullmatch(r"(?:sips?:)?[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9.-]{1,253}"
                                r"(?::\d{1,5})?", sip.strip()):
                raise d.error(f"must be sip:user@host[:port], got {sip!r}", "sip")
            kind, address = "sip", sip.strip()
        mode = d.choice("mode", ("blind", "attended"), "blind")
        timeout = d.float_("timeout_s", 30.0)
        if not 1 <= timeout <= 600:
            raise d.error(f"must be within 1..600, got {timeout}", "timeout_s")
        decide = d.float_("decide_timeout_s", 20.0)
        if not 1 <= decide <= 120:
            raise d.error(f"must be within 1..120, got {decide}", "decide_timeout_s")
        summary = d.str_("summary", "")
        if len(summary) > 500:
            raise d.error("at most 500 characters", "summary")
        out[name] = TransferDestination(
            name=name, kind=kind, address=address, description=d.str_("description", ""),
            mode=cast(Literal["blind", "attended"], mode), timeout_s=timeout,
            decide_timeout_s=decide, summary=summary,
            on_failure=cast(Literal["bot", "hangup"],
                            d.choice("on_failure", TRANSFER_ON_FAILURE, "bot")),
            fallback=d.opt_str("fallback"))
        d.done()
    for dest in out.values():
        if dest.fallback is not None and dest.fallback not in out:
            raise tbl.error(f"unknown destination {dest.fallback!r}", f"{dest.name}.fallback")
        if dest.fallback == dest.name:
            raise tbl.error("a destination cannot be its own fallback",
                            f"{dest.name}.fallback")
    return MappingProxyType(out)


def _check_tools(r: _Reader, agent: Agent) -> None:
    """Cross-checks of the tool keys (built-ins need what they act on)."""
    uses_tools = agent.tools or agent.builtin_tools or agent.dtmf_to_model
    if uses_tools and agent.backend != "openai":
        raise r.error("tools, builtin_tools and dtmf_to_model need backend = \"openai\"")
    if "transfer_call" in agent.builtin_tools and not agent.transfer_destinations:
        raise r.error("transfer_call needs at least one [...transfer_destinations] entry",
                      "builtin_tools")


def tenants_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> TenantsConfig:
    """Build a ``TenantsConfig`` from parsed TOML (a dict), validating everything."""
    top = _Reader(source, "", dict(data))
    tenants: dict[str, Tenant] = {}
    tenants_tbl = _Reader(source, "tenants", top._get("tenants") or {})
    for tid in tenants_tbl.table:
        r = _Reader(source, f"tenants.{tid}", tenants_tbl._get(tid))
        _check_id(r, "tenant", tid)
        tenants[tid] = Tenant(
            id=tid,
            name=r.str_("name", tid),
            max_concurrent_calls=r.int_("max_concurrent_calls", 10, minimum=1),
            twilio_account_sid=_account_sid(r),
            twilio_auth_token_env=_env_name(r, "twilio_auth_token_env"),
        )
        r.done()

    agents: dict[str, Agent] = {}
    agents_tbl = _Reader(source, "agents", top._get("agents") or {})
    for name in agents_tbl.table:
        r = _Reader(source, f"agents.{name}", agents_tbl._get(name))
        _check_id(r, "agent", name)
        tenant = r.str_("tenant", required=True)
        if tenant not in tenants:
            raise r.error(f"unknown tenant {tenant!r}", "tenant")
        backend = cast(Backend, r.choice("backend", BACKENDS))
        agent = Agent(
            name=name,
            tenant=tenant,
            backend=backend,
            instructions=r.str_("instructions", ""),
            voice=r.str_("voice", "marin"),
            greeting=r.opt_str("greeting"),
            stream_url=r.url("stream_url", ("ws", "wss")),
            voice_url=r.url("voice_url", ("http", "https")),
            status_callback=r.url("status_callback", ("http", "https")),
            status_events=r.str_list("status_events", ("completed",), STATUS_EVENTS),
            record=r.bool_("record", False),
            recording_source=cast(
                RecordingSource, r.choice("recording_source", RECORDING_SOURCES, "gateway")
            ),
            silence_timeout_s=r.float_("silence_timeout_s", 20.0),
            voicemail_budget_s=r.float_("voicemail_budget_s", 15.0, positive=False),
            voicemail_action=cast(
                VoicemailAction, r.choice("voicemail_action", VOICEMAIL_ACTIONS, "hangup")
            ),
            max_duration_s=r.float_("max_duration_s", 3600.0),
            debug_dump=r.bool_("debug_dump", False),
            echo_delay_ms=r.int_("echo_delay_ms", 200, minimum=0),
            tools=_tools(r),
            builtin_tools=r.str_list("builtin_tools", (), BUILTIN_TOOLS),
            transfer_destinations=_destinations(r),
            dtmf_to_model=r.bool_("dtmf_to_model", False),
            dtmf_debounce_ms=r.int_("dtmf_debounce_ms", 1200, minimum=100),
            max_concurrent_tools=r.int_("max_concurrent_tools", 2, minimum=1),
            extra=r.str_map("extra"),
        )
        _check_tools(r, agent)
        if backend == "twilio-stream" and agent.stream_url is None and agent.voice_url is None:
            raise r.error("backend 'twilio-stream' needs stream_url or voice_url")
        r.done()
        agents[name] = agent

    numbers: dict[str, Number] = {}
    numbers_tbl = _Reader(source, "numbers", top._get("numbers") or {})
    for raw in numbers_tbl.table:
        r = _Reader(source, f'numbers."{raw}"', numbers_tbl._get(raw))
        e164 = normalize_e164(raw)
        if e164 is None:
            raise r.error("is not a phone number that can be read as E.164")
        if e164 in numbers:
            raise r.error(f"duplicate of number {e164}")
        agent_name = r.str_("agent", required=True)
        agent_obj = agents.get(agent_name)
        if agent_obj is None:
            raise r.error(f"unknown agent {agent_name!r}", "agent")
        declared = r.opt_str("tenant")
        if declared is not None and declared != agent_obj.tenant:
            raise r.error(
                f"tenant {declared!r} differs from agent {agent_name!r}'s tenant "
                f"{agent_obj.tenant!r}",
                "tenant",
            )
        r.done()
        numbers[e164] = Number(did_e164=e164, tenant=agent_obj.tenant, agent=agent_name)

    default_agent = top.opt_str("default_agent")
    if default_agent is None:
        if len(agents) != 1:
            raise top.error("is required unless exactly one agent is defined", "default_agent")
        default_agent = next(iter(agents))
    elif default_agent not in agents:
        raise top.error(f"unknown agent {default_agent!r}", "default_agent")
    top.done()

    return TenantsConfig(
        tenants=MappingProxyType(tenants),
        agents=MappingProxyType(agents),
        numbers=MappingProxyType(numbers),
        default_agent=default_agent,
    )
