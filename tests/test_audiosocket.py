"""The sans-I/O AudioSocket codec: whole and byte-at-a-time feeding, every kind, fuzzing."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_gw import audiosocket as asp

CALL = uuid.UUID("8f2c1d3e-4b5a-4c6d-9e8f-0a1b2c3d4e5f")

# A session as Asterisk sends it: UUID, audio (20 ms and a 30 ms SIP frame and a short
# last frame of a playback), DTMF, then an error frame (defined, never sent in practice).
SESSION = (
    bytes.fromhex("010010") + CALL.bytes
    + bytes.fromhex("100140") + bytes(range(256)) + bytes(64)
    + bytes.fromhex("1001e0") + b"\x01\x02" * 240
    + bytes.fromhex("100114") + b"\x7f" * 276
    + bytes.fromhex("030001") + b"#"
    + bytes.fromhex("ff0001") + b"\x01"
)
EXPECTED = [
    asp.CallUUID(CALL),
    asp.Audio(0x10, bytes(range(256)) + bytes(64)),
    asp.Audio(0x10, b"\x01\x02" * 240),
    asp.Audio(0x10, b"\x7f" * 276),
    asp.Dtmf("#"),
    asp.ErrorFrame(1),
]


def decode_all(data: bytes, step: int | None = None, **kw: object) -> list[asp.Event]:
    dec = asp.Decoder(**kw)  # type: ignore[arg-type]
    out: list[asp.Event] = []
    if step is None:
        dec.feed(data)
        out.extend(dec.events())
    else:
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            out.extend(dec.events())
    dec.eof()
    return out


def test_session_whole() -> None:
    assert decode_all(SESSION) == EXPECTED


@pytest.mark.parametrize("step", [1, 2, 3, 7, 320, 321])
def test_session_any_split(step: int) -> None:
    assert decode_all(SESSION, step) == EXPECTED


def test_every_audio_kind_and_rate() -> None:
    for kind, rate in asp.SAMPLE_RATES.items():
        dec = asp.Decoder(require_uuid_first=False)
        dec.feed(bytes([kind, 0, 4]) + b"abcd")
        ev = dec.next_event()
        assert ev == asp.Audio(kind, b"abcd")
        assert isinstance(ev, asp.Audio) and ev.rate == rate
    assert asp.SAMPLE_RATES[0x12] == 16000  # not 0x11 (an old docs error)


def test_hangup_kind_and_empty_error() -> None:
    events = decode_all(b"\x00\x00\x00\xff\x00\x00", require_uuid_first=False)
    assert events == [asp.Hangup(), asp.ErrorFrame(None)]


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (bytes.fromhex("100140") + bytes(320), asp.UnexpectedFrame, "first frame must be a UUID"),
        (bytes.fromhex("01000f") + bytes(15), asp.BadPayload, "16 bytes"),
        (bytes.fromhex("020000"), asp.UnknownKind, "0x02"),
        (bytes.fromhex("420010"), asp.UnknownKind, "0x42"),
    ],
)
def test_bad_first_frames(data: bytes, error: type[Exception], text: str) -> None:
    dec = asp.Decoder()
    dec.feed(data)
    with pytest.raises(error, match=text):
        dec.next_event()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (bytes.fromhex("100000"), asp.BadPayload),  # zero-length audio
        (bytes.fromhex("030002") + b"12", asp.BadPayload),
        (bytes.fromhex("030001") + b"x", asp.BadPayload),
        (bytes.fromhex("000001") + b"\x00", asp.BadPayload),
        (bytes.fromhex("ff0002") + b"\x00\x00", asp.BadPayload),
        (bytes.fromhex("010010") + CALL.bytes, asp.UnexpectedFrame),  # second UUID
        (bytes.fromhex("77ffff"), asp.UnknownKind),
    ],
)
def test_bad_frames_after_uuid(frame: bytes, error: type[Exception]) -> None:
    dec = asp.Decoder()
    dec.feed(asp.encode_uuid(CALL) + asp.encode_audio(b"\x00\x01") + frame)
    assert isinstance(dec.next_event(), asp.CallUUID)
    assert dec.next_event() == asp.Audio(0x10, b"\x00\x01")  # events before the error survive
    with pytest.raises(error) as info:
        dec.next_event()
    assert isinstance(info.value, asp.ProtocolError)
    with pytest.raises(error):  # the decoder stays broken
        dec.next_event()


def test_oversize_is_rejected_from_the_header_alone() -> None:
    dec = asp.Decoder(max_payload=1024)
    dec.feed(asp.encode_uuid(CALL) + bytes.fromhex("100401"))  # 1025 declared, none sent
    dec.next_event()
    with pytest.raises(asp.OversizeFrame, match="1025"):
        dec.next_event()


def test_truncated_at_eof() -> None:
    dec = asp.Decoder()
    dec.feed(asp.encode_uuid(CALL) + bytes.fromhex("100140") + bytes(100))
    assert isinstance(dec.next_event(), asp.CallUUID)
    assert dec.next_event() is None
    assert dec.buffered == 103
    with pytest.raises(asp.TruncatedFrame, match="103 bytes"):
        dec.eof()


def test_encoders() -> None:
    assert asp.encode_hangup() == b"\x00\x00\x00"
    frame = asp.encode_audio(b"\x01\x00" * 160)
    assert frame[:3] == b"\x10\x01\x40" and len(frame) == 323
    assert asp.encode_audio(b"\x00" * 640, asp.Kind.SLIN16)[:3] == b"\x12\x02\x80"
    assert asp.encode_audio(b"\x00" * 321)[:3] == b"\x10\x01\x41"
    assert asp.encode_uuid(CALL) == b"\x01\x00\x10" + CALL.bytes
    assert asp.encode_dtmf("5") == b"\x03\x00\x015"
    assert asp.encode_error(2) == b"\xff\x00\x01\x02"
    assert decode_all(asp.encode_uuid(str(CALL))) == [asp.CallUUID(CALL)]


@pytest.mark.parametrize(
    "call",
    [
        lambda: asp.encode_audio(b""),
        lambda: asp.encode_audio(bytes(65536)),
        lambda: asp.encode_audio(b"ab", kind=asp.Kind.DTMF),
        lambda: asp.encode_dtmf("x"),
        lambda: asp.encode_dtmf("12"),
        lambda: asp.Decoder(max_payload=0),
    ],
)
def test_usage_errors(call: object) -> None:
    with pytest.raises(asp.UsageError):
        call()  # type: ignore[operator]


def test_usage_and_protocol_errors_share_one_root() -> None:
    assert issubclass(asp.UsageError, asp.AudioSocketError)
    assert issubclass(asp.ProtocolError, asp.AudioSocketError)
    assert not issubclass(asp.UsageError, asp.ProtocolError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64), st.booleans())
def test_fuzz_parse_or_documented_error(data: bytes, step: int, uuid_first: bool) -> None:
    """Whatever arrives, the decoder yields events or raises a ProtocolError: nothing else."""
    dec = asp.Decoder(max_payload=512, require_uuid_first=uuid_first)
    try:
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            for ev in dec.events():
                assert isinstance(ev, asp.CallUUID | asp.Audio | asp.Dtmf | asp.Hangup
                                  | asp.ErrorFrame)
        dec.eof()
    except asp.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=700), max_size=8), st.integers(1, 50))
def test_fuzz_audio_round_trip(payloads: list[bytes], step: int) -> None:
    stream = asp.encode_uuid(CALL) + b"".join(asp.encode_audio(p) for p in payloads)
    assert decode_all(stream, step) == [asp.CallUUID(CALL)] + [asp.Audio(0x10, p) for p in payloads]


def _fast_then_slow(dec: asp.Decoder, chunks: list[bytes]) -> list[object]:
    """What the server does: the whole-frame fast path, else feed + next_event."""
    out: list[object] = []
    for chunk in chunks:
        pcm = dec.whole_slin_frame(chunk)
        if pcm is not None:
            out.append(asp.Audio(asp.Kind.SLIN, pcm))
            continue
        dec.feed(chunk)
        while (ev := dec.next_event()) is not None:
            out.append(ev)
    return out


def test_whole_slin_frame_only_for_one_whole_slin_frame() -> None:
    u = uuid.uuid4()
    dec = asp.Decoder()
    frame = asp.encode_audio(b"\x01\x02" * 160)
    assert dec.whole_slin_frame(frame) is None  # before the UUID
    dec.feed(asp.encode_uuid(u))
    assert isinstance(dec.next_event(), asp.CallUUID)
    assert dec.whole_slin_frame(frame) == b"\x01\x02" * 160
    assert dec.whole_slin_frame(frame + frame) is None  # two frames: the slow path
    assert dec.whole_slin_frame(frame[:100]) is None  # partial
    assert dec.whole_slin_frame(asp.encode_audio(bytes(640), asp.Kind.SLIN16)) is None
    assert dec.whole_slin_frame(b"\x10\x00\x00") is None  # zero-length: the decoder's error
    assert dec.whole_slin_frame(asp.encode_dtmf("5")) is None
    dec.feed(frame[:1])  # something buffered: order demands the slow path
    assert dec.whole_slin_frame(frame) is None
    small = asp.Decoder(max_payload=100, require_uuid_first=False)
    assert small.whole_slin_frame(frame) is None  # over the limit: the decoder's error


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12),
       st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_fast_path_and_decoder_give_the_same_events(sizes: list[int], cuts: list[int]) -> None:
    stream = asp.encode_uuid(uuid.uuid4())
    stream += b"".join(asp.encode_audio(bytes([i % 256]) * n) for i, n in enumerate(sizes))
    stream += asp.encode_dtmf("7")
    chunks, pos = [], 0
    for c in cuts:
        if pos >= len(stream):
            break
        chunks.append(stream[pos:pos + c])
        pos += c
    chunks.append(stream[pos:])
    # Also whole frames, as Asterisk writes them: the fast path then takes them.
    whole = [stream[:19]] + [asp.encode_audio(bytes([i % 256]) * n)
                             for i, n in enumerate(sizes)] + [asp.encode_dtmf("7")]
    reference = asp.Decoder()
    reference.feed(stream)
    expected = reference.events()
    assert _fast_then_slow(asp.Decoder(), [c for c in chunks if c]) == expected
    assert _fast_then_slow(asp.Decoder(), whole) == expected
