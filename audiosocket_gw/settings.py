"""One ``Settings`` object for the whole gateway, built once from CLI + environment.

Every ``AIGW_*`` variable (and ``OPENAI_API_KEY``) is read here and nowhere else in
the runtime: ``Settings.load(env, **cli)`` reads the environment once, applies the
CLI's explicit values (the CLI wins, uvicorn's pattern), validates every group and
raises ``ConfigError`` naming the variable on a bad value, so a bad setting stops the
gateway at startup instead of failing calls later.

Groups (each component gets only its own):

=============  ===========================================================
``core``       listeners, default backend, limits, timeouts, OpenAI, token
               (``config.Config``: the CLI mirrors these)
``ami``        the AMI connection (None when ``AIGW_AMI_HOST`` is unset)
``routing``    what ``POST /v1/route`` and Originate advertise and record
``outbound``   Originate context, dial template, ring timeout
``recording``  capture, S3, transcription (``recordings.settings``)
``cost``       trunk and AI rates
``twilio``     account SID and auth token defaults for Twilio emulation
``tts``        text-to-speech for TwiML ``<Say>`` (``tts.py``)
``rollout``    the migration webhook: SIP trunk host, public webhook URL
``store``      the call store (SQLite file or PostgreSQL URL), node identity,
               workers
=============  ===========================================================

Secrets stay out of ``repr``. Tenants may name environment variables that hold
their own secrets (``twilio_auth_token_env``...): those are looked up through
``Settings.secret(name)``, which reads the same snapshot of the environment.

``ENV_VARS`` lists every variable read here; a test checks ``.env.example``
against it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .ami.protocol import DEFAULT_MAX_LINE
from .config import Config, ConfigError, format_hostport, parse_hostport
from .recordings.settings import ENV as RECORDING_ENV
from .recordings.settings import RecordingSettings

__all__ = [
    "ENV_VARS",
    "AmiSettings",
    "CostSettings",
    "OutboundSettings",
    "RolloutSettings",
    "RoutingSettings",
    "Settings",
    "StoreSettings",
    "TtsSettings",
    "TwilioSettings",
]

DEFAULT_RECORDING_DIR: Final = "/var/spool/asterisk/monitor"
DIAL_RE: Final = re.compile(r"[A-Za-z0-9]{1,16}/[A-Za-z0-9@_.+:/-]{1,200}")
"""A dial string we accept from configuration (no commas, spaces, quotes, & or ${})."""
SAFE_DIR_RE: Final = re.compile(r"/[A-Za-z0-9_./-]{0,200}")
_CONTEXT_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,79}")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be within {lo}..{hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{name}: must be within {lo:g}..{hi:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class AmiSettings:
    """Where and how to connect to AMI. ``secret`` is never logged (not in repr)."""

    host: str
    port: int = 5038
    username: str = "aigw"
    secret: str = field(default="", repr=False)
    # Timeouts (seconds)
    connect_timeout: float = 5.0
    login_timeout: float = 5.0
    action_timeout: float = 10.0
    ping_interval: float = 5.0
    ping_timeout: float = 3.0
    # Reconnect backoff (seconds): initial, doubling, capped, with 20 % jitter
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_reset_after: float = 30.0
    """A connection must stay up this long before the backoff starts over."""
    # Limits
    event_queue: int = 10_000
    max_line: int = DEFAULT_MAX_LINE
    """Longest line (bytes) accepted from Asterisk (it writes ~1024 at most)."""
    max_message: int = 1 << 20
    """Largest message (bytes, up to its blank line); also bounds what is buffered."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AmiSettings | None:
        """``AIGW_AMI_HOST`` / ``_PORT`` / ``_USER`` / ``_SECRET``; None without a host."""
        host = env.get("AIGW_AMI_HOST", "").strip()
        if not host:
            return None
        return cls(
            host=host,
            port=_int(env, "AIGW_AMI_PORT", 5038, 1, 65535),
            username=env.get("AIGW_AMI_USER") or "aigw",
            secret=env.get("AIGW_AMI_SECRET") or "",
        )


MAX_PEER_AUDIOSOCKETS: Final = 8
"""How many fallback gateway addresses a route answer may name (the dialplan tries
each once, so this bounds a failed call's setup time)."""


@dataclass(frozen=True)
class RoutingSettings:
    """What routing and Originate tell Asterisk.

    ``advertise_audiosocket``: the ``host:port`` Asterisk dials (env
    ``AIGW_ADVERTISE_AUDIOSOCKET``, old alias ``AIGW_AUDIOSOCKET_PUBLIC``; default:
    the bound address, a wildcard host replaced by loopback). ``recording_dir``:
    where MixMonitor writes (env ``AIGW_MIXMONITOR_DIR``). ``fallback_dial``: the
    default dial string for the AI leg's fallback (env ``AIGW_FALLBACK_DIAL``; an
    agent's ``fallback_dial`` wins). ``peer_audiosockets``: the other gateway
    nodes' advertised AudioSocket addresses (env ``AIGW_PEER_AUDIOSOCKETS``,
    comma-separated ``host:port``, at most 8): the route answer names them in
    ``AIGW_AUDIOSOCKET_ALT`` and the dialplan tries them when this node refuses the
    connection (docs/DEPLOY.md "Scaling out").
    """

    advertise_audiosocket: str | None = None
    recording_dir: str = DEFAULT_RECORDING_DIR
    fallback_dial: str = ""
    peer_audiosockets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RoutingSettings:
        name = "AIGW_ADVERTISE_AUDIOSOCKET"
        adv = env.get(name) or None
        if adv is None and env.get("AIGW_AUDIOSOCKET_PUBLIC"):
            name = "AIGW_AUDIOSOCKET_PUBLIC"
            adv = env[name]
        if adv is not None:
            host, port = parse_hostport(adv, setting=name)
            if port == 0 or host in ("0.0.0.0", "::", ""):
                raise ConfigError(f"{name}: needs a concrete host and port")
            adv = format_hostport(host, port)
        rec = (env.get("AIGW_MIXMONITOR_DIR") or DEFAULT_RECORDING_DIR).rstrip("/") or "/"
        if not SAFE_DIR_RE.fullmatch(rec) or ".." in rec.split("/"):
            raise ConfigError(
                "AIGW_MIXMONITOR_DIR: an absolute path of A-Z a-z 0-9 _ . - / without '..'"
            )
        fb = env.get("AIGW_FALLBACK_DIAL") or ""
        if fb and not DIAL_RE.fullmatch(fb):
            raise ConfigError(
                "AIGW_FALLBACK_DIAL: a dial string like PJSIP/100 or PJSIP/+15551230000@trunk "
                "(no commas, spaces, quotes, & or ${})"
            )
        peers: list[str] = []
        for item in (env.get("AIGW_PEER_AUDIOSOCKETS") or "").split(","):
            if not item.strip():
                continue
            host, port = parse_hostport(item.strip(), setting="AIGW_PEER_AUDIOSOCKETS")
            if port == 0 or host in ("0.0.0.0", "::", "") or not (
                    re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", host)
                    or re.fullmatch(r"[0-9A-Fa-f:.]{2,45}", host)):
                raise ConfigError(
                    f"AIGW_PEER_AUDIOSOCKETS: {item.strip()!r} needs a concrete host "
                    "(a name or an IP address) and port")
            addr = format_hostport(host, port)
            if addr not in peers:
                peers.append(addr)
        if len(peers) > MAX_PEER_AUDIOSOCKETS:
            raise ConfigError(
                f"AIGW_PEER_AUDIOSOCKETS: at most {MAX_PEER_AUDIOSOCKETS} addresses")
        return cls(advertise_audiosocket=adv, recording_dir=rec, fallback_dial=fb,
                   peer_audiosockets=tuple(peers))


@dataclass(frozen=True)
class OutboundSettings:
    """AMI Originate: the context, the dial string and the ring timeout.

    ``AIGW_OUTBOUND_CONTEXT`` (default ``aigw-outbound``), ``AIGW_DIAL_TEMPLATE``
    (``{to}`` is replaced by the E.164 number; default ``PJSIP/{to}@aigw-trunk``),
    ``AIGW_RING_TIMEOUT_S`` (how long the callee may ring, default 30 s; the API's
    ``timeout`` field overrides it per call).
    """

    context: str = "aigw-outbound"
    dial_template: str = "PJSIP/{to}@aigw-trunk"
    ring_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OutboundSettings:
        context = env.get("AIGW_OUTBOUND_CONTEXT") or "aigw-outbound"
        if not _CONTEXT_RE.fullmatch(context):
            raise ConfigError("AIGW_OUTBOUND_CONTEXT: a dialplan context name [A-Za-z0-9_-]")
        template = env.get("AIGW_DIAL_TEMPLATE") or "PJSIP/{to}@aigw-trunk"
        if "{to}" not in template or not DIAL_RE.fullmatch(template.replace("{to}", "1")):
            raise ConfigError(
                "AIGW_DIAL_TEMPLATE: a dial string containing {to}, like PJSIP/{to}@trunk")
        ring = _float(env, "AIGW_RING_TIMEOUT_S", 30.0, 1.0, 600.0)
        return cls(context=context, dial_template=template, ring_timeout_s=ring)


@dataclass(frozen=True)
class CostSettings:
    """US dollars per minute: ``AIGW_COST_TRUNK_PER_MIN``, ``AIGW_COST_AI_PER_MIN``."""

    trunk_per_min: float = 0.0
    ai_per_min: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CostSettings:
        return cls(
            trunk_per_min=_float(env, "AIGW_COST_TRUNK_PER_MIN", 0.0, 0.0, 1e6),
            ai_per_min=_float(env, "AIGW_COST_AI_PER_MIN", 0.0, 0.0, 1e6),
        )


@dataclass(frozen=True)
class TwilioSettings:
    """Defaults for Twilio emulation when a tenant names none of its own.

    ``AIGW_TWILIO_ACCOUNT_SID``, ``AIGW_TWILIO_AUTH_TOKEN`` (signs webhooks and
    callbacks; never logged).
    """

    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    allow_private: bool = True
    """``AIGW_TWIML_ALLOW_PRIVATE``: TwiML URLs may lead to loopback/private addresses
    (link-local/metadata, multicast and reserved ones are refused always)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TwilioSettings:
        sid = env.get("AIGW_TWILIO_ACCOUNT_SID") or None
        if sid is not None and not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
            raise ConfigError("AIGW_TWILIO_ACCOUNT_SID: 'AC' followed by 32 hex digits")
        raw = (env.get("AIGW_TWIML_ALLOW_PRIVATE") or "1").strip().lower()
        if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError("AIGW_TWIML_ALLOW_PRIVATE: 1 or 0")
        return cls(account_sid=sid, auth_token=env.get("AIGW_TWILIO_AUTH_TOKEN") or None,
                   allow_private=raw in ("1", "true", "yes", "on"))


TTS_ENGINES: Final = ("auto", "espeak", "openai", "none")


@dataclass(frozen=True)
class TtsSettings:
    """Text-to-speech for TwiML ``<Say>`` (see ``audiosocket_gw/tts.py``).

    ``AIGW_TTS_ENGINE``: ``auto`` (the endpoint when ``AIGW_TTS_URL`` is set, else
    espeak-ng when installed, else none), ``espeak``, ``openai`` or ``none``.
    ``AIGW_TTS_URL``: an OpenAI-compatible ``.../v1/audio/speech`` URL;
    ``AIGW_TTS_MODEL`` (default ``tts-1``); ``AIGW_TTS_KEY`` its bearer key (never
    logged).
    """

    engine: str = "auto"
    url: str | None = None
    model: str = "tts-1"
    key: str | None = field(default=None, repr=False)
    timeout_s: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TtsSettings:
        engine = (env.get("AIGW_TTS_ENGINE") or "auto").strip().lower()
        if engine not in TTS_ENGINES:
            raise ConfigError(f"AIGW_TTS_ENGINE: one of {', '.join(TTS_ENGINES)}, got {engine!r}")
        url = (env.get("AIGW_TTS_URL") or "").strip() or None
        if url is not None and not url.lower().startswith(("http://", "https://")):
            raise ConfigError("AIGW_TTS_URL: an http:// or https:// URL")
        if engine == "openai" and url is None:
            raise ConfigError("AIGW_TTS_ENGINE=openai needs AIGW_TTS_URL")
        return cls(engine=engine, url=url, model=env.get("AIGW_TTS_MODEL") or "tts-1",
                   key=env.get("AIGW_TTS_KEY") or None)


_SIP_HOST_RE: Final = re.compile(
    r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(;[a-z]{1,20}=[A-Za-z0-9]{1,20})*")


@dataclass(frozen=True)
class RolloutSettings:
    """The migration webhook (``POST /v1/rollout/voice``, ``audiosocket_gw.rollout``).

    ``AIGW_ROLLOUT_SIP_HOST``: where Twilio sends the calls that move to Asterisk,
    ``<Dial><Sip>sip:{DID}@{host}</Sip></Dial>`` (``host``, ``host:port``, optional
    ``;transport=tls``); unset, every call stays on Twilio. ``AIGW_ROLLOUT_PUBLIC_URL``:
    the webhook URL exactly as configured at Twilio (needed behind a proxy or TLS
    terminator: ``X-Twilio-Signature`` signs that URL); unset, the request's own URL.
    """

    sip_host: str = ""
    public_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RolloutSettings:
        host = (env.get("AIGW_ROLLOUT_SIP_HOST") or "").strip()
        if host and not _SIP_HOST_RE.fullmatch(host):
            raise ConfigError("AIGW_ROLLOUT_SIP_HOST: a host or host:port for sip:{DID}@host "
                              "(optionally ;transport=tls)")
        url = (env.get("AIGW_ROLLOUT_PUBLIC_URL") or "").strip()
        if url and (not re.fullmatch(r"https?://[^\s?#]+", url)
                    or "/v1/rollout/voice" not in url):
            raise ConfigError("AIGW_ROLLOUT_PUBLIC_URL: the http(s) URL of /v1/rollout/voice "
                              "as Twilio requests it")
        return cls(sip_host=host, public_url=url)


_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


@dataclass(frozen=True)
class StoreSettings:
    """Where calls, events, the limiter and the rollout state live; who this node is.

    ``AIGW_DATABASE_URL``: ``postgresql://user@host:port/db`` to share one store between
    several gateway nodes and workers; unset, the embedded SQLite file under
    ``AIGW_DATA_DIR``. ``AIGW_DATABASE_POOL``: PostgreSQL connections per process (1-100,
    default 10). ``AIGW_NODE_ID``: this node's name in the store (default
    ``hostname:pid``; it must be unique among live nodes). ``AIGW_NODE_LEASE_S``: a node
    that has not renewed its lease for that long is dead and a survivor closes its
    calls (3-600 s, default 15). ``AIGW_WORKERS``: processes ``serve`` runs (1-64,
    default 1; more than one needs PostgreSQL).
    """

    database_url: str = field(default="", repr=False)
    pool_max: int = 10
    node_id: str = ""
    lease_s: float = 15.0
    workers: int = 1
    worker: int | None = None
    """This process's worker index under ``serve --workers N`` (None: not a worker)."""

    def for_workers(self, workers: int | None, index: int | None) -> StoreSettings:
        """With ``serve --workers N`` (overrides ``AIGW_WORKERS``) and, in a worker,
        its index (its node id gets ``.w<index>``)."""
        n = self.workers if workers is None else workers
        if not 1 <= n <= 64:
            raise ConfigError("--workers: 1 to 64")
        if n > 1 and not self.is_postgres:
            raise ConfigError("--workers > 1 needs a shared store: set AIGW_DATABASE_URL "
                              "(PostgreSQL); the SQLite store serves one process")
        node = self.node_id if index is None else f"{self.node_id[:59]}.w{index}"
        return dataclasses.replace(self, workers=n, node_id=node, worker=index)

    @property
    def is_postgres(self) -> bool:
        """True when the store is PostgreSQL."""
        return bool(self.database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreSettings:
        url = (env.get("AIGW_DATABASE_URL") or "").strip()
        if url and not re.fullmatch(r"postgres(ql)?://\S+", url):
            raise ConfigError("AIGW_DATABASE_URL: a postgresql://user@host:port/db URL "
                              "(unset for the embedded SQLite store)")
        node = (env.get("AIGW_NODE_ID") or "").strip() or f"{socket.gethostname()}:{os.getpid()}"
        if not _NODE_ID_RE.fullmatch(node):
            raise ConfigError("AIGW_NODE_ID: 1-64 of A-Z a-z 0-9 _ . : @ -")
        workers = _int(env, "AIGW_WORKERS", 1, 1, 64)
        if workers > 1 and not url:
            raise ConfigError("AIGW_WORKERS > 1 needs a shared store: set AIGW_DATABASE_URL "
                              "(PostgreSQL); the SQLite store serves one process")
        return cls(database_url=url, pool_max=_int(env, "AIGW_DATABASE_POOL", 10, 1, 100),
                   node_id=node[:64], lease_s=_float(env, "AIGW_NODE_LEASE_S", 15.0, 3.0, 600.0),
                   workers=workers)


@dataclass(frozen=True)
class Settings:
    """Every setting of one gateway process (see the module docstring)."""

    core: Config
    ami: AmiSettings | None = None
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, *, core: Config | None = None,
             **cli: object) -> Settings:
        """Read ``env`` (default ``os.environ``) once; ``cli`` values override ``core``.

        ``core`` may be given already built (tests, embedding); otherwise it is built
        from ``env`` and the ``cli`` overrides.
        """
        env = dict(os.environ if env is None else env)
        if core is None:
            core = Config.from_env(env, **cli)
        return cls(
            core=core,
            ami=AmiSettings.from_env(env),
            routing=RoutingSettings.from_env(env),
            outbound=OutboundSettings.from_env(env),
            recording=RecordingSettings.from_env(env),
            cost=CostSettings.from_env(env),
            twilio=TwilioSettings.from_env(env),
            tts=TtsSettings.from_env(env),
            rollout=RolloutSettings.from_env(env),
            store=StoreSettings.from_env(env),
            environ=env,
        )

    def secret(self, name: str) -> str | None:
        """The value of the environment variable ``name`` (a tenant-named secret)."""
        value = self.environ.get(name)
        return value or None


ENV_VARS: Final = frozenset(
    set(Config().ENV.values())
    | set(RECORDING_ENV.values())
    | {
        "AIGW_AMI_HOST", "AIGW_AMI_PORT", "AIGW_AMI_USER", "AIGW_AMI_SECRET",
        "AIGW_ADVERTISE_AUDIOSOCKET", "AIGW_AUDIOSOCKET_PUBLIC", "AIGW_MIXMONITOR_DIR",
        "AIGW_PEER_AUDIOSOCKETS",
        "AIGW_FALLBACK_DIAL", "AIGW_OUTBOUND_CONTEXT", "AIGW_DIAL_TEMPLATE",
        "AIGW_RING_TIMEOUT_S", "AIGW_COST_TRUNK_PER_MIN", "AIGW_COST_AI_PER_MIN",
        "AIGW_TWILIO_ACCOUNT_SID", "AIGW_TWILIO_AUTH_TOKEN", "AIGW_TWIML_ALLOW_PRIVATE",
        "AIGW_TTS_ENGINE", "AIGW_TTS_URL", "AIGW_TTS_MODEL", "AIGW_TTS_KEY",
        "AIGW_ROLLOUT_SIP_HOST", "AIGW_ROLLOUT_PUBLIC_URL",
        "AIGW_DATABASE_URL", "AIGW_DATABASE_POOL", "AIGW_NODE_ID", "AIGW_NODE_LEASE_S",
        "AIGW_WORKERS",
    }
)
"""Every environment variable the gateway process reads."""
