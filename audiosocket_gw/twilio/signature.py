"""Twilio request signatures (the ``X-Twilio-Signature`` header).

Why: when the gateway emulates Twilio's voice webhook and status callbacks toward an
existing app, apps that validate ``X-Twilio-Signature`` (as Twilio advises) must accept the
gateway's requests; the gateway signs with the auth token configured for the app.

How (Twilio's documented algorithm): take the full URL exactly as requested (scheme, host,
path and query string), append every POST parameter as name immediately followed by value,
in parameters sorted by name, compute HMAC-SHA1 over the UTF-8 bytes with the auth token as
key, and base64-encode the digest. For a GET (or a JSON body) the params are empty.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "compute_signature", "validate_signature"]

SIGNATURE_HEADER = "X-Twilio-Signature"
"""HTTP header carrying the signature."""


def compute_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Return the base64 HMAC-SHA1 signature Twilio would send for ``url`` and ``params``."""
    payload = url + "".join(key + params[key] for key in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode("ascii")


def validate_signature(
    auth_token: str, url: str, params: Mapping[str, str], signature: str
) -> bool:
    """Return True if ``signature`` is the valid signature of ``url`` and ``params``.

    The comparison is constant-time; a signature that is not ASCII simply fails.
    """
    expected = compute_signature(auth_token, url, params).encode("ascii")
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
