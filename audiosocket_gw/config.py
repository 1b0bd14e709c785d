"""Runtime settings of one gateway process.

One typed ``Config``; every field can come from the CLI or from the environment
(prefix ``AIGW_``), the CLI winning (uvicorn's pattern). Secrets such as
``OPENAI_API_KEY`` are read from the environment only and never logged: ``Config``'s
``repr`` leaves them out.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from .priority import MAX_PRIORITY

DEFAULT_AUDIOSOCKET = "127.0.0.1:9092"
DEFAULT_HTTP = "127.0.0.1:9094"
BACKENDS = ("echo", "openai", "twilio-stream")


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def parse_hostport(value: str, *, setting: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port). Port 0 means "any free port"."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{setting}: expected [IPv6]:PORT, got {value!r}")
        port_s = rest[1:]
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{setting}: expected HOST:PORT, got {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{setting}: port must be a number, got {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{setting}: port {port} out of range")
    return host, port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


MIN_API_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1, ::ffff:127.x) or ``localhost``.

    A name is never parsed by its prefix: ``127.evil.com`` is a DNS name like any other.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.lower() in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Config:
    # Listeners
    audiosocket: str = DEFAULT_AUDIOSOCKET
    http: str = DEFAULT_HTTP
    # Behaviour
    backend: str = "echo"
    data_dir: str = "./data"
    config: str | None = None
    allow_unregistered: bool = False
    echo_delay_ms: int = 200
    # Barge-in (local VAD on caller audio; mean |sample| thresholds)
    barge_in: bool = True
    vad_threshold: float = 600.0
    vad_onset_ms: int = 80
    # Limits
    max_connections: int = 1000
    max_connections_per_peer: int = 0  # 0: only max_connections (one Asterisk holds all)
    max_payload: int = 65535
    playout_max_seconds: float = 120.0
    pacer_spin_ms: float = 1.0  # wake this early and wait out the rest (epoll is ms-grained)
    realtime_priority: int = 0  # SCHED_FIFO priority of the event loop (0: normal)
    # Timeouts (seconds)
    uuid_timeout: float = 5.0
    shutdown_grace: float = 10.0
    write_stall_timeout: float = 5.0
    write_buffer_limit: int = 64 * 1024
    socket_sndbuf: int = 32 * 1024  # small kernel buffer: a stalled Asterisk shows up fast
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per line)
    # Backends
    openai_url: str = "wss://api.openai.com/v1/realtime"
    openai_model: str = "gpt-realtime"
    stream_url: str | None = None  # twilio-stream: the default agent's Media Streams URL
    debug_dump: bool = False  # per-call stereo WAV + JSON event log in <data-dir>/dumps
    # HTTP API: a bearer token is required whenever --http is not on loopback.
    api_token: str | None = field(default=None, repr=False)
    # /metrics carries tenant ids and per-tenant costs: with a token configured it
    # requires the token too, unless explicitly public.
    metrics_public: bool = False
    # Secrets: environment only, excluded from repr.
    openai_api_key: str | None = field(default=None, repr=False)

    ENV: Mapping[str, str] = field(
        default_factory=lambda: {
            "audiosocket": "AIGW_AUDIOSOCKET",
            "http": "AIGW_HTTP",
            "backend": "AIGW_BACKEND",
            "data_dir": "AIGW_DATA_DIR",
            "config": "AIGW_CONFIG",
            "allow_unregistered": "AIGW_ALLOW_UNREGISTERED",
            "echo_delay_ms": "AIGW_ECHO_DELAY_MS",
            "max_connections": "AIGW_MAX_CONNECTIONS",
            "max_connections_per_peer": "AIGW_MAX_CONNECTIONS_PER_PEER",
            "uuid_timeout": "AIGW_UUID_TIMEOUT",
            "shutdown_grace": "AIGW_SHUTDOWN_GRACE",
            "log_level": "AIGW_LOG_LEVEL",
            "log_format": "AIGW_LOG_FORMAT",
            "barge_in": "AIGW_BARGE_IN",
            "pacer_spin_ms": "AIGW_PACER_SPIN_MS",
            "realtime_priority": "AIGW_REALTIME_PRIORITY",
            "vad_threshold": "AIGW_VAD_THRESHOLD",
            "vad_onset_ms": "AIGW_VAD_ONSET_MS",
            "openai_api_key": "OPENAI_API_KEY",
            "openai_url": "AIGW_OPENAI_URL",
            "openai_model": "AIGW_OPENAI_MODEL",
            "stream_url": "AIGW_STREAM_URL",
            "debug_dump": "AIGW_DEBUG_DUMP",
            "api_token": "AIGW_API_TOKEN",
            "metrics_public": "AIGW_METRICS_PUBLIC",
        },
        repr=False,
        compare=False,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Defaults, then the environment, then explicit ``overrides`` (None = not given)."""
        env = os.environ if env is None else env
        cfg = cls()
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cfg.ENV.items():
            if var in env and env[var] != "":
                setattr(cfg, name, _coerce(name, types[name], env[var], var))
        for name, value in overrides.items():
            if value is not None:
                setattr(cfg, name, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        parse_hostport(self.audiosocket, setting="--audiosocket/AIGW_AUDIOSOCKET")
        parse_hostport(self.http, setting="--http/AIGW_HTTP")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend/AIGW_BACKEND: {self.backend!r} is not one of {BACKENDS}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format/AIGW_LOG_FORMAT: {self.log_format!r} is not "
                              "text or json")
        if self.echo_delay_ms < 0:
            raise ConfigError("echo delay must be >= 0 ms")
        if self.max_connections < 1:
            raise ConfigError("max connections must be >= 1")
        if self.max_connections_per_peer < 0:
            raise ConfigError("AIGW_MAX_CONNECTIONS_PER_PEER: must be >= 0")
        if not 0 <= self.realtime_priority <= MAX_PRIORITY:
            raise ConfigError(f"AIGW_REALTIME_PRIORITY: {self.realtime_priority} is not 0 "
                              f"(normal scheduling) to {MAX_PRIORITY}")
        if self.uuid_timeout <= 0 or self.shutdown_grace < 0:
            raise ConfigError("timeouts must be positive")
        host, _ = parse_hostport(self.http, setting="--http/AIGW_HTTP")
        if self.api_token is not None and self.api_token != "" and (
                len(self.api_token) < MIN_API_TOKEN_LENGTH
                or any(c.isspace() for c in self.api_token)):
            raise ConfigError(
                f"AIGW_API_TOKEN must be at least {MIN_API_TOKEN_LENGTH} characters with no "
                "whitespace (for example: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        if not is_loopback(host) and not self.api_token:
            raise ConfigError(
                "--http listens beyond loopback: set AIGW_API_TOKEN (a bearer token the API "
                "will require)"
            )

    @property
    def audiosocket_addr(self) -> tuple[str, int]:
        return parse_hostport(self.audiosocket, setting="audiosocket")

    @property
    def http_addr(self) -> tuple[str, int]:
        return parse_hostport(self.http, setting="http")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _coerce(name: str, typ: object, raw: str, var: str) -> object:
    t = str(typ)
    try:
        if t.startswith("bool"):
            return _env_bool(raw)
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{var}: cannot read {raw!r} as {t} for {name}") from None
    return raw
