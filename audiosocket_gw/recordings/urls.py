"""Recording URLs and the Twilio-style recording status callback payload (pure).

A recording's URL is, in order: ``{AIGW_RECORDING_PUBLIC_BASE}/{key}`` when a public
base is configured (a CDN or a public bucket), else a presigned GET URL of the
configured lifetime (S3 mode), else None (local-only mode without a public base).

The status callback mirrors Twilio's ``recordingStatusCallback`` form fields so an
app migrated from Twilio keeps working: ``AccountSid``, ``CallSid``, ``RecordingSid``
(all three made by :mod:`audiosocket_gw.twilio.ids`), ``RecordingUrl``,
``RecordingStatus`` (completed | failed | absent), ``RecordingDuration`` (whole
seconds), ``RecordingChannels``, ``RecordingSource``, ``RecordingStartTime`` (RFC 2822).
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate

from .queue import RecordingRow
from .settings import RecordingSettings


def object_key(prefix: str, tenant: str, call_id: str) -> str:
    """Deterministic key: re-uploading after a crash overwrites, never duplicates."""
    return f"{prefix}{tenant}/{call_id}.wav"


def recording_url(
    row: RecordingRow,
    settings: RecordingSettings,
    presign: Callable[[str, int], str] | None,
) -> str | None:
    if settings.public_base:
        return f"{settings.public_base.rstrip('/')}/{row.key}"
    if presign is not None and row.state in ("verified", "deleted", "uploaded"):
        return presign(row.key, settings.url_ttl_s)
    return None


def status_callback_params(
    row: RecordingRow,
    *,
    url: str | None,
    status: str,
    account_sid: str,
    call_sid: str,
) -> dict[str, str]:
    params = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "RecordingSid": row.recording_sid,
        "RecordingStatus": status,
        "RecordingDuration": str(int(round(row.duration_s))),
        "RecordingChannels": str(row.channels),
        "RecordingSource": "StartCallRecordingAPI" if row.source == "gateway" else "DialVerb",
        "RecordingStartTime": formatdate(row.captured_at - row.duration_s, usegmt=True),
    }
    if url:
        params["RecordingUrl"] = url
    if status == "failed":
        params["ErrorCode"] = "0"
    return params
