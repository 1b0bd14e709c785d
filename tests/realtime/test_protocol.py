"""Tests for the Realtime GA wire format (audiosocket_gw.realtime.protocol)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_gw.realtime import protocol as p
from audiosocket_gw.realtime.protocol import RealtimeError, RealtimeProtocolError

# The exact session.update documented in docs/PROTOCOLS.md §7.2 (instructions "...").
DOCUMENTED_SESSION_UPDATE: dict[str, Any] = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "...",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "whisper-1"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
        },
    },
}

BETA_KEYS = {"input_audio_format", "output_audio_format", "input_audio_transcription", "modalities"}


def _all_keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        keys = set(obj)
        for value in obj.values():
            keys |= _all_keys(value)
        return keys
    if isinstance(obj, list):
        return set().union(*(_all_keys(v) for v in obj)) if obj else set()
    return set()


# ----------------------------------------------------------------- session.update


def test_session_update_matches_documented_json_exactly() -> None:
    text = p.session_update(p.SessionConfig(instructions="..."))
    assert json.loads(text) == DOCUMENTED_SESSION_UPDATE


def test_session_update_never_contains_beta_keys() -> None:
    for fmt in ("audio/pcmu", "audio/pcma", "audio/pcm"):
        cfg = p.SessionConfig(input_format=fmt, output_format=fmt, transcription_model=None)
        event = json.loads(p.session_update(cfg))
        assert not (_all_keys(event) & BETA_KEYS)
        assert event["session"]["type"] == "realtime"


def test_session_update_pcm_carries_rate_and_g711_does_not() -> None:
    cfg = p.SessionConfig(input_format="audio/pcm", output_format="audio/pcma")
    audio = json.loads(p.session_update(cfg))["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["format"] == {"type": "audio/pcma"}


def test_session_update_without_turn_detection_or_transcription() -> None:
    cfg = p.SessionConfig(
        turn_detection=False,
        transcription_model=None,
        voice="cedar",
        create_response=False,
    )
    session = json.loads(p.session_update(cfg))["session"]
    assert session["audio"]["input"] == {"format": {"type": "audio/pcmu"}, "turn_detection": None}
    assert session["audio"]["output"]["voice"] == "cedar"


def test_session_update_custom_vad_values() -> None:
    cfg = p.SessionConfig(
        vad_threshold=0.7,
        prefix_padding_ms=100,
        silence_duration_ms=800,
        create_response=False,
        interrupt_response=False,
    )
    td = json.loads(p.session_update(cfg))["session"]["audio"]["input"]["turn_detection"]
    assert td == {
        "type": "server_vad",
        "threshold": 0.7,
        "prefix_padding_ms": 100,
        "silence_duration_ms": 800,
        "create_response": False,
        "interrupt_response": False,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_format": "g711_ulaw"},
        {"output_format": "pcm16"},
        {"vad_threshold": 1.5},
        {"rate": 0},
        {"silence_duration_ms": -1},
    ],
)
def test_session_config_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        p.SessionConfig(**kwargs)


# ----------------------------------------------------------------- client events


def test_input_audio_append_is_base64() -> None:
    audio = bytes(range(256))
    event = json.loads(p.input_audio_append(audio))
    assert event == {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}
    assert base64.b64decode(event["audio"]) == audio


@given(st.binary(max_size=2000))
def test_input_audio_append_template_matches_the_dict_dump(audio: bytes) -> None:
    expected = json.dumps({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(audio).decode()},
                          separators=(",", ":"), ensure_ascii=False)
    assert p.input_audio_append(audio) == expected


def test_simple_client_events() -> None:
    assert json.loads(p.input_audio_commit()) == {"type": "input_audio_buffer.commit"}
    assert json.loads(p.input_audio_clear()) == {"type": "input_audio_buffer.clear"}
    assert json.loads(p.response_create()) == {"type": "response.create"}
    assert json.loads(p.response_create("Say hi")) == {
        "type": "response.create",
        "response": {"instructions": "Say hi"},
    }
    assert json.loads(p.response_cancel()) == {"type": "response.cancel"}
    assert json.loads(p.response_cancel("resp_1")) == {
        "type": "response.cancel",
        "response_id": "resp_1",
    }


def test_item_truncate() -> None:
    assert json.loads(p.item_truncate("item_1", 1234)) == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    with pytest.raises(ValueError):
        p.item_truncate("item_1", -1)


@pytest.mark.parametrize("role", ["user", "system"])
def test_conversation_item_create_text(role: str) -> None:
    event = json.loads(p.conversation_item_create_text(role, 'héllo "x"'))  # type: ignore[arg-type]
    assert event == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": role,
            "content": [{"type": "input_text", "text": 'héllo "x"'}],
        },
    }


def test_conversation_item_create_text_rejects_other_roles() -> None:
    with pytest.raises(ValueError):
        p.conversation_item_create_text("assistant", "x")  # type: ignore[arg-type]


def test_conversation_item_create_assistant_text() -> None:
    assert json.loads(p.conversation_item_create_assistant_text("I said this")) == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "I said this"}],
        },
    }


# ----------------------------------------------------------------- server events

AUDIO = b"\x00\x01\xfe\xff" * 10

ROUND_TRIPS: list[tuple[dict[str, Any], p.ServerEvent]] = [
    (
        {"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}},
        p.SessionCreated({"id": "sess_1"}),
    ),
    ({"type": "session.updated", "session": {"a": 1}}, p.SessionUpdated({"a": 1})),
    (
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1200, "item_id": "i1"},
        p.SpeechStarted(1200, "i1"),
    ),
    (
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500, "item_id": "i1"},
        p.SpeechStopped(2500, "i1"),
    ),
    (
        {"type": "input_audio_buffer.committed", "item_id": "i1", "previous_item_id": None},
        p.AudioBufferCommitted("i1"),
    ),
    ({"type": "response.created", "response": {"id": "r1"}}, p.ResponseCreated("r1")),
    (
        {
            "type": "response.output_audio.delta",
            "response_id": "r1",
            "item_id": "i2",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(AUDIO).decode(),
        },
        p.AudioDelta("r1", "i2", 0, 0, AUDIO),
    ),
    (
        {"type": "response.output_audio.done", "response_id": "r1", "item_id": "i2"},
        p.AudioDone("r1", "i2"),
    ),
    (
        {"type": "response.output_audio_transcript.delta", "item_id": "i2", "delta": "Hel"},
        p.OutputTranscriptDelta("i2", "Hel"),
    ),
    (
        {"type": "response.output_audio_transcript.done", "item_id": "i2", "transcript": "Hi"},
        p.OutputTranscriptDone("i2", "Hi"),
    ),
    (
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i1",
            "content_index": 0,
            "transcript": "hello",
        },
        p.InputTranscriptionCompleted("i1", "hello"),
    ),
    (
        {"type": "conversation.item.truncated", "item_id": "i2", "audio_end_ms": 640},
        p.ItemTruncated("i2", 640),
    ),
    (
        {"type": "response.done", "response": {"id": "r1", "status": "completed"}},
        p.ResponseDone("r1", "completed", None),
    ),
    (
        {
            "type": "response.done",
            "response": {"id": "r1", "status": "completed", "status_details": None},
        },
        p.ResponseDone("r1", "completed", None),
    ),
    (
        {
            "type": "response.done",
            "response": {
                "id": "r2",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
            },
        },
        p.ResponseDone("r2", "cancelled", "turn_detected"),
    ),
    (
        {"type": "rate_limits.updated", "rate_limits": [{"name": "requests"}]},
        p.RateLimitsUpdated([{"name": "requests"}]),
    ),
    (
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "expired",
                "param": None,
            },
        },
        p.ErrorEvent("invalid_request_error", "session_expired", "expired", None),
    ),
    (
        {"type": "error", "error": {"type": "server_error", "message": "boom"}},
        p.ErrorEvent("server_error", None, "boom", None),
    ),
    (
        {"type": "response.function_call_arguments.done", "response_id": "r1",
         "item_id": "i3", "output_index": 1, "call_id": "call_1", "name": "lookup",
         "arguments": '{"q":1}'},
        p.FunctionCall("r1", "i3", "call_1", "lookup", '{"q":1}'),
    ),
    (
        {"type": "response.output_item.done", "response_id": "r1", "output_index": 1,
         "item": {"id": "i3", "type": "function_call", "call_id": "call_1",
                  "name": "lookup", "arguments": "{}"}},
        p.FunctionCall("r1", "i3", "call_1", "lookup", "{}"),
    ),
    (
        {"type": "response.output_item.done", "item": {"id": "i4", "type": "message"}},
        p.Unknown(
            "response.output_item.done",
            {"type": "response.output_item.done", "item": {"id": "i4", "type": "message"}},
        ),
    ),
    (
        {"type": "response.output_item.added", "item": {"id": "i2"}},
        p.Unknown(
            "response.output_item.added",
            {"type": "response.output_item.added", "item": {"id": "i2"}},
        ),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), ROUND_TRIPS, ids=[r[0]["type"] for r in ROUND_TRIPS])
def test_parse_server_event_round_trip(raw: dict[str, Any], expected: p.ServerEvent) -> None:
    text = json.dumps(raw)
    assert p.parse_server_event(text) == expected
    assert p.parse_server_event(text.encode()) == expected


def test_every_modelled_event_type_is_covered() -> None:
    covered = {raw["type"] for raw, _ in ROUND_TRIPS}
    assert set(p._PARSERS) <= covered


def test_unknown_keeps_raw_dict() -> None:
    event = p.parse_server_event('{"type": "conversation.item.added", "item": {"id": "x"}}')
    assert isinstance(event, p.Unknown)
    assert event.raw["item"] == {"id": "x"}


def test_beta_audio_delta_is_unknown_not_audio() -> None:
    raw = {"type": "response.audio.delta", "delta": base64.b64encode(AUDIO).decode()}
    assert isinstance(p.parse_server_event(json.dumps(raw)), p.Unknown)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"session.created"', "must be a JSON object"),
        ("{}", "'type'"),
        ('{"type": 5}', "'type'"),
        ('{"type": "session.created"}', "'session' is missing"),
        ('{"type": "session.created", "session": []}', "'session' must be an object"),
        ('{"type": "input_audio_buffer.speech_started", "item_id": "i"}', "'audio_start_ms'"),
        (
            '{"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": "1"}',
            "must be an integer",
        ),
        (
            '{"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": true}',
            "must be an integer",
        ),
        ('{"type": "response.created", "response": {}}', "'response.id' is missing"),
        ('{"type": "response.done", "response": {"id": "r"}}', "'response.status'"),
        (
            '{"type": "response.done", "response": {"id": "r", "status": "cancelled",'
            ' "status_details": {"reason": 3}}}',
            "'response.status_details.reason'",
        ),
        (
            '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",'
            ' "output_index": 0, "content_index": 0, "delta": "***"}',
            "not valid base64",
        ),
        (
            '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",'
            ' "output_index": 0, "content_index": 0, "delta": "\u00e9"}',
            "not valid base64",
        ),
        ('{"type": "error", "error": {"type": "x"}}', "'error.message' is missing"),
        ('{"type": "error", "error": {"type": "x", "message": "m", "code": 1}}', "'error.code'"),
        ('{"type": "rate_limits.updated", "rate_limits": {}}', "must be an array"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_messages_raise_protocol_error(text: str | bytes, fragment: str) -> None:
    with pytest.raises(RealtimeProtocolError) as info:
        p.parse_server_event(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, RealtimeError)


def test_protocol_error_names_the_event_type() -> None:
    with pytest.raises(RealtimeProtocolError, match=r"conversation\.item\.truncated"):
        p.parse_server_event('{"type": "conversation.item.truncated", "item_id": "i"}')


# ----------------------------------------------------------------- hypothesis

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path inside nested dicts of ``obj``."""
    if not isinstance(obj, dict):
        return []
    out: list[tuple[str, ...]] = []
    for key, value in obj.items():
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def _mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid server event with a few fields deleted or replaced by arbitrary JSON."""
    event: dict[str, Any] = copy.deepcopy(draw(st.sampled_from([raw for raw, _ in ROUND_TRIPS])))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(event)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = event
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_json_values)
    return event


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _json_values, max_size=6))
def test_arbitrary_json_objects_parse_or_raise_protocol_error(obj: dict[str, Any]) -> None:
    _parse_or_protocol_error(json.dumps(obj))


@settings(max_examples=300, deadline=None)
@given(_mutated_events())
def test_mutated_known_events_parse_or_raise_protocol_error(event: dict[str, Any]) -> None:
    _parse_or_protocol_error(json.dumps(event))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes | str) -> None:
    _parse_or_protocol_error(data)


def _parse_or_protocol_error(text: str | bytes) -> None:
    try:
        event = p.parse_server_event(text)
    except RealtimeProtocolError:
        return
    assert isinstance(
        event,
        (
            p.SessionCreated,
            p.SessionUpdated,
            p.SpeechStarted,
            p.SpeechStopped,
            p.AudioBufferCommitted,
            p.ResponseCreated,
            p.AudioDelta,
            p.AudioDone,
            p.OutputTranscriptDelta,
            p.OutputTranscriptDone,
            p.InputTranscriptionCompleted,
            p.ItemTruncated,
            p.ResponseDone,
            p.FunctionCall,
            p.RateLimitsUpdated,
            p.ErrorEvent,
            p.Unknown,
        ),
    )


def test_tools_in_session_update_and_function_call_output() -> None:
    tool = {"type": "function", "name": "lookup", "description": "d",
            "parameters": {"type": "object", "properties": {}}}
    session = json.loads(p.session_update(p.SessionConfig(tools=(tool,))))["session"]
    assert session["tools"] == [tool] and session["tool_choice"] == "auto"
    assert "tools" not in json.loads(p.session_update(p.SessionConfig()))["session"]
    out = json.loads(p.function_call_output("call_1", '{"ok":true}'))
    assert out == {"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": "call_1",
                            "output": '{"ok":true}'}}
