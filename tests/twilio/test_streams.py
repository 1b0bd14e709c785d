"""Tests for the Media Streams encoder (gateway -> app) and parser (app -> gateway)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket_gw.twilio.streams import (
    MAX_APP_PAYLOAD,
    AppClear,
    AppMark,
    AppMedia,
    StreamError,
    StreamProtocolError,
    StreamStateError,
    TwilioStreamEncoder,
    parse_app_message,
)

MZ = "MZ" + "1" * 32
CA = "CA" + "2" * 32
AC = "AC" + "3" * 32


def make(**kw) -> TwilioStreamEncoder:
    return TwilioStreamEncoder(stream_sid=MZ, call_sid=CA, account_sid=AC, **kw)


def started(**kw) -> TwilioStreamEncoder:
    enc = make(**kw)
    enc.connected()
    enc.start()
    return enc


# -- encoder -------------------------------------------------------------------------------


def test_connected_exact():
    assert json.loads(make().connected()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "1.0.0",
    }


def test_start_exact_shape_and_key_order():
    enc = make(custom_parameters={"caller": "+15551234567", "lang": "fr"})
    enc.connected()
    text = enc.start()
    assert json.loads(text) == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": AC,
            "streamSid": MZ,
            "callSid": CA,
            "tracks": ["inbound"],
            "customParameters": {"caller": "+15551234567", "lang": "fr"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": MZ,
    }
    assert list(json.loads(text)) == ["event", "sequenceNumber", "start", "streamSid"]
    assert '"sampleRate":8000' in text and '"channels":1' in text  # numbers, not strings


def test_custom_parameters_are_copied():
    params = {"a": "1"}
    enc = make(custom_parameters=params)
    params["a"] = "changed"
    enc.connected()
    assert json.loads(enc.start())["start"]["customParameters"] == {"a": "1"}


def test_media_shape():
    enc = started()
    msg = json.loads(enc.media(b"\xff" * 160))
    assert msg == {
        "event": "media",
        "sequenceNumber": "2",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(b"\xff" * 160).decode(),
        },
        "streamSid": MZ,
    }


def test_counters_are_strings_and_shared_sequence():
    enc = started()
    frames = [
        enc.media(bytes(160)),
        enc.dtmf("5"),
        enc.media(bytes(160)),
        enc.mark("m1"),
        enc.media(bytes(80)),  # a short frame: 10 ms
        enc.media(bytes(160)),
        enc.stop(),
    ]
    msgs = [json.loads(f) for f in frames]
    assert [m["sequenceNumber"] for m in msgs] == ["2", "3", "4", "5", "6", "7", "8"]
    media = [m["media"] for m in msgs if m["event"] == "media"]
    assert [m["chunk"] for m in media] == ["1", "2", "3", "4"]
    assert [m["timestamp"] for m in media] == ["0", "20", "40", "50"]
    assert all(m["streamSid"] == MZ for m in msgs)
    assert enc.sequence_number == 8
    assert enc.chunks_sent == 4
    assert enc.samples_sent == 560
    assert enc.elapsed_ms == 70


def test_timestamp_comes_from_samples_not_clock():
    enc = started()
    stamps = [json.loads(enc.media(bytes(160)))["media"]["timestamp"] for _ in range(500)]
    assert stamps == [str(20 * i) for i in range(500)]


def test_dtmf_mark_stop_shapes():
    enc = started()
    assert json.loads(enc.dtmf("#")) == {
        "event": "dtmf",
        "sequenceNumber": "2",
        "dtmf": {"track": "inbound_track", "digit": "#"},
        "streamSid": MZ,
    }
    assert json.loads(enc.mark("greeting-end")) == {
        "event": "mark",
        "sequenceNumber": "3",
        "mark": {"name": "greeting-end"},
        "streamSid": MZ,
    }
    assert json.loads(enc.stop()) == {
        "event": "stop",
        "sequenceNumber": "4",
        "stop": {"accountSid": AC, "callSid": CA},
        "streamSid": MZ,
    }
    assert enc.stopped


def test_tracks_are_announced():
    enc = make(tracks=["inbound", "outbound"])
    enc.connected()
    assert json.loads(enc.start())["start"]["tracks"] == ["inbound", "outbound"]
    with pytest.raises(ValueError):
        make(tracks=())
    with pytest.raises(ValueError):
        make(tracks="inbound")


def test_order_is_enforced():
    enc = make()
    with pytest.raises(StreamStateError, match="start before connected"):
        enc.start()
    enc.connected()
    with pytest.raises(StreamStateError, match="connected sent twice"):
        enc.connected()
    calls: list[Callable[[], str]] = [
        lambda: enc.media(b"x"),
        lambda: enc.dtmf("1"),
        lambda: enc.mark("m"),
        enc.stop,
    ]
    for call in calls:
        with pytest.raises(StreamStateError, match="before start"):
            call()
    enc.start()
    with pytest.raises(StreamStateError, match="start sent twice"):
        enc.start()
    enc.stop()
    for call in calls:
        with pytest.raises(StreamStateError, match="after stop"):
            call()
    assert issubclass(StreamStateError, StreamError)


def test_bad_arguments():
    enc = started()
    with pytest.raises(ValueError):
        enc.media(b"")
    for digit in ("", "12", "x", "e", " "):
        with pytest.raises(ValueError):
            enc.dtmf(digit)
    for digit in "0123456789*#ABCD":
        assert json.loads(enc.dtmf(digit))["dtmf"]["digit"] == digit
    # failed calls did not consume sequence numbers
    assert enc.sequence_number == 17


def test_non_ascii_mark_name_round_trips():
    enc = started()
    assert json.loads(enc.mark("fin-é ☎"))["mark"]["name"] == "fin-é ☎"


# -- parser --------------------------------------------------------------------------------


def test_parse_media_mark_clear():
    payload = bytes(range(256)) * 3
    text = json.dumps(
        {
            "event": "media",
            "streamSid": MZ,
            "media": {"payload": base64.b64encode(payload).decode()},
        }
    )
    assert parse_app_message(text) == AppMedia(payload, MZ)
    assert parse_app_message(text.encode()) == AppMedia(payload, MZ)
    assert parse_app_message(
        json.dumps({"event": "mark", "streamSid": MZ, "mark": {"name": "greeting-end"}})
    ) == AppMark("greeting-end", MZ)
    assert parse_app_message(json.dumps({"event": "clear", "streamSid": MZ})) == AppClear(MZ)


def test_stream_sid_reported_not_judged():
    assert parse_app_message('{"event":"clear"}') == AppClear(None)
    assert parse_app_message('{"event":"clear","streamSid":"MZother"}').stream_sid == "MZother"
    msg = parse_app_message('{"event":"mark","mark":{"name":"x"}}')
    assert msg == AppMark("x", None)


def test_extra_fields_ignored():
    msg = parse_app_message(
        '{"event":"media","sequenceNumber":"9","media":{"payload":"/w==","track":"outbound",'
        '"chunk":"3"},"foo":1}'
    )
    assert msg == AppMedia(b"\xff")


def test_mime_line_breaks_tolerated():
    data = bytes(range(200))
    wrapped = base64.encodebytes(data).decode()
    assert "\n" in wrapped
    msg = parse_app_message(json.dumps({"event": "media", "media": {"payload": wrapped}}))
    assert msg == AppMedia(data)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ("nope", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ("[1,2]", "not a JSON object but list"),
        ('"media"', "not a JSON object but str"),
        ("null", "not a JSON object but NoneType"),
        ("{}", "missing 'event'"),
        ('{"event":5}', "'event' must be str"),
        ('{"event":"start"}', "unknown event kind 'start'"),
        ('{"event":"Media","media":{"payload":""}}', "unknown event kind 'Media'"),
        ('{"event":"media"}', "media: missing 'media'"),
        ('{"event":"media","media":"abc"}', "'media' must be dict"),
        ('{"event":"media","media":{}}', "media: missing 'payload'"),
        ('{"event":"media","media":{"payload":123}}', "'payload' must be str"),
        ('{"event":"media","media":{"payload":"@@@@"}}', "not valid base64"),
        ('{"event":"media","media":{"payload":"/w="}}', "not valid base64"),
        ('{"event":"media","media":{"payload":"/w== "}}', "not valid base64"),
        ('{"event":"media","media":{"payload":"/wé="}}', "not valid base64"),
        ('{"event":"mark"}', "mark: missing 'mark'"),
        ('{"event":"mark","mark":{}}', "mark: missing 'name'"),
        ('{"event":"mark","mark":{"name":7}}', "'name' must be str"),
        ('{"event":"clear","streamSid":7}', "'streamSid' must be str"),
        ("[" * 100000 + "]" * 100000, "not JSON"),
    ],
)
def test_protocol_errors(frame, match):
    with pytest.raises(StreamProtocolError, match=match):
        parse_app_message(frame)


def test_payload_size_limit():
    ok = base64.b64encode(bytes(MAX_APP_PAYLOAD)).decode()
    msg = parse_app_message(json.dumps({"event": "media", "media": {"payload": ok}}))
    assert isinstance(msg, AppMedia) and len(msg.payload) == MAX_APP_PAYLOAD
    for extra in (1, 2):  # caught after decoding
        too_big = base64.b64encode(bytes(MAX_APP_PAYLOAD + extra)).decode()
        with pytest.raises(StreamProtocolError, match=r"larger than .* bytes\)"):
            parse_app_message(json.dumps({"event": "media", "media": {"payload": too_big}}))
    huge = base64.b64encode(bytes(MAX_APP_PAYLOAD + 3)).decode()  # caught before decoding
    with pytest.raises(StreamProtocolError, match="base64 chars"):
        parse_app_message(json.dumps({"event": "media", "media": {"payload": huge}}))


def test_empty_payload_is_accepted():
    assert parse_app_message('{"event":"media","media":{"payload":""}}') == AppMedia(b"")


@given(st.binary(max_size=4000), st.one_of(st.none(), st.text(max_size=40)))
def test_media_round_trip(payload, sid):
    msg: dict[str, object] = {
        "event": "media",
        "media": {"payload": base64.b64encode(payload).decode()},
    }
    if sid is not None:
        msg["streamSid"] = sid
    assert parse_app_message(json.dumps(msg)) == AppMedia(payload, sid)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_never_raises_anything_else(frame):
    try:
        parse_app_message(frame)
    except StreamProtocolError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["event", "media", "mark", "name", "payload", "streamSid", "x"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_parse_json_values_only_raises_protocol_error(value):
    try:
        parse_app_message(json.dumps(value))
    except StreamProtocolError:
        pass


def test_encoder_media_parses_back_as_app_media():
    # The app-side shape is a subset of Twilio's media event: our own frames parse.
    enc = started()
    assert parse_app_message(enc.media(b"\x01\x02\x03")) == AppMedia(b"\x01\x02\x03", MZ)


@given(st.text(max_size=40), st.lists(st.binary(min_size=1, max_size=400), max_size=4))
def test_media_template_is_byte_identical_to_the_dict_dump(sid, payloads):
    """``media`` is built from a template (hot path): the same text ``json.dumps`` of the
    dict gives, whatever the streamSid holds (quotes, backslashes, non-ASCII)."""
    enc = TwilioStreamEncoder(stream_sid=sid, call_sid=CA, account_sid=AC)
    enc.connected()
    enc.start()
    samples = 0
    for n, payload in enumerate(payloads, start=1):
        expected = json.dumps({
            "event": "media", "sequenceNumber": str(n + 1),
            "media": {"track": "inbound", "chunk": str(n), "timestamp": str(samples // 8),
                      "payload": base64.b64encode(payload).decode()},
            "streamSid": sid,
        }, separators=(",", ":"), ensure_ascii=False)
        assert enc.media(payload) == expected
        samples += len(payload)
    assert enc.sequence_number == len(payloads) + 1
