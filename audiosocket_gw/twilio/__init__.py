"""Twilio emulation: the gateway plays Twilio's part toward an existing Media Streams app.

* :mod:`.streams` -- the Media Streams protocol, gateway side (sans I/O encoder/parser);
* :mod:`.twiml` -- parse the TwiML a voice webhook returns (``<Connect><Stream>`` ...);
* :mod:`.signature` -- ``X-Twilio-Signature`` computation and validation;
* :mod:`.ids` -- Twilio-shaped SIDs (``MZ``/``CA``/``RE``/``AC`` + 32 hex digits).

A strict fake Media Streams app server, for tests and demos, lives with the tooling in
:mod:`audiosocket_gw.testing.fakeapp`.
"""

from __future__ import annotations

from .ids import (
    is_sid,
    new_account_sid,
    new_call_sid,
    new_recording_sid,
    new_stream_sid,
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
    "compute_signature",
    "is_sid",
    "new_account_sid",
    "new_call_sid",
    "new_recording_sid",
    "new_stream_sid",
    "parse_app_message",
    "parse_twiml",
    "validate_signature",
]
