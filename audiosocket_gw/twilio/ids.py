"""Twilio-style resource identifiers (SIDs).

Why: a Twilio Media Streams app sees ``streamSid``, ``callSid`` and ``accountSid`` values
and some apps validate their shape (or log and key state by them), so the gateway mints
identifiers that look exactly like Twilio's: a two-letter uppercase type prefix followed by
32 lowercase hexadecimal digits (128 random bits).

How: :func:`secrets.token_hex` for the random part; :func:`is_sid` checks the shape only.
Pure: no I/O besides the OS random source.
"""

from __future__ import annotations

import re
import secrets

__all__ = [
    "ACCOUNT_PREFIX",
    "CALL_PREFIX",
    "RECORDING_PREFIX",
    "STREAM_PREFIX",
    "is_sid",
    "new_account_sid",
    "new_call_sid",
    "new_recording_sid",
    "new_sid",
    "new_stream_sid",
]

STREAM_PREFIX = "MZ"
"""Prefix of a Media Streams stream SID."""

CALL_PREFIX = "CA"
"""Prefix of a call SID."""

RECORDING_PREFIX = "RE"
"""Prefix of a recording SID."""

ACCOUNT_PREFIX = "AC"
"""Prefix of an account SID."""

_PREFIX_RE = re.compile(r"[A-Z]{2}")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"SID prefix must be two uppercase ASCII letters, got {prefix!r}")


def new_sid(prefix: str) -> str:
    """Return a new random SID: ``prefix`` (two uppercase letters) + 32 lowercase hex digits.

    Raises ValueError if ``prefix`` is not two uppercase ASCII letters.
    """
    _check_prefix(prefix)
    return prefix + secrets.token_hex(16)


def new_stream_sid() -> str:
    """Return a new Media Streams stream SID (``MZ`` + 32 hex digits)."""
    return new_sid(STREAM_PREFIX)


def new_call_sid() -> str:
    """Return a new call SID (``CA`` + 32 hex digits)."""
    return new_sid(CALL_PREFIX)


def new_recording_sid() -> str:
    """Return a new recording SID (``RE`` + 32 hex digits)."""
    return new_sid(RECORDING_PREFIX)


def new_account_sid() -> str:
    """Return a new account SID (``AC`` + 32 hex digits)."""
    return new_sid(ACCOUNT_PREFIX)


def is_sid(prefix: str, s: object) -> bool:
    """Return True if ``s`` is a string of the form ``prefix`` + 32 lowercase hex digits.

    Only the shape is checked. Anything that is not a ``str`` gives False.
    Raises ValueError if ``prefix`` is not two uppercase ASCII letters.
    """
    _check_prefix(prefix)
    if not isinstance(s, str) or len(s) != 34 or not s.startswith(prefix):
        return False
    return _HEX32_RE.fullmatch(s, 2) is not None
