"""Settings of the recording pipeline, read from the environment (prefix ``AIGW_``).

Why a separate settings object: the gateway's ``Config`` is owned elsewhere and the
upload worker must also run on its own (a child process after a crash), so the
pipeline reads its few knobs itself. Secrets (the transcription key) are kept out of
``repr``; S3 credentials are never read here at all: boto3
takes them from the standard AWS environment variables.

| variable | meaning | default |
|---|---|---|
| AIGW_MIXMONITOR_DIR | root of ``{root}/{tenant}/{call_id}.wav`` | /var/spool/asterisk/monitor |
| AIGW_S3_ENDPOINT | S3-compatible endpoint URL (MinIO, moto...); unset = AWS | - |
| AIGW_S3_BUCKET | bucket; unset = local-only mode (no upload) | - |
| AIGW_S3_PREFIX | key prefix | recordings/ |
| AIGW_S3_MULTIPART_THRESHOLD / _CHUNK | multipart above this size, part size (bytes) | 8 MiB |
| AIGW_RECORDING_RETENTION_S | keep the local file this long after a verified upload | 86400 |
| AIGW_RECORDING_URL_TTL_S | lifetime of presigned GET URLs | 3600 |
| AIGW_RECORDING_PUBLIC_BASE | public base URL (``{base}/{key}``) instead of presigning | - |
| AIGW_RECORDING_MAX_ATTEMPTS | upload/transcription attempts before ``failed`` | 10 |
| AIGW_RECORDING_BACKOFF_S / _MAX_S | first retry delay, cap (doubling) | 2 / 600 |
| AIGW_RECORDING_UPLOAD_CONCURRENCY | parallel uploads | 2 |
| AIGW_MIXMONITOR_STABLE_S | fallback: size+mtime unchanged this long after hangup | 2 |
| AIGW_MIXMONITOR_POLL_S | fallback poll interval | 0.5 |
| AIGW_MIXMONITOR_MISSING_S | file still absent this long after hangup = failed | 60 |
| AIGW_TRANSCRIBE_URL | OpenAI-compatible ``.../v1/audio/transcriptions`` URL | - |
| AIGW_TRANSCRIBE_MODEL | model name | whisper-1 |
| AIGW_TRANSCRIBE_KEY | bearer key of the transcription endpoint | - |
| AIGW_TRANSCRIBE_TIMEOUT_S | per request | 120 |
| AIGW_WHISPER_MODEL_PATH | local faster-whisper model (used if importable) | - |

Recording status callbacks are signed with the call's account auth token
(:func:`audiosocket_gw.twilio.ids.auth_token_for`: ``AIGW_TWILIO_AUTH_TOKEN`` unless the
tenant or agent names another variable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from ..config import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class RecordingSettings:
    """Every knob of capture, upload, URLs and transcription (see the module table)."""

    mixmonitor_dir: str = "/var/spool/asterisk/monitor"
    # S3
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "recordings/"
    s3_region: str = "us-east-1"
    multipart_threshold: int = 8 * MIB
    multipart_chunk: int = 8 * MIB
    verify_max_bytes: int = 2048 * MIB  # full read-back compare up to this size
    # Lifecycle
    retention_s: float = 86400.0
    url_ttl_s: int = 3600
    public_base: str | None = None
    max_attempts: int = 10
    backoff_s: float = 2.0
    backoff_max_s: float = 600.0
    upload_concurrency: int = 2
    sweep_s: float = 30.0
    # MixMonitor fallback completion detection
    stable_s: float = 2.0
    poll_s: float = 0.5
    missing_s: float = 60.0
    # Transcription
    transcribe_url: str | None = None
    transcribe_model: str = "whisper-1"
    transcribe_key: str | None = field(default=None, repr=False)
    transcribe_timeout_s: float = 120.0
    whisper_model_path: str | None = None
    # Status callbacks (signed with the account's auth token: twilio.ids.auth_token_for)
    callback_timeout_s: float = 10.0

    @property
    def local_only(self) -> bool:
        """No bucket configured: recordings stay on local disk and are never deleted."""
        return not self.s3_bucket

    @property
    def transcription_enabled(self) -> bool:
        return bool(self.transcribe_url or self.whisper_model_path)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: object
    ) -> RecordingSettings:
        """Defaults, then the environment, then ``overrides`` (None = not given)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        types = {f.name: str(f.type) for f in fields(cls)}
        for name, var in ENV.items():
            raw = env.get(var, "")
            if raw == "":
                continue
            t = types[name]
            try:
                if t.startswith("int"):
                    values[name] = int(raw)
                elif t.startswith("float"):
                    values[name] = float(raw)
                else:
                    values[name] = raw
            except ValueError:
                raise ConfigError(f"{var}: cannot read {raw!r} as {t}") from None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            values["s3_region"] = region
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.multipart_chunk < 5 * MIB and self.multipart_chunk != self.multipart_threshold:
            # S3 refuses parts under 5 MiB (except the last); a small *threshold* is fine.
            raise ConfigError("AIGW_S3_MULTIPART_CHUNK must be >= 5 MiB")
        if self.max_attempts < 1 or self.upload_concurrency < 1:
            raise ConfigError("recording attempts and upload concurrency must be >= 1")
        if self.retention_s < 0 or self.backoff_s <= 0 or self.poll_s <= 0:
            raise ConfigError("recording retention must be >= 0, backoff and poll > 0")


ENV: dict[str, str] = {
    "mixmonitor_dir": "AIGW_MIXMONITOR_DIR",
    "s3_endpoint": "AIGW_S3_ENDPOINT",
    "s3_bucket": "AIGW_S3_BUCKET",
    "s3_prefix": "AIGW_S3_PREFIX",
    "multipart_threshold": "AIGW_S3_MULTIPART_THRESHOLD",
    "multipart_chunk": "AIGW_S3_MULTIPART_CHUNK",
    "retention_s": "AIGW_RECORDING_RETENTION_S",
    "url_ttl_s": "AIGW_RECORDING_URL_TTL_S",
    "public_base": "AIGW_RECORDING_PUBLIC_BASE",
    "max_attempts": "AIGW_RECORDING_MAX_ATTEMPTS",
    "backoff_s": "AIGW_RECORDING_BACKOFF_S",
    "backoff_max_s": "AIGW_RECORDING_BACKOFF_MAX_S",
    "upload_concurrency": "AIGW_RECORDING_UPLOAD_CONCURRENCY",
    "sweep_s": "AIGW_RECORDING_SWEEP_S",
    "stable_s": "AIGW_MIXMONITOR_STABLE_S",
    "poll_s": "AIGW_MIXMONITOR_POLL_S",
    "missing_s": "AIGW_MIXMONITOR_MISSING_S",
    "transcribe_url": "AIGW_TRANSCRIBE_URL",
    "transcribe_model": "AIGW_TRANSCRIBE_MODEL",
    "transcribe_key": "AIGW_TRANSCRIBE_KEY",
    "transcribe_timeout_s": "AIGW_TRANSCRIBE_TIMEOUT_S",
    "whisper_model_path": "AIGW_WHISPER_MODEL_PATH",
}
"""Setting name -> environment variable."""


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempts`` (1 = first retry): base * 2^(n-1), capped."""
    return float(min(cap, base * (2 ** max(0, min(attempts - 1, 30)))))
