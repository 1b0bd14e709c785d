"""Tests for the local Realtime bot, over a real WebSocket (websockets client)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from audiosocket_gw.dsp.g711 import ulaw_decode, ulaw_encode
from audiosocket_gw.dsp.vad import frame_level
from audiosocket_gw.realtime import protocol as p
from audiosocket_gw.testing.localbot import LocalRealtimeBot

# Seconds per test "second"; raise AIGW_TEST_TIME_FACTOR on a slow machine.
FACTOR = float(os.environ.get("AIGW_TEST_TIME_FACTOR", "1"))
TIMEOUT = 5.0 * FACTOR

FRAME = 160  # 20 ms at 8 kHz


def _tone_frame(index: int, amplitude: float = 8000.0) -> bytes:
    """20 ms of a 440 Hz tone as mu-law (mean |sample| about 0.64 * amplitude)."""
    n = np.arange(index * FRAME, (index + 1) * FRAME)
    pcm = np.round(amplitude * np.sin(2 * math.pi * 440 * n / 8000)).astype("<i2").tobytes()
    return ulaw_encode(pcm)


SILENCE = b"\xff" * FRAME


class Client:
    """A thin Realtime client: send builder output, receive decoded dicts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames = 0

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, within: float = TIMEOUT) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.recv(), within)
        data = json.loads(message)
        assert isinstance(data, dict)
        return data

    async def until(
        self, event_type: str, within: float = TIMEOUT
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Receive until ``event_type``; return it and everything received before it."""
        seen: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + within
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                types = [e["type"] for e in seen]
                raise AssertionError(f"no {event_type} within {within}s; got {types}")
            event = await self.recv(remaining)
            if event["type"] == event_type:
                return event, seen
            seen.append(event)

    async def speak(self, speech_ms: int, silence_ms: int = 0) -> None:
        for _ in range(speech_ms // 20):
            await self.send(p.input_audio_append(_tone_frame(self.frames)))
            self.frames += 1
        await self.silence(silence_ms)

    async def silence(self, ms: int) -> None:
        for _ in range(ms // 20):
            await self.send(p.input_audio_append(SILENCE))
            self.frames += 1


@asynccontextmanager
async def client(bot: LocalRealtimeBot, **kwargs: Any) -> AsyncIterator[Client]:
    async with connect(bot.url, max_size=None, **kwargs) as ws:
        c = Client(ws)
        created = await c.recv()
        assert created["type"] == "session.created"
        yield c


@pytest.fixture
async def bot() -> AsyncIterator[LocalRealtimeBot]:
    async with LocalRealtimeBot(reply_ms=500) as b:
        yield b


async def _closed(ws: ClientConnection, within: float = TIMEOUT) -> ConnectionClosed:
    """Read until the connection closes; return the exception (fails on timeout)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await asyncio.wait_for(ws.recv(), deadline - asyncio.get_running_loop().time())
        except ConnectionClosed as exc:
            return exc


def _audio_of(deltas: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(d["delta"]) for d in deltas)


# ----------------------------------------------------------------- handshake & session


async def test_session_created_is_first_and_parses(bot: LocalRealtimeBot) -> None:
    async with connect(bot.url) as ws:
        first = p.parse_server_event(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(first, p.SessionCreated)
    assert first.session["type"] == "realtime"
    assert first.session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert first.session["model"] == "local-bot"
    assert bot.url.startswith("ws://127.0.0.1:") and bot.url.endswith(
        "/v1/realtime?model=local-bot"
    )


async def test_ga_session_update_is_accepted_and_recorded(bot: LocalRealtimeBot) -> None:
    cfg = p.SessionConfig(instructions="Be brief.", voice="cedar")
    async with client(bot) as c:
        await c.send(p.session_update(cfg))
        event = p.parse_server_event(json.dumps(await c.recv()))
    assert isinstance(event, p.SessionUpdated)
    assert event.session["instructions"] == "Be brief."
    assert event.session["audio"]["output"]["voice"] == "cedar"
    assert event.session["type"] == "realtime"
    assert bot.sessions[0].session_config == json.loads(p.session_update(cfg))["session"]
    assert bot.sessions[0].event_types() == ["session.update"]


async def test_beta_header_is_rejected_with_4000(bot: LocalRealtimeBot) -> None:
    async with connect(bot.url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        error = p.parse_server_event(await asyncio.wait_for(ws.recv(), TIMEOUT))
        closed = await _closed(ws)
    assert isinstance(error, p.ErrorEvent)
    assert error.code == "beta_api_shape_disabled"
    assert closed.rcvd is not None and closed.rcvd.code == 4000


async def test_beta_session_update_is_rejected_with_4000(bot: LocalRealtimeBot) -> None:
    beta = {
        "type": "session.update",
        "session": {"modalities": ["audio"], "input_audio_format": "g711_ulaw"},
    }
    async with client(bot) as c:
        await c.send(json.dumps(beta))
        error = await c.recv()
        closed = await _closed(c.ws)
    assert error["type"] == "error" and error["error"]["code"] == "beta_api_shape_disabled"
    assert closed.rcvd is not None and closed.rcvd.code == 4000


async def test_session_update_without_type_is_an_error_but_keeps_the_connection(
    bot: LocalRealtimeBot,
) -> None:
    async with client(bot) as c:
        await c.send(json.dumps({"type": "session.update", "session": {"instructions": "x"}}))
        error = await c.recv()
        assert error["type"] == "error"
        assert error["error"]["param"] == "session.type"
        await c.send(p.session_update(p.SessionConfig()))
        assert (await c.recv())["type"] == "session.updated"


async def test_invalid_format_is_rejected(bot: LocalRealtimeBot) -> None:
    update = json.loads(p.session_update(p.SessionConfig()))
    update["session"]["audio"]["input"]["format"] = {"type": "audio/pcm", "rate": 16000}
    async with client(bot) as c:
        await c.send(json.dumps(update))
        error = await c.recv()
    assert error["type"] == "error"
    assert error["error"]["param"] == "session.audio.input.format.rate"


async def test_api_key_required() -> None:
    async with LocalRealtimeBot(api_key="sk-test") as bot:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(bot.url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
        async with client(bot, additional_headers={"Authorization": "Bearer sk-test"}):
            pass
        assert len(bot.sessions) == 1
        assert bot.sessions[0].headers["Authorization"] == "Bearer sk-test"


async def test_wrong_path_and_missing_model(bot: LocalRealtimeBot) -> None:
    base = bot.url.split("/v1/")[0]
    for url, status in ((f"{base}/v1/other?model=x", 404), (f"{base}/v1/realtime", 400)):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == status


# ----------------------------------------------------------------- speech and responses


async def test_speech_turn_gives_transcription_and_response(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        await c.silence(500)
        await c.speak(600, silence_ms=700)
        started, before = await c.until("input_audio_buffer.speech_started")
        assert before == []
        stopped, _ = await c.until("input_audio_buffer.speech_stopped")
        committed, _ = await c.until("input_audio_buffer.committed")
        transcription, _ = await c.until("conversation.item.input_audio_transcription.completed")
        created, _ = await c.until("response.created")
        done, during = await c.until("response.done")

    speech_started = p.parse_server_event(json.dumps(started))
    # 500 ms of silence before the speech, minus the default prefix padding of 300 ms.
    assert speech_started == p.SpeechStarted(200, started["item_id"])
    assert p.parse_server_event(json.dumps(stopped)) == p.SpeechStopped(1100, started["item_id"])
    assert committed["item_id"] == started["item_id"]
    assert transcription["item_id"] == started["item_id"]
    assert transcription["transcript"] == "(caller spoke 0.6 s)"

    response_id = created["response"]["id"]
    deltas = [e for e in during if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == 5  # 500 ms in 100 ms chunks
    parsed = [p.parse_server_event(json.dumps(d)) for d in deltas]
    assert all(isinstance(e, p.AudioDelta) and e.response_id == response_id for e in parsed)
    assert {(d["output_index"], d["content_index"]) for d in deltas} == {(0, 0)}
    audio = _audio_of(deltas)
    assert len(audio) == 4000  # 500 ms of mu-law at 8 kHz
    assert frame_level(ulaw_decode(audio)) > 1000  # audible, speech-like level

    transcript_done = next(
        e for e in during if e["type"] == "response.output_audio_transcript.done"
    )
    text = "".join(
        e["delta"] for e in during if e["type"] == "response.output_audio_transcript.delta"
    )
    assert text == transcript_done["transcript"]
    assert "0.6 seconds" in text
    assert "response.output_audio.done" in [e["type"] for e in during]

    result = p.parse_server_event(json.dumps(done))
    assert result == p.ResponseDone(response_id, "completed", None)
    assert bot.sessions[0].responses == [response_id]
    assert bot.sessions[0].audio_in_ms == pytest.approx(1800)


async def test_response_log_has_monotonic_timestamps_per_response() -> None:
    async with LocalRealtimeBot(reply_ms=300) as bot, client(bot) as c:
        await c.send(p.response_create())
        await c.until("response.output_audio.delta")
        greeting_delta_received = time.monotonic()
        await c.until("response.done")
        await c.speak(300)
        silence_sent_from = time.monotonic()
        await c.silence(600)
        created, _ = await c.until("response.created")
        await c.until("response.output_audio.delta")
        reply_delta_received = time.monotonic()
        await c.until("response.done")
    session = bot.sessions[0]
    greeting, reply = session.response_log
    assert [greeting.response_id, reply.response_id] == session.responses
    assert reply.response_id == created["response"]["id"]
    assert (greeting.trigger, reply.trigger) == ("response.create", "turn")
    assert (greeting.status, reply.status) == ("completed", "completed")
    assert greeting.audio_ms_sent == reply.audio_ms_sent == 300
    # The greeting was asked for: no turn behind it.
    assert greeting.speech_end_seen_at is None and greeting.turn_ended_at is None
    assert greeting.first_delta_sent_at is not None
    assert session.started_at <= greeting.created_at <= greeting.first_delta_sent_at
    assert greeting.first_delta_sent_at <= greeting_delta_received
    # The reply: silence seen (not the speech) -> turn ended -> response -> first delta.
    assert reply.speech_end_seen_at is not None and reply.turn_ended_at is not None
    assert reply.first_delta_sent_at is not None
    assert silence_sent_from <= reply.speech_end_seen_at <= reply.turn_ended_at
    assert reply.turn_ended_at <= reply.created_at <= reply.first_delta_sent_at
    assert reply.first_delta_sent_at <= reply_delta_received


async def test_pcm_output_is_24khz_linear() -> None:
    async with LocalRealtimeBot(reply_ms=200, chunk_ms=50) as bot, client(bot) as c:
        await c.send(p.session_update(p.SessionConfig(output_format="audio/pcm")))
        await c.until("session.updated")
        await c.send(p.response_create())
        _, during = await c.until("response.done")
    deltas = [e for e in during if e["type"] == "response.output_audio.delta"]
    assert [len(base64.b64decode(d["delta"])) for d in deltas] == [2400] * 4
    assert frame_level(_audio_of(deltas)) > 1000


async def test_no_response_when_create_response_is_off(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        await c.send(p.session_update(p.SessionConfig(create_response=False)))
        await c.until("session.updated")
        await c.speak(300, silence_ms=600)
        await c.until("conversation.item.input_audio_transcription.completed")
        with pytest.raises(TimeoutError):
            await c.recv(within=0.3 * FACTOR)


async def test_barge_in_cancels_response_with_turn_detected() -> None:
    async with (
        LocalRealtimeBot(reply_ms=3000, chunk_ms=20, send_realtime=True) as bot,
        client(bot) as c,
    ):
        await c.speak(300, silence_ms=600)
        created, _ = await c.until("response.created")
        response_id = created["response"]["id"]
        await c.until("response.output_audio.delta")
        await c.until("response.output_audio.delta")
        t0 = time.monotonic()
        await c.speak(100)
        started, before = await c.until("input_audio_buffer.speech_started")
        done, _ = await c.until("response.done")
        elapsed = time.monotonic() - t0
        # Nothing more for the cancelled response afterwards.
        late: list[dict[str, Any]] = []
        with pytest.raises(TimeoutError):
            while True:
                late.append(await c.recv(within=0.3 * FACTOR))
    # Paced at real time: only the first few deltas had gone out before the barge-in.
    deltas_before = [e for e in before if e["type"] == "response.output_audio.delta"]
    assert len(deltas_before) < 20
    assert elapsed < 1.0 * FACTOR
    result = p.parse_server_event(json.dumps(done))
    assert result == p.ResponseDone(response_id, "cancelled", "turn_detected")
    assert not [e for e in late if e.get("response_id") == response_id]
    assert started["audio_start_ms"] >= 600
    record = bot.sessions[0].response_log[0]
    assert (record.response_id, record.trigger, record.status) == (
        response_id, "turn", "cancelled")
    assert 0 < record.audio_ms_sent < 3000


async def test_interrupt_response_off_keeps_the_response() -> None:
    async with (
        LocalRealtimeBot(reply_ms=600, chunk_ms=20, send_realtime=True) as bot,
        client(bot) as c,
    ):
        await c.send(p.session_update(p.SessionConfig(interrupt_response=False)))
        await c.until("session.updated")
        await c.speak(300, silence_ms=600)
        await c.until("response.created")
        await c.until("response.output_audio.delta")
        await c.speak(100)
        await c.until("input_audio_buffer.speech_started")
        done, _ = await c.until("response.done")
    assert done["response"]["status"] == "completed"


async def test_real_time_pacing_takes_reply_ms() -> None:
    async with (
        LocalRealtimeBot(reply_ms=400, chunk_ms=100, send_realtime=True) as bot,
        client(bot) as c,
    ):
        await c.send(p.response_create())
        await c.until("response.created")
        t0 = time.monotonic()
        await c.until("response.done")
        elapsed = time.monotonic() - t0
    # Chunks go out at 0, 100, 200 and 300 ms.
    assert 0.28 <= elapsed < 0.3 + 0.5 * FACTOR


async def test_response_create_speaks_greeting_or_instructions() -> None:
    async with LocalRealtimeBot(reply_ms=300, greeting_text="Hi there caller") as bot:
        async with client(bot) as c:
            await c.send(p.conversation_item_create_text("system", "Greet the caller."))
            added, _ = await c.until("conversation.item.added")
            await c.send(p.response_create())
            greeting, _ = await c.until("response.output_audio_transcript.done")
            await c.until("response.done")
            await c.send(p.response_create("Goodbye now"))
            goodbye, _ = await c.until("response.output_audio_transcript.done")
    assert greeting["transcript"] == "Hi there caller"
    assert goodbye["transcript"] == "Goodbye now"
    assert added["item"]["role"] == "system" and added["item"]["id"]
    assert bot.sessions[0].items[0]["content"] == [
        {"type": "input_text", "text": "Greet the caller."}
    ]


async def test_response_create_while_active_is_an_error() -> None:
    async with (
        LocalRealtimeBot(reply_ms=2000, send_realtime=True) as bot,
        client(bot) as c,
    ):
        await c.send(p.response_create())
        await c.until("response.created")
        await c.send(p.response_create())
        error, _ = await c.until("error")
    assert error["error"]["code"] == "conversation_already_has_active_response"


async def test_response_cancel() -> None:
    async with (
        LocalRealtimeBot(reply_ms=2000, send_realtime=True) as slow_bot,
        client(slow_bot) as c,
    ):
        await c.send(p.response_cancel())
        error, _ = await c.until("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        await c.send(p.response_create())
        created, _ = await c.until("response.created")
        await c.until("response.output_audio.delta")
        await c.send(p.response_cancel())
        done, _ = await c.until("response.done")
    assert p.parse_server_event(json.dumps(done)) == p.ResponseDone(
        created["response"]["id"], "cancelled", "client_cancelled"
    )
    assert slow_bot.sessions[0].cancels == [None, None]


# ----------------------------------------------------------------- truncation


async def _one_response(c: Client) -> tuple[str, list[dict[str, Any]]]:
    await c.send(p.response_create())
    created, _ = await c.until("response.created")
    _, during = await c.until("response.done")
    deltas = [e for e in during if e["type"] == "response.output_audio.delta"]
    assert deltas and all(d["response_id"] == created["response"]["id"] for d in deltas)
    return str(deltas[0]["item_id"]), deltas


async def test_truncate_longer_than_sent_audio_is_an_error(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        item_id, _ = await _one_response(c)
        await c.send(p.item_truncate(item_id, 501))
        error = p.parse_server_event(json.dumps(await c.recv()))
    assert isinstance(error, p.ErrorEvent)
    assert "already shorter than" in error.message
    assert bot.sessions[0].truncates == [(item_id, 501)]


async def test_truncate_valid_then_again_longer(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        item_id, _ = await _one_response(c)
        await c.send(p.item_truncate(item_id, 500))
        full = p.parse_server_event(json.dumps(await c.recv()))
        await c.send(p.item_truncate(item_id, 240))
        truncated = p.parse_server_event(json.dumps(await c.recv()))
        await c.send(p.item_truncate(item_id, 300))
        again = await c.recv()
    assert full == p.ItemTruncated(item_id, 500)
    assert truncated == p.ItemTruncated(item_id, 240)
    assert again["type"] == "error" and "already shorter than" in again["error"]["message"]
    assert bot.sessions[0].truncates == [(item_id, 500), (item_id, 240), (item_id, 300)]


async def test_truncate_unknown_or_user_item_is_an_error(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        await c.send(p.item_truncate("item_nope", 0))
        unknown = await c.recv()
        await c.speak(200, silence_ms=600)
        committed, _ = await c.until("input_audio_buffer.committed")
        await c.send(p.item_truncate(committed["item_id"], 0))
        user = await c.until("error")
    assert unknown["type"] == "error" and "not found" in unknown["error"]["message"]
    assert "assistant" in user[0]["error"]["message"]


async def test_truncate_mid_response_is_bounded_by_audio_sent() -> None:
    async with (
        LocalRealtimeBot(reply_ms=3000, chunk_ms=100, send_realtime=True) as bot,
        client(bot) as c,
    ):
        await c.send(p.response_create())
        first, _ = await c.until("response.output_audio.delta")
        await c.send(p.response_cancel())
        await c.until("response.done")
        await c.send(p.item_truncate(first["item_id"], 2000))
        error, _ = await c.until("error")
    assert "already shorter than" in error["error"]["message"]


# ----------------------------------------------------------------- misc client events


async def test_unknown_client_event_is_an_error_and_connection_stays(
    bot: LocalRealtimeBot,
) -> None:
    async with client(bot) as c:
        await c.send(json.dumps({"type": "response.audio.delta", "event_id": "ev1"}))
        error = p.parse_server_event(json.dumps(await c.recv()))
        await c.send("{not json")
        bad_json = await c.recv()
        await c.send(p.session_update(p.SessionConfig()))
        updated = await c.recv()
    assert isinstance(error, p.ErrorEvent) and error.type == "invalid_request_error"
    assert bad_json["type"] == "error"
    assert updated["type"] == "session.updated"


async def test_manual_commit_and_clear(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        await c.send(p.session_update(p.SessionConfig(turn_detection=False)))
        await c.until("session.updated")
        await c.silence(60)
        await c.send(p.input_audio_commit())
        too_short = await c.recv()
        await c.speak(200)
        await c.send(p.input_audio_commit())
        committed = await c.recv()
        added = await c.recv()
        transcription = await c.recv()
        await c.send(p.input_audio_clear())
        cleared = await c.recv()
    assert too_short["error"]["code"] == "input_audio_buffer_commit_empty"
    assert committed["type"] == "input_audio_buffer.committed"
    assert added["type"] == "conversation.item.added"
    assert transcription["transcript"] == "(caller spoke 0.3 s)"
    assert cleared["type"] == "input_audio_buffer.cleared"


async def test_events_are_recorded_with_arrival_time(bot: LocalRealtimeBot) -> None:
    async with client(bot) as c:
        await c.speak(100)
        await c.send(p.session_update(p.SessionConfig()))
        await c.until("session.updated")
    record = bot.sessions[0]
    assert record.event_types() == ["input_audio_buffer.append"] * 5 + ["session.update"]
    times = [e.at for e in record.events]
    assert times == sorted(times)
    assert record.events[0].data["audio"] == base64.b64encode(_tone_frame(0)).decode()


async def test_recorded_events_are_bounded() -> None:
    async with LocalRealtimeBot(max_recorded_events=3) as bot, client(bot) as c:
        await c.silence(200)
        await c.send(p.session_update(p.SessionConfig()))
        await c.until("session.updated")
    assert len(bot.sessions[0].events) == 3


# ----------------------------------------------------------------- failures


async def test_drop_after_ms_closes_with_1011() -> None:
    async with LocalRealtimeBot(drop_after_ms=200) as bot, client(bot) as c:
        t0 = time.monotonic()
        closed = await _closed(c.ws)
        elapsed = time.monotonic() - t0
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert 0.15 <= elapsed < 0.2 + 2 * FACTOR
    await asyncio.sleep(0.05)
    assert bot.sessions[0].close_code == 1011


async def test_expire_after_ms_sends_session_expired_then_1001() -> None:
    async with LocalRealtimeBot(expire_after_ms=100) as bot, client(bot) as c:
        error = p.parse_server_event(json.dumps(await c.recv()))
        closed = await _closed(c.ws)
    assert isinstance(error, p.ErrorEvent) and error.code == "session_expired"
    assert closed.rcvd is not None and closed.rcvd.code == 1001


async def test_stop_closes_open_sessions() -> None:
    bot = LocalRealtimeBot(reply_ms=5000, send_realtime=True)
    await bot.start()
    async with client(bot) as c:
        await c.send(p.response_create())
        await c.until("response.created")
        await bot.stop()
        closed = await _closed(c.ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    with pytest.raises(RuntimeError):
        _ = bot.url


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        LocalRealtimeBot(chunk_ms=0)
    with pytest.raises(ValueError):
        LocalRealtimeBot(reply_ms=-1)
    with pytest.raises(ValueError):
        LocalRealtimeBot(drop_after_ms=-5)


async def test_drop_live_aborts_without_a_close_frame(bot: LocalRealtimeBot) -> None:
    assert bot.drop_live(5) == 0
    async with client(bot) as a, client(bot) as b:
        assert bot.live_connections == 2
        assert bot.drop_live(1) == 1
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(a.ws.recv(), TIMEOUT)
        assert closed.value.rcvd is None  # no close frame: a network cut (1006)
        await b.send(p.input_audio_append(SILENCE))  # the other session is untouched
        assert bot.live_connections == 1
