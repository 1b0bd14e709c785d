"""AudioSocket framing, sans-I/O.

Asterisk's AudioSocket protocol (docs/PROTOCOLS.md §1.1) is a stream of frames::

    kind: u8 | length: u16 big-endian | payload[length]

This module turns bytes into events and events into bytes. It does no I/O, keeps no
clock and logs nothing, so it can be fed a byte at a time in tests and reused by the
gateway server and the PBX simulator alike.

Errors
------
``AudioSocketError`` is the root of the family.

* ``ProtocolError`` (and its subclasses) means *the peer* broke the protocol. The
  decoder is unusable afterwards; the connection must end. The server's action for
  every subclass is the same: log one line, count ``reason``, send ``00 00 00`` where
  it still can, close.
* ``UsageError`` means *we* misused the API (for example encoding an empty audio
  frame, which would make Asterisk kill the call).
"""

from __future__ import annotations

import enum
import struct
import uuid as uuid_mod
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AUDIO_KINDS",
    "DEFAULT_MAX_PAYLOAD",
    "HANGUP_FRAME",
    "SAMPLE_RATES",
    "Audio",
    "AudioSocketError",
    "BadPayload",
    "CallUUID",
    "Decoder",
    "Dtmf",
    "ErrorFrame",
    "Event",
    "Hangup",
    "Kind",
    "OversizeFrame",
    "ProtocolError",
    "TruncatedFrame",
    "UnexpectedFrame",
    "UnknownKind",
    "UsageError",
    "encode_audio",
    "encode_dtmf",
    "encode_error",
    "encode_hangup",
    "encode_uuid",
]

HEADER: Final = struct.Struct(">BH")
DEFAULT_MAX_PAYLOAD: Final = 65535


class Kind(enum.IntEnum):
    """Frame kinds Asterisk defines (0x02 exists only in a Go library: unknown here)."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


SAMPLE_RATES: Final[dict[int, int]] = {
    Kind.SLIN: 8000,
    Kind.SLIN12: 12000,
    Kind.SLIN16: 16000,
    Kind.SLIN24: 24000,
    Kind.SLIN32: 32000,
    Kind.SLIN44: 44100,
    Kind.SLIN48: 48000,
    Kind.SLIN96: 96000,
    Kind.SLIN192: 192000,
}
AUDIO_KINDS: Final = frozenset(SAMPLE_RATES)
_KNOWN: Final = frozenset(int(k) for k in Kind)
DTMF_DIGITS: Final = frozenset(b"0123456789*#ABCD")

HANGUP_FRAME: Final = b"\x00\x00\x00"


# --- errors -----------------------------------------------------------------


class AudioSocketError(Exception):
    """Root of every error this module raises."""


class ProtocolError(AudioSocketError):
    """The peer sent something the protocol does not allow. ``reason`` is a metric label."""

    reason = "protocol"


class UnknownKind(ProtocolError):
    reason = "unknown_kind"


class OversizeFrame(ProtocolError):
    reason = "oversize"


class BadPayload(ProtocolError):
    """Wrong payload for its kind: zero-length audio, a UUID that is not 16 bytes..."""

    reason = "bad_payload"


class UnexpectedFrame(ProtocolError):
    """A valid frame in the wrong place: anything before the UUID, a second UUID."""

    reason = "unexpected_frame"


class TruncatedFrame(ProtocolError):
    """The stream ended in the middle of a frame."""

    reason = "truncated"


class UsageError(AudioSocketError):
    """We misused the API: the frame we were asked to encode would break the call."""


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallUUID:
    uuid: uuid_mod.UUID


@dataclass(frozen=True, slots=True)
class Audio:
    kind: int
    data: bytes

    @property
    def rate(self) -> int:
        return SAMPLE_RATES[self.kind]


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """Kind 0x00. Asterisk never sends it (it closes the socket) but the spec allows it."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Kind 0xFF, with its optional one-byte code (0x01 hangup, 0x02 forwarding, 0x04 memory)."""

    code: int | None


Event = CallUUID | Audio | Dtmf | Hangup | ErrorFrame


# --- decoder ----------------------------------------------------------------


class Decoder:
    """Streaming AudioSocket decoder.

    ``feed(data)`` buffers bytes; ``next_event()`` returns the next complete event, or
    ``None`` when more bytes are needed, and raises a ``ProtocolError`` at the first bad
    frame (events before it have already been returned, in order). After an error the
    decoder stays broken. ``eof()`` reports a stream that stopped mid-frame.

    ``require_uuid_first`` enforces what Asterisk always does: the UUID frame comes
    first, and only once.
    """

    __slots__ = ("_buf", "_broken", "_seen_uuid", "max_payload", "require_uuid_first")

    def __init__(
        self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, require_uuid_first: bool = True
    ) -> None:
        if not 1 <= max_payload <= DEFAULT_MAX_PAYLOAD:
            raise UsageError(f"max_payload must be 1..65535, got {max_payload}")
        self.max_payload = max_payload
        self.require_uuid_first = require_uuid_first
        self._buf = bytearray()
        self._seen_uuid = False
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as an event."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> Event | None:
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if len(buf) < 3:
            return None
        kind, length = HEADER.unpack_from(buf)
        try:
            self._check_header(kind, length)
        except ProtocolError as exc:
            self._broken = exc
            raise
        end = 3 + length
        if len(buf) < end:
            return None
        payload = bytes(buf[3:end])
        del buf[:end]
        try:
            return self._event(kind, payload)
        except ProtocolError as exc:
            self._broken = exc
            raise

    def whole_slin_frame(self, data: bytes) -> bytes | None:
        """The payload when ``data`` is exactly one whole 8 kHz audio frame (kind 0x10)
        and nothing is buffered; None otherwise (then ``feed`` it as usual).

        The common case on a live call: Asterisk writes each 20 ms frame in one write
        (docs/PROTOCOLS.md §1.3) and TCP_NODELAY delivers it in one read. Skipping the
        buffer and the event object saves microseconds per frame; the checks are those
        of ``next_event`` for that kind.
        """
        n = len(data) - 3
        if (n <= 0 or data[0] != 0x10 or self._buf or self._broken is not None
                or (data[1] << 8 | data[2]) != n or n > self.max_payload
                or (self.require_uuid_first and not self._seen_uuid)):
            return None
        return data[3:]

    def events(self) -> list[Event]:
        """Every complete event buffered so far (raises at the first bad frame)."""
        out: list[Event] = []
        while (ev := self.next_event()) is not None:
            out.append(ev)
        return out

    def eof(self) -> None:
        """Call when the peer closed. Raises ``TruncatedFrame`` if a frame was cut."""
        if self._broken is None and self._buf:
            n = len(self._buf)
            self._buf.clear()
            self._broken = TruncatedFrame(f"connection closed inside a frame ({n} bytes pending)")
            raise self._broken

    def _check_header(self, kind: int, length: int) -> None:
        if kind not in _KNOWN:
            raise UnknownKind(f"unknown frame kind 0x{kind:02x} (length {length})")
        if length > self.max_payload:
            raise OversizeFrame(
                f"frame kind 0x{kind:02x} declares {length} bytes, limit {self.max_payload}"
            )
        if self.require_uuid_first and not self._seen_uuid and kind != Kind.UUID:
            raise UnexpectedFrame(f"first frame must be a UUID (0x01), got kind 0x{kind:02x}")
        if kind == Kind.UUID:
            if self.require_uuid_first and self._seen_uuid:
                raise UnexpectedFrame("second UUID frame on the same connection")
            if length != 16:
                raise BadPayload(f"UUID frame must carry 16 bytes, got {length}")
        elif kind in AUDIO_KINDS:
            if length == 0:
                raise BadPayload(f"zero-length audio frame (kind 0x{kind:02x})")
        elif kind == Kind.DTMF:
            if length != 1:
                raise BadPayload(f"DTMF frame must carry 1 byte, got {length}")
        elif kind == Kind.HANGUP:
            if length != 0:
                raise BadPayload(f"hangup frame must be empty, got {length} bytes")
        elif kind == Kind.ERROR and length > 1:
            raise BadPayload(f"error frame carries at most 1 byte, got {length}")

    def _event(self, kind: int, payload: bytes) -> Event:
        if kind in AUDIO_KINDS:
            return Audio(kind, payload)
        if kind == Kind.UUID:
            self._seen_uuid = True
            return CallUUID(uuid_mod.UUID(bytes=payload))
        if kind == Kind.DTMF:
            if payload[0] not in DTMF_DIGITS:
                raise BadPayload(f"DTMF frame carries invalid digit {payload!r}")
            return Dtmf(payload.decode("ascii"))
        if kind == Kind.HANGUP:
            return Hangup()
        return ErrorFrame(payload[0] if payload else None)


# --- encoders ---------------------------------------------------------------

_SLIN_HEADERS: Final = {n: HEADER.pack(Kind.SLIN, n) for n in (160, 320, 480, 640)}


def encode_audio(pcm: bytes, kind: int = Kind.SLIN) -> bytes:
    """Header + payload as one ``bytes``, so the caller can write the frame in one write."""
    n = len(pcm)
    if kind not in AUDIO_KINDS:
        raise UsageError(f"kind 0x{kind:02x} is not an audio kind")
    if n == 0:
        raise UsageError("refusing to encode a zero-length audio frame (Asterisk kills the call)")
    if n > DEFAULT_MAX_PAYLOAD:
        raise UsageError(f"audio frame of {n} bytes exceeds 65535")
    header = _SLIN_HEADERS.get(n) if kind == Kind.SLIN else None
    return (header or HEADER.pack(kind, n)) + pcm


def encode_hangup() -> bytes:
    return HANGUP_FRAME


# The following are what Asterisk sends; the PBX simulator uses them.


def encode_uuid(value: uuid_mod.UUID | str) -> bytes:
    u = value if isinstance(value, uuid_mod.UUID) else uuid_mod.UUID(value)
    return HEADER.pack(Kind.UUID, 16) + u.bytes


def encode_dtmf(digit: str) -> bytes:
    raw = digit.encode("ascii", "replace")
    if len(raw) != 1 or raw[0] not in DTMF_DIGITS:
        raise UsageError(f"invalid DTMF digit {digit!r}")
    return HEADER.pack(Kind.DTMF, 1) + raw


def encode_error(code: int | None = None) -> bytes:
    if code is None:
        return HEADER.pack(Kind.ERROR, 0)
    return HEADER.pack(Kind.ERROR, 1) + bytes([code])
