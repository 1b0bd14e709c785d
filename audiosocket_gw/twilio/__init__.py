"""Twilio emulation: the gateway plays Twilio's part toward an existing Media Streams app.

* :mod:`.streams` -- the Media Streams protocol, gateway side (sans I/O encoder/parser);
* :mod:`.twiml` -- parse the TwiML a voice webhook returns (``<Connect><Stream>`` ...);
* :mod:`.signature` -- ``X-Twilio-Signature`` computation and validation;
* :mod:`.ids` -- every Twilio identity: the ``CA``/``MZ``/``RE``/``AC`` SIDs of a call and
  its tenant, and the auth token signing requests (the one place they are derived);

A strict fake Media Streams app server, for tests and demos, lives with the tooling in
:mod:`audiosocket_gw.testing.fakeapp`.
"""

from __future__ import annotations

from .ids import (
    account_sid_for,
    auth_token_for,
    call_id_for_sid,
    call_sid_for,
    derived_account_sid,
    is_sid,
    recording_sid_for,
    stream_sid_for,
)
from .signature import compute_signature, validate_signature
from .streams import (
    AppClear,
    AppMark,
    AppMedia,
    AppMessage,
    StreamError,
    StreamProtocolError,
    StreamStateError,
    TwilioStreamEncoder,
    parse_app_message,
)
from .twiml import (
    ConnectStream,
    Hangup,
    Pause,
    Play,
    Redirect,
    Reject,
    Say,
    TwimlError,
    Unsupported,
    Verb,
    parse_twiml,
)

__all__ = [
    "AppClear",
    "AppMark",
    "AppMedia",
    "AppMessage",
    "ConnectStream",
    "Hangup",
    "Pause",
    "Play",
    "Redirect",
    "Reject",
    "Say",
    "StreamError",
    "StreamProtocolError",
    "StreamStateError",
    "TwilioStreamEncoder",
    "TwimlError",
    "Unsupported",
    "Verb",
    "account_sid_for",
    "auth_token_for",
    "call_id_for_sid",
    "call_sid_for",
    "compute_signature",
    "derived_account_sid",
    "is_sid",
    "parse_app_message",
    "parse_twiml",
    "recording_sid_for",
    "stream_sid_for",
    "validate_signature",
]
