"""Tests for the sans-I/O AMI codec against recorded-looking Asterisk 22 streams."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_gw.ami.protocol import (
    AMI_MAX_ACTION_HEADERS,
    AMI_MAX_ACTION_LINE,
    AmiError,
    AmiMessage,
    AmiParser,
    AmiProtocolError,
    AmiUsageError,
    c_unescape,
    encode_action,
)

FIXTURES = Path(__file__).parent / "fixtures"
CALL_UUID = "3f1c9a52-7d4e-4b8a-9c61-2e5f0a7b1d34"

# Fixture name -> number of messages it holds (the banner is not a message).
EXPECTED_COUNTS = {
    "login_success.txt": 2,
    "login_failure.txt": 1,
    "inbound_call.txt": 24,
    "originate_async.txt": 19,
    "core_show_channels.txt": 5,
    "amd.txt": 6,
    "command.txt": 1,
}


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse_whole(data: bytes) -> tuple[AmiParser, list[AmiMessage]]:
    parser = AmiParser()
    return parser, parser.feed(data)


def parse_bytewise(data: bytes) -> tuple[AmiParser, list[AmiMessage]]:
    parser = AmiParser()
    out: list[AmiMessage] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    return parser, out


def parse_chunks(data: bytes, cuts: list[int]) -> list[AmiMessage]:
    parser = AmiParser()
    out: list[AmiMessage] = []
    prev = 0
    for cut in sorted(cuts) + [len(data)]:
        out.extend(parser.feed(data[prev:cut]))
        prev = cut
    return out


def events(msgs: list[AmiMessage]) -> list[str | None]:
    return [m.event for m in msgs]


# --------------------------------------------------------------------------- fixtures


def test_every_fixture_is_listed() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.txt")) == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_fixture_whole_equals_byte_at_a_time(name: str) -> None:
    data = load(name)
    assert b"\r\n" in data, "fixtures are CRLF, as Asterisk writes them"
    whole_parser, whole = parse_whole(data)
    byte_parser, bytewise = parse_bytewise(data)
    assert len(whole) == EXPECTED_COUNTS[name]
    assert bytewise == whole
    assert whole_parser.garbage_lines == byte_parser.garbage_lines == 0
    assert whole_parser.buffered == byte_parser.buffered == 0
    assert whole_parser.banner == byte_parser.banner


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_fixture_bare_lf_equals_crlf(name: str) -> None:
    data = load(name)
    assert parse_whole(data.replace(b"\r\n", b"\n"))[1] == parse_whole(data)[1]


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_fixture_random_chunks(name: str) -> None:
    data = load(name)
    whole = parse_whole(data)[1]
    rng = random.Random(name)
    for _ in range(20):
        cuts = [rng.randrange(len(data)) for _ in range(rng.randrange(1, 30))]
        assert parse_chunks(data, cuts) == whole


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=13218), max_size=40))
def test_inbound_call_any_split(cuts: list[int]) -> None:
    data = load("inbound_call.txt")
    cuts = [c % len(data) for c in cuts]
    assert parse_chunks(data, cuts) == parse_whole(data)[1]


def test_login_success_banner_and_fully_booted() -> None:
    parser, msgs = parse_bytewise(load("login_success.txt"))
    assert parser.banner == "Asterisk Call Manager/11.0.0"
    assert parser.version == "11.0.0"
    login, booted = msgs
    assert login.is_response and not login.is_event
    assert login.response == "Success"
    assert login.action_id == "login-1"
    assert login.get("Message") == "Authentication accepted"
    assert booted.is_event and not booted.is_response
    assert booted.event == "FullyBooted"
    assert booted.get("Status") == "Fully Booted"
    assert booted.get("Privilege") == "system,all"


def test_login_failure() -> None:
    parser, msgs = parse_whole(load("login_failure.txt"))
    assert parser.version == "11.0.0"
    (failed,) = msgs
    assert failed.response == "Error"
    assert failed.get("Message") == "Authentication failed"


def test_inbound_call_sequence() -> None:
    msgs = parse_bytewise(load("inbound_call.txt"))[1]
    assert events(msgs) == [
        "Newchannel",
        "Newexten",
        "VarSet",
        "VarSet",
        "VarSet",
        "Newexten",
        "Newstate",
        "Newexten",
        "Newexten",
        "VarSet",
        "MixMonitorStart",
        "Newexten",
        "ChannelTalkingStart",
        "RTCPSent",
        "ChannelTalkingStop",
        "RTCPReceived",
        "RTCPSent",
        "SoftHangupRequest",
        "VarSet",
        "VarSet",
        "VarSet",
        "VarSet",
        "VarSet",
        "Hangup",
    ]
    assert {m.get("Uniqueid") for m in msgs} == {"1718027410.12"}
    newstate = msgs[6]
    assert (newstate.get("ChannelState"), newstate.get("ChannelStateDesc")) == ("6", "Up")

    (audiosocket,) = [m for m in msgs if m.get("Application") == "AudioSocket"]
    uuid, _, target = audiosocket.get("AppData", "").partition(",")
    assert (uuid, target) == (CALL_UUID, "127.0.0.1:9092")

    varsets = {m.get("Variable"): m.get("Value") for m in msgs if m.event == "VarSet"}
    assert varsets["MIXMONITOR_FILENAME"] == f"/var/spool/asterisk/monitor/aigw/{CALL_UUID}.wav"
    assert varsets["AIGW_CALL_ID"] == CALL_UUID

    stop = next(m for m in msgs if m.event == "ChannelTalkingStop")
    assert stop.get("Duration") == "1978"

    sent = next(m for m in msgs if m.event == "RTCPSent")
    assert sent.get("MES") == "88.1"
    assert sent.get("report0iajitter") == "3"
    assert sent.get("Report0FractionLost") == "0"
    assert sent.get("RTT") is None

    hangup = msgs[-1]
    assert hangup.event == "Hangup"
    assert (hangup.get("Cause"), hangup.get("Cause-txt")) == ("0", "Unknown")
    assert msgs[-7].get("Cause") == "16"  # SoftHangupRequest


def test_inbound_call_rtpaudioqos_values_keep_their_padding() -> None:
    msgs = parse_whole(load("inbound_call.txt"))[1]
    qos = {
        m.get("Variable", ""): m.get("Value", "")
        for m in msgs
        if (m.get("Variable") or "").startswith("RTPAUDIOQOS")
    }
    assert sorted(qos) == [
        "RTPAUDIOQOS",
        "RTPAUDIOQOSJITTER",
        "RTPAUDIOQOSLOSS",
        "RTPAUDIOQOSMES",
        "RTPAUDIOQOSRTT",
    ]
    assert qos["RTPAUDIOQOS"].startswith("ssrc=439041101;themssrc=")
    assert qos["RTPAUDIOQOSLOSS"].startswith("  minrxlost=000.000000;")
    assert qos["RTPAUDIOQOSRTT"].startswith("     minrtt=000.042000;")
    assert qos["RTPAUDIOQOSMES"].startswith("   minrxmes=")


def test_inbound_call_utf8_and_escaped_caller_name() -> None:
    msgs = parse_bytewise(load("inbound_call.txt"))[1]
    raw = msgs[0].get("CallerIDName")
    assert raw == 'José \\"Pepe\\" Müller'
    assert c_unescape(raw) == 'José "Pepe" Müller'


def test_inbound_call_chanvariable() -> None:
    msgs = parse_whole(load("inbound_call.txt"))[1]
    assert msgs[0].variables() == {"AIGW_CALL_ID": ""}
    assert msgs[-1].variables() == {"AIGW_CALL_ID": CALL_UUID}
    # A VarSet's ``Variable: NAME`` is not a k=v pair.
    varset = msgs[2]
    assert varset.get("Variable") == "AIGW_STATUS"
    assert "AIGW_STATUS" not in varset.variables()


def test_originate_async_outcomes() -> None:
    msgs = parse_bytewise(load("originate_async.txt"))[1]
    replies = [m for m in msgs if m.is_response]
    assert [(m.action_id, m.response, m.get("Message")) for m in replies] == [
        (f"orig-{i}", "Success", "Originate successfully queued") for i in range(1, 5)
    ]
    outcomes = [m for m in msgs if m.event == "OriginateResponse"]
    assert all(m.is_event and not m.is_response for m in outcomes)
    assert [(m.action_id, m.response, m.get("Reason")) for m in outcomes] == [
        ("orig-1", "Success", "4"),
        ("orig-2", "Failure", "5"),
        ("orig-3", "Failure", "3"),
        ("orig-4", "Failure", "0"),
    ]
    answered = outcomes[0]
    assert answered.get("Channel", "").endswith(";1")
    assert answered.get("Uniqueid") == "0d5c2a61-94b7-4f0e-8a3d-6c1e9b2f7a10"
    assert outcomes[1].get("Channel") == "Local/busy@aigw-test"  # dial string on failure
    busy_hangups = [m.get("Cause") for m in msgs if m.event == "Hangup"][:2]
    assert busy_hangups == ["17", "17"]
    second_half = [m for m in msgs if (m.get("Uniqueid") or "").endswith(";2")]
    assert second_half and all(
        m.get("Linkedid") == (m.get("Uniqueid") or "")[:-2] for m in second_half
    )


def test_core_show_channels_list() -> None:
    msgs = parse_bytewise(load("core_show_channels.txt"))[1]
    first, *items, complete = msgs
    assert first.is_response and first.get("EventList") == "start"
    assert all(m.event == "CoreShowChannel" and m.action_id == "csc-1" for m in items)
    assert complete.event == "CoreShowChannelsComplete"
    assert complete.get("EventList") == "Complete"
    assert complete.get("ListItems") == str(len(items)) == "3"
    assert items[0].get("ApplicationData") == f"{CALL_UUID},127.0.0.1:9092"
    assert items[0].get("Duration") == "00:00:42"
    assert items[0].get("BridgeId") == ""


def test_amd_varsets() -> None:
    msgs = parse_bytewise(load("amd.txt"))[1]
    found: dict[str, dict[str, str]] = {}
    for m in msgs:
        if m.event == "VarSet":
            found.setdefault(m.get("Uniqueid", ""), {})[m.get("Variable", "")] = m.get("Value", "")
    assert found == {
        "0d5c2a61-94b7-4f0e-8a3d-6c1e9b2f7a10": {
            "AMDSTATUS": "HUMAN",
            "AMDCAUSE": "HUMAN-800-800",
        },
        "a41f6c08-5e2d-4b73-9a86-1d0c7e3b5f92": {
            "AMDSTATUS": "MACHINE",
            "AMDCAUSE": "LONGGREETING-1500-1500",
        },
    }


def test_command_output_lines() -> None:
    (msg,) = parse_bytewise(load("command.txt"))[1]
    output = msg.getall("Output")
    assert len(output) == 5
    assert output[0].startswith("Channel ") and output[0].endswith("   ")
    assert output[-1] == "4 calls processed"
    assert msg.to_dict()["Output"] == output[0]


# --------------------------------------------------------------------------- parser rules


def test_legacy_follows_command_body_kept_as_output() -> None:
    data = (
        b"Response: Follows\r\nPrivilege: Command\r\nActionID: c1\r\n"
        b"Name/username  Host: Port\r\nUptime: 5\r\n2 sip peers\r\n--END COMMAND--\r\n\r\n"
    )
    parser, (msg,) = parse_whole(data)
    assert parser.garbage_lines == 0
    assert msg.action_id == "c1"
    assert msg.getall("Output") == ["Name/username  Host: Port", "Uptime: 5", "2 sip peers"]
    assert parse_bytewise(data)[1] == [msg]


def test_split_utf8_is_reassembled() -> None:
    data = "Event: X\r\nName: é€😀\r\n\r\n".encode()
    for cut in range(len(data)):
        assert parse_chunks(data, [cut])[0].get("Name") == "é€😀"


def test_undecodable_bytes_are_replaced() -> None:
    (msg,) = AmiParser().feed(b"Event: X\r\nName: a\xff\xfeb\r\n\r\n")
    assert msg.get("Name") == "a\ufffd\ufffdb"


def test_garbage_lines_are_counted_and_skipped() -> None:
    parser = AmiParser()
    msgs = parser.feed(
        b"Event: A\r\nthis is not a header\r\n: no key\r\nKey: v\r\n\r\n"
        b"--END COMMAND--\r\n\r\nEvent: B\r\n\r\n"
    )
    assert [m.headers for m in msgs] == [(("Event", "A"), ("Key", "v")), (("Event", "B"),)]
    assert parser.garbage_lines == 3


def test_value_rules() -> None:
    (msg,) = AmiParser().feed(
        b"Event: X\r\nEmpty: \r\nBare:\r\nTight:v\r\nPadded:   v  \r\nUrl: a:b:c\r\n"
        b"  Spaced  : k\r\n\r\n"
    )
    assert msg.headers == (
        ("Event", "X"),
        ("Empty", ""),
        ("Bare", ""),
        ("Tight", "v"),
        ("Padded", "  v  "),
        ("Url", "a:b:c"),
        ("Spaced", "k"),
    )


def test_blank_lines_between_messages_and_no_banner() -> None:
    parser = AmiParser()
    msgs = parser.feed(b"\r\n\r\nEvent: A\r\n\r\n\r\n\nEvent: B\n\n")
    assert events(msgs) == ["A", "B"]
    assert parser.banner is None and parser.version is None


def test_banner_only_on_the_first_line() -> None:
    parser = AmiParser()
    assert parser.feed(b"Event: A\r\n\r\nAsterisk Call Manager/11.0.0\r\n") == [
        AmiMessage((("Event", "A"),))
    ]
    assert parser.banner is None
    assert parser.garbage_lines == 1


def test_banner_then_message_without_blank_line() -> None:
    parser = AmiParser()
    msgs = parser.feed(b"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\n\r\n")
    assert parser.version == "9.0.0"
    assert msgs == [AmiMessage((("Response", "Success"),))]


def test_incomplete_message_is_held() -> None:
    parser = AmiParser()
    assert parser.feed(b"Event: A\r\nKey: v\r\n") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [AmiMessage((("Event", "A"), ("Key", "v")))]


def test_line_too_long() -> None:
    parser = AmiParser(max_line=64)
    assert parser.feed(b"Key: " + b"x" * 59 + b"\r\n") == []  # exactly 64 bytes
    with pytest.raises(AmiProtocolError, match="line longer"):
        parser.feed(b"Key: " + b"x" * 60 + b"\r\n")
    with pytest.raises(AmiProtocolError, match="failed earlier"):
        parser.feed(b"\r\n")


def test_line_too_long_without_newline() -> None:
    parser = AmiParser()
    parser.feed(b"Key: " + b"x" * 8000)
    with pytest.raises(AmiProtocolError):
        parser.feed(b"x" * 200)


def test_default_line_limit_is_8192() -> None:
    ok = b"K: " + b"x" * (8192 - 3)
    assert AmiParser().feed(ok + b"\r\n\r\n")[0].get("K") == "x" * (8192 - 3)
    with pytest.raises(AmiProtocolError):
        AmiParser().feed(ok + b"x\r\n")


def test_too_many_headers() -> None:
    block = b"".join(b"H%d: v\r\n" % i for i in range(512))
    assert len(AmiParser().feed(block + b"\r\n")[0].headers) == 512
    with pytest.raises(AmiProtocolError, match="headers"):
        AmiParser().feed(block + b"One: more\r\n\r\n")


def test_errors_share_a_root() -> None:
    assert issubclass(AmiProtocolError, AmiError)
    assert issubclass(AmiUsageError, AmiError)
    assert not issubclass(AmiUsageError, AmiProtocolError)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_random_bytes_parse_or_raise_protocol_error(chunks: list[bytes]) -> None:
    parser = AmiParser(max_line=128, max_headers=8)
    try:
        for chunk in chunks:
            for msg in parser.feed(chunk):
                assert msg.headers
                for key, value in msg.headers:
                    assert key and ":" not in key
                    assert "\n" not in value
    except AmiProtocolError:
        pass


_SAFE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"),
    max_size=40,
)
_KEYS = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,15}", fullmatch=True).filter(
    lambda k: k.lower() not in ("action", "actionid")
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_KEYS, _SAFE_TEXT), max_size=10), _SAFE_TEXT.filter(bool))
def test_encode_parse_round_trip(fields: list[tuple[str, str]], action_id: str) -> None:
    wire = encode_action("Originate", fields, action_id=action_id)
    (msg,) = parse_bytewise(wire)[1]
    assert msg.headers == (("Action", "Originate"), ("ActionID", action_id), *fields)


# --------------------------------------------------------------------------- encode_action


def test_encode_action_exact_bytes() -> None:
    wire = encode_action(
        "Originate",
        {
            "Channel": "PJSIP/+15551234567@trunk",
            "Context": "aigw-outbound",
            "Exten": "s",
            "Priority": "1",
            "Async": "true",
            "ChannelId": CALL_UUID,
            "Variable": ["AIGW_CALL_ID=" + CALL_UUID, "AIGW_TENANT=acme"],
        },
        action_id="orig-1",
    )
    assert wire == (
        b"Action: Originate\r\n"
        b"ActionID: orig-1\r\n"
        b"Channel: PJSIP/+15551234567@trunk\r\n"
        b"Context: aigw-outbound\r\n"
        b"Exten: s\r\n"
        b"Priority: 1\r\n"
        b"Async: true\r\n"
        b"ChannelId: 3f1c9a52-7d4e-4b8a-9c61-2e5f0a7b1d34\r\n"
        b"Variable: AIGW_CALL_ID=3f1c9a52-7d4e-4b8a-9c61-2e5f0a7b1d34\r\n"
        b"Variable: AIGW_TENANT=acme\r\n"
        b"\r\n"
    )


def test_encode_action_pairs_and_no_action_id() -> None:
    assert encode_action("Ping", []) == b"Action: Ping\r\n\r\n"
    assert encode_action("Getvar", [("Channel", "PJSIP/a-1"), ("Variable", "X")]) == (
        b"Action: Getvar\r\nChannel: PJSIP/a-1\r\nVariable: X\r\n\r\n"
    )
    assert encode_action("Login", {"Username": "gw", "Secret": "pässword"}, "l1") == (
        "Action: Login\r\nActionID: l1\r\nUsername: gw\r\nSecret: pässword\r\n\r\n".encode()
    )


@pytest.mark.parametrize(
    "value",
    [
        "x\r\nAction: Command\r\nCommand: core stop now",
        "x\nAction: Command",
        "x\rAction: Command",
        "x\x00y",
        "\r\n",
    ],
)
def test_injection_in_value_is_refused(value: str) -> None:
    with pytest.raises(AmiUsageError):
        encode_action("Setvar", {"Channel": "PJSIP/a-1", "Variable": "X", "Value": value})
    with pytest.raises(AmiUsageError):
        encode_action("Originate", {"Variable": ["A=1", "B=" + value]})
    with pytest.raises(AmiUsageError):
        encode_action("Setvar", [("Value", value)])
    with pytest.raises(AmiUsageError):
        encode_action("Ping", {}, action_id=value)


@pytest.mark.parametrize(
    "key", ["Chan\r\nnel", "Chan nel", "Chan:nel", "", "X\x00", "Value\n", "Action", "ACTIONID"]
)
def test_bad_or_reserved_key_is_refused(key: str) -> None:
    with pytest.raises(AmiUsageError):
        encode_action("Setvar", {key: "v"})


@pytest.mark.parametrize("action", ["", "Ping\r\nAction: Command", "Ping Pong", "Ping\x00"])
def test_bad_action_is_refused(action: str) -> None:
    with pytest.raises(AmiUsageError):
        encode_action(action, {})


def test_encode_limits_and_types() -> None:
    key = "Value"
    fits = "v" * (AMI_MAX_ACTION_LINE - len(key) - 4)
    assert len(encode_action("Setvar", {key: fits})) > AMI_MAX_ACTION_LINE
    with pytest.raises(AmiUsageError, match="bytes"):
        encode_action("Setvar", {key: fits + "v"})
    encode_action("Originate", {"Variable": ["a=b"] * (AMI_MAX_ACTION_HEADERS - 2)}, "id")
    with pytest.raises(AmiUsageError, match="headers"):
        encode_action("Originate", {"Variable": ["a=b"] * (AMI_MAX_ACTION_HEADERS - 1)}, "id")
    with pytest.raises(AmiUsageError):
        encode_action("Setvar", {"Value": 5})  # type: ignore[dict-item]
    with pytest.raises(AmiUsageError):
        encode_action("Setvar", {"Value": "\udc80"})
    with pytest.raises(AmiUsageError):
        encode_action("Ping", {}, action_id="")


# --------------------------------------------------------------------------- AmiMessage


def test_message_lookups() -> None:
    msg = AmiMessage(
        (
            ("Event", "VarSet"),
            ("ChanVariable", "A=1"),
            ("chanvariable", "B=x=y"),
            ("Variable", "NOPAIR"),
            ("Variable", "C="),
            ("ActionID", "7"),
            ("Key", "first"),
            ("KEY", "second"),
        )
    )
    assert msg.get("key") == "first"
    assert msg.getall("kEy") == ["first", "second"]
    assert msg.get("missing") is None
    assert msg.get("missing", "d") == "d"
    assert msg.getall("missing") == []
    assert "EVENT" in msg and "missing" not in msg and 3 not in msg
    assert msg.event == "VarSet" and msg.action_id == "7"
    assert msg.response is None and msg.is_event and not msg.is_response
    assert msg.variables() == {"A": "1", "B": "x=y", "C": ""}
    assert msg.to_dict() == {
        "Event": "VarSet",
        "ChanVariable": "A=1",
        "Variable": "NOPAIR",
        "ActionID": "7",
        "Key": "first",
    }
    with pytest.raises(AttributeError):
        msg.headers = ()  # type: ignore[misc]


def test_message_without_event_or_response() -> None:
    msg = AmiMessage((("Foo", "bar"),))
    assert not msg.is_event and not msg.is_response


# --------------------------------------------------------------------------- c_unescape


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('he said \\"hi\\"', 'he said "hi"'),
        ("back\\\\slash", "back\\slash"),
        ("tab\\there", "tab\there"),
        ("line\\nbreak\\r", "line\nbreak\r"),
        ("it\\'s \\?", "it's ?"),
        ("\\a\\b\\f\\v", "\a\b\f\v"),
        ("unknown \\q stays", "unknown \\q stays"),
        ("trailing \\", "trailing \\"),
        ('\\\\\\"', '\\"'),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_c_unescape(raw: str, expected: str) -> None:
    assert c_unescape(raw) == expected
