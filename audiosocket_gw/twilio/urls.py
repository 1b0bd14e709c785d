"""Twilio REST URLs the gateway hands to apps (pure).

A TwiML ``<Record>`` posts ``RecordingUrl``: Twilio's media URL of the recording,
``{base}/2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}`` (no extension; an app
appends ``.wav`` or ``.mp3`` as with Twilio). Here ``base`` is the gateway's own HTTP API
(served by the Twilio REST emulation), so the app fetches the recording from the gateway.
"""

from __future__ import annotations

from .webhook import API_VERSION

__all__ = ["recording_media_url"]


def recording_media_url(base: str, account_sid: str, recording_sid: str) -> str:
    """The REST media URL of ``recording_sid`` under the API at ``base``."""
    return (f"{base.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}"
            f"/Recordings/{recording_sid}")
