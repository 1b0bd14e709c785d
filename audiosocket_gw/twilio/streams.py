"""Twilio Media Streams protocol, the gateway's side (sans I/O).

Why: the gateway plays Twilio's part toward an existing bidirectional ``<Connect><Stream>``
AI app, so what it sends must be byte-for-byte the shape Twilio sends (docs/PROTOCOLS.md §8.1), and
what the app sends must be parsed strictly enough to catch a broken app, but no stricter
than Twilio is.

How:

* :class:`TwilioStreamEncoder` turns call events into the JSON text frames Twilio sends
  (``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``). It owns the counters:
  one ``sequenceNumber`` across every event after ``connected`` (``start`` is ``"1"``),
  ``chunk`` counting media from ``"1"``, and ``timestamp`` = milliseconds of audio already
  sent (8 mu-law samples per ms), derived from the sample count, never from a wall clock.
  All three are JSON strings, as Twilio sends them.
* :func:`parse_app_message` turns one frame from the app into :class:`AppMedia`,
  :class:`AppMark` or :class:`AppClear`. The ``streamSid`` the app put in the message is
  reported in ``stream_sid`` (None if absent); comparing it with ours is the caller's call.

Errors (one root, :class:`StreamError`):

* :class:`StreamProtocolError` -- the app sent something malformed: not UTF-8 / not JSON,
  not an object, unknown or missing ``event``, missing or mistyped fields, bad base64, or a
  media payload over :data:`MAX_APP_PAYLOAD` decoded bytes. Suggested action: log it with
  the message and drop the frame (Twilio ignores such frames) or close, per policy.
* :class:`StreamStateError` -- the gateway misused the encoder (``media`` before ``start``,
  anything after ``stop``, ``start`` twice...). This is a bug in the caller.

Bad arguments (an empty media payload, a DTMF digit that is not one of ``0-9 * # A-D``)
raise ValueError.

Pure: no asyncio, no logging, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from binascii import b2a_base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "MAX_APP_PAYLOAD",
    "MEDIA_FORMAT",
    "AppClear",
    "AppMark",
    "AppMedia",
    "AppMessage",
    "StreamError",
    "StreamProtocolError",
    "StreamStateError",
    "TwilioStreamEncoder",
    "parse_app_message",
]

MAX_APP_PAYLOAD: Final = 1 << 20
"""Largest decoded media payload accepted from the app, in bytes (1 MiB)."""

MEDIA_FORMAT: Final[Mapping[str, object]] = MappingProxyType(
    {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
)
"""The ``mediaFormat`` object of a ``start`` event: 8 kHz mono mu-law."""

SAMPLES_PER_MS: Final = 8
"""mu-law bytes (samples) per millisecond at 8 kHz."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""DTMF digits the encoder accepts."""

_EMPTY_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})

# Longest base64 text that can decode to at most MAX_APP_PAYLOAD bytes (with padding).
_MAX_B64_CHARS: Final = 4 * ((MAX_APP_PAYLOAD + 2) // 3)


class StreamError(Exception):
    """Root of every error raised by this module."""


class StreamProtocolError(StreamError):
    """The app sent a frame that breaks the Media Streams protocol."""


class StreamStateError(StreamError):
    """The encoder was used out of order (a bug in the gateway, not in the app)."""


@dataclass(frozen=True, slots=True)
class AppMedia:
    """Audio from the app: ``payload`` is raw mu-law (decoded from base64), any length."""

    payload: bytes
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AppMark:
    """A mark from the app, to be echoed once all audio sent before it has played."""

    name: str
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AppClear:
    """The app asks to drop all buffered audio and echo every pending mark at once."""

    stream_sid: str | None = None


AppMessage = AppMedia | AppMark | AppClear
"""Any message the app can send."""


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _dumps_value(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class TwilioStreamEncoder:
    """Builds the JSON text frames Twilio sends to a Media Streams app, for one stream.

    Call order: :meth:`connected`, :meth:`start`, then any of :meth:`media`, :meth:`dtmf`,
    :meth:`mark`, and finally :meth:`stop`; anything else raises :class:`StreamStateError`.
    """

    def __init__(
        self,
        *,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        custom_parameters: Mapping[str, str] = _EMPTY_PARAMS,
        tracks: Sequence[str] = ("inbound",),
    ) -> None:
        """Store the identifiers announced in ``start`` and reset all counters.

        ``custom_parameters`` are the ``<Parameter>`` name/value pairs of the TwiML (copied).
        ``tracks`` is what ``start.tracks`` lists; media frames are always ``inbound``.
        """
        if isinstance(tracks, str) or not tracks:
            raise ValueError("tracks must be a non-empty sequence of track names")
        self.stream_sid: Final = stream_sid
        self.call_sid: Final = call_sid
        self.account_sid: Final = account_sid
        self.custom_parameters: Final[dict[str, str]] = dict(custom_parameters)
        self.tracks: Final[tuple[str, ...]] = tuple(tracks)
        self._connected = False
        self._started = False
        self._stopped = False
        self._sequence = 0
        self._chunk = 0
        self._samples = 0
        # ``media`` is built 50 times a second per call: its constant tail is encoded
        # once (the same bytes ``_dumps`` gives the whole dict; tested).
        self._media_tail = '"},"streamSid":' + _dumps_value(stream_sid) + "}"

    # -- state ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once :meth:`start` has been built."""
        return self._started

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has been built."""
        return self._stopped

    @property
    def sequence_number(self) -> int:
        """The ``sequenceNumber`` of the last event built (0 before ``start``)."""
        return self._sequence

    @property
    def chunks_sent(self) -> int:
        """Number of ``media`` events built so far."""
        return self._chunk

    @property
    def samples_sent(self) -> int:
        """Number of mu-law samples (bytes) sent in ``media`` events so far."""
        return self._samples

    @property
    def elapsed_ms(self) -> int:
        """Milliseconds of audio sent so far: the ``timestamp`` of the next media event."""
        return self._samples // SAMPLES_PER_MS

    def _require_streaming(self, what: str) -> None:
        if not self._started:
            raise StreamStateError(f"{what} before start")
        if self._stopped:
            raise StreamStateError(f"{what} after stop")

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    # -- events --------------------------------------------------------------------------

    def connected(self) -> str:
        """Return the ``connected`` event, the first frame (it has no sequenceNumber)."""
        if self._connected:
            raise StreamStateError("connected sent twice")
        self._connected = True
        return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        """Return the ``start`` event (``sequenceNumber`` ``"1"``)."""
        if not self._connected:
            raise StreamStateError("start before connected")
        if self._started:
            raise StreamStateError("start sent twice")
        self._started = True
        return _dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(self.tracks),
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": dict(MEDIA_FORMAT),
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, ulaw: bytes) -> str:
        """Return a ``media`` event carrying ``ulaw`` (normally 160 bytes = 20 ms).

        ``timestamp`` is the audio time at the first sample of this chunk, from the number
        of samples sent before it. Raises ValueError on an empty payload.
        """
        self._require_streaming("media")
        if not ulaw:
            raise ValueError("media payload must not be empty")
        self._chunk += 1
        self._sequence += 1
        timestamp = self._samples // SAMPLES_PER_MS
        self._samples += len(ulaw)
        # == _dumps({"event": "media", "sequenceNumber": ..., "media": {"track":
        # "inbound", "chunk", "timestamp", "payload"}, "streamSid": ...}), built faster.
        return (f'{{"event":"media","sequenceNumber":"{self._sequence}","media":'
                f'{{"track":"inbound","chunk":"{self._chunk}","timestamp":"{timestamp}",'
                f'"payload":"{b2a_base64(ulaw, newline=False).decode("ascii")}'
                f"{self._media_tail}")

    def dtmf(self, digit: str) -> str:
        """Return a ``dtmf`` event for one ``digit`` (``0-9``, ``*``, ``#``, ``A-D``)."""
        self._require_streaming("dtmf")
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return _dumps(
            {
                "event": "dtmf",
                "sequenceNumber": self._next_sequence(),
                "dtmf": {"track": "inbound_track", "digit": digit},
                "streamSid": self.stream_sid,
            }
        )

    def mark(self, name: str) -> str:
        """Return a ``mark`` event: the echo of the app's mark ``name``."""
        self._require_streaming("mark")
        return _dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next_sequence(),
                "mark": {"name": name},
                "streamSid": self.stream_sid,
            }
        )

    def stop(self) -> str:
        """Return the ``stop`` event; the encoder accepts nothing afterwards."""
        self._require_streaming("stop")
        self._stopped = True
        return _dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )


# -- app -> gateway ----------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise StreamProtocolError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise StreamProtocolError(
            f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _decode_payload(payload: str) -> bytes:
    # Tolerate MIME-style line breaks (base64.encodebytes), nothing else.
    compact = payload.replace("\r", "").replace("\n", "")
    if len(compact) > _MAX_B64_CHARS:
        raise StreamProtocolError(
            f"media: payload larger than {MAX_APP_PAYLOAD} bytes ({len(compact)} base64 chars)"
        )
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StreamProtocolError(f"media: payload is not valid base64 ({exc})") from None
    if len(data) > MAX_APP_PAYLOAD:
        raise StreamProtocolError(
            f"media: payload larger than {MAX_APP_PAYLOAD} bytes ({len(data)} bytes)"
        )
    return data


def parse_app_message(text: str | bytes) -> AppMessage:
    """Parse one frame from the app into :class:`AppMedia`, :class:`AppMark` or :class:`AppClear`.

    ``text`` is a text frame (``str``) or a binary frame holding UTF-8 JSON (``bytes``).
    Unknown extra fields are ignored. The message's ``streamSid`` (None if absent) is
    returned in ``stream_sid``. Raises :class:`StreamProtocolError` with a precise message
    on anything malformed.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamProtocolError(f"frame is not UTF-8 ({exc})") from None
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamProtocolError(f"frame is not JSON ({exc})") from None
    except RecursionError:
        raise StreamProtocolError("frame is not JSON (nested too deeply)") from None
    if not isinstance(msg, dict):
        raise StreamProtocolError(f"frame is not a JSON object but {type(msg).__name__}")
    event = _field(msg, "event", str, "message")
    stream_sid = msg.get("streamSid")
    if stream_sid is not None and not isinstance(stream_sid, str):
        raise StreamProtocolError(
            f"{event}: 'streamSid' must be str, got {type(stream_sid).__name__}"
        )
    if event == "media":
        media = _field(msg, "media", dict, "media")
        payload = _field(media, "payload", str, "media")
        return AppMedia(_decode_payload(payload), stream_sid)
    if event == "mark":
        mark = _field(msg, "mark", dict, "mark")
        return AppMark(_field(mark, "name", str, "mark"), stream_sid)
    if event == "clear":
        return AppClear(stream_sid)
    raise StreamProtocolError(f"unknown event kind {event[:64]!r}")
