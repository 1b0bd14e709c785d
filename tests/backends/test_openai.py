"""The ``openai`` backend end to end: simulated calls -> real gateway -> local Realtime bot.

Every test runs the real gateway in-process on free ports, the real
``LocalRealtimeBot`` (or, for malformed events, a small GA-speaking server) over real
WebSockets, and :class:`SimCaller` as Asterisk, which keeps each received frame with its
arrival time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from audiosocket_gw.backends.openai import OpenAIBackend, compose_url
from audiosocket_gw.backends.openai_policy import (
    ContextHistory,
    ReconnectPolicy,
    TurnTracker,
    settings_for,
)
from audiosocket_gw.call import Call
from audiosocket_gw.config import ConfigError
from audiosocket_gw.dsp.g711 import ulaw_encode
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.tenants import Agent
from audiosocket_gw.testing.bench.bargein import SimCaller, caller_audio
from audiosocket_gw.testing.localbot import LocalRealtimeBot
from tests.helpers import MS, make_config, running_gateway

S = 1000 * MS  # one test second

GREETING = "Hello from the test agent."


def agents_toml(path: Path, *, greeting: str | None = GREETING, dump: bool = False,
                **extra: str) -> str:
    lines = ['default_agent = "bot"', "[tenants.t1]", "[agents.bot]", 'tenant = "t1"',
             'backend = "openai"', 'instructions = "Be brief."', 'voice = "marin"']
    if greeting is not None:
        lines.append(f'greeting = "{greeting}"')
    if dump:
        lines.append("debug_dump = true")
    extra.setdefault("reconnect_base_ms", "20")
    lines.append("[agents.bot.extra]")
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    file = path / "agents.toml"
    file.write_text("\n".join(lines) + "\n")
    return str(file)


@asynccontextmanager
async def gateway(tmp_path: Path, url: str, *, api_key: str | None = None,
                  **agent: Any) -> AsyncIterator[tuple[Gateway, Ended]]:
    overrides: dict[str, Any] = {}
    if "barge_in" in agent:
        overrides["barge_in"] = agent.pop("barge_in")
    cfg = agents_toml(tmp_path, **agent)
    ended = Ended()
    async with running_gateway(backend="openai", openai_url=url, openai_api_key=api_key,
                               config=cfg, data_dir=str(tmp_path / "data"),
                               **overrides) as gw:
        gw.events.ended.connect(ended.add)
        yield gw, ended


def bot_url(bot: LocalRealtimeBot) -> str:
    return f"ws://127.0.0.1:{bot.port}/v1/realtime"


class Ended(list[Call]):
    """Calls that ended, with a way to wait for the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    def add(self, call: Call) -> None:
        self.append(call)
        self.event.set()

    async def wait(self, within: float = 3.0) -> None:
        await asyncio.wait_for(self.event.wait(), within * S)


def backend_of(gw: Gateway) -> OpenAIBackend:
    backend = gw.backends["openai"]
    assert isinstance(backend, OpenAIBackend)
    return backend


# ----------------------------------------------------------------------------- calls


async def test_greeting_reply_transcripts_and_dump(tmp_path: Path) -> None:
    async with LocalRealtimeBot(reply_ms=300, silence_ms=200) as bot:
        async with gateway(tmp_path, bot_url(bot), dump=True) as (gw, ended):
            audio = caller_audio(2.2, [(0.8, 1.1)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
    assert heard.ended_by == "simulator"
    first = heard.first_audio_s()
    assert first is not None and first < 0.5 * S
    # The greeting (300 ms) is over before the caller speaks; the reply comes after the
    # caller's turn ends (200 ms of silence) and is heard.
    end_of_speech = caller.onset(1.1)
    assert heard.audio_frames_before(end_of_speech) == pytest.approx(15, abs=2)
    assert heard.audio_frames_before(end_of_speech + 1.0) >= 28
    session = bot.sessions[0]
    assert session.model == "gpt-realtime"
    cfg = session.session_config
    assert cfg is not None and cfg["type"] == "realtime"
    assert cfg["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert cfg["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert cfg["instructions"] == "Be brief."
    types = session.event_types()
    assert types[:3] == ["session.update", "conversation.item.create", "response.create"]
    assert "error" not in session.sent_types
    call = ended[0]
    roles = [role for _, role, _ in call.transcripts]
    assert roles[:3] == ["bot", "caller", "bot"]
    assert GREETING in call.transcripts[0][2]
    # The debug dump: stereo WAV on the pacer clock, and the event log.
    dumps = tmp_path / "data" / "dumps"
    with wave.open(str(dumps / f"{call.call_id}.wav")) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        frames = wav.getnframes()
        data = np.frombuffer(wav.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert abs(frames - call.frames_out * 160) <= 160
    assert np.abs(data[:, 1]).max() > 1000  # bot channel has the greeting
    assert np.abs(data[:, 0]).max() > 10000  # caller channel has the speech
    events = [json.loads(line) for line in
              (dumps / f"{call.call_id}.events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert "session.created" in kinds and "response.done" in kinds
    assert [e["role"] for e in events if e["type"] == "transcript"][:2] == ["bot", "caller"]


async def test_barge_in_truncates_to_what_was_heard(tmp_path: Path) -> None:
    async with LocalRealtimeBot(reply_ms=3000) as bot:
        async with gateway(tmp_path, bot_url(bot)) as (gw, ended):
            audio = caller_audio(2.0, [(0.9, 1.4)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
    onset = caller.onset(0.9)
    cut = heard.cut_after(onset)
    assert cut is not None and cut < 0.3 * S
    session = bot.sessions[0]
    assert len(session.truncates) == 1
    _, audio_end_ms = session.truncates[0]
    assert audio_end_ms == pytest.approx(heard.heard_ms_until_cut(onset), abs=20)
    assert "conversation.item.truncated" in session.sent_types
    assert "error" not in session.sent_types  # no "already shorter than", no bad cancel
    # The reply was all received before the cut (fast deltas): nothing to cancel.
    assert session.cancels == []
    assert ended[0].barge_ins == 1


async def test_local_vad_cut_cancels_active_response(tmp_path: Path) -> None:
    # The bot's own VAD never fires and it streams at real time: only the gateway's
    # local VAD cuts, while the response is still active, so it is cancelled.
    async with LocalRealtimeBot(reply_ms=3000, send_realtime=True, vad_threshold=1e9) as bot:
        async with gateway(tmp_path, bot_url(bot)) as (gw, ended):
            audio = caller_audio(1.8, [(0.8, 1.3)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
            sources = _barge_ins(gw)
    onset = caller.onset(0.8)
    cut = heard.cut_after(onset)
    assert cut is not None and cut < 0.3 * S
    session = bot.sessions[0]
    # the cancel names the response it cuts (a late one can never hit the next response)
    assert session.cancels == [session.responses[0]]
    assert len(session.truncates) == 1
    assert session.truncates[0][1] == pytest.approx(heard.heard_ms_until_cut(onset), abs=20)
    assert "error" not in session.sent_types
    assert sources == {"local-vad": 1.0}
    # No audio of the cancelled response after the cut.
    assert heard.audio_frames_before(onset + 0.9) == heard.audio_frames_before(onset + 0.3)


async def test_speech_started_cut_without_local_vad(tmp_path: Path) -> None:
    # Local VAD off: only the server's speech_started can cut the buffered greeting.
    async with LocalRealtimeBot(reply_ms=3000) as bot:
        async with gateway(tmp_path, bot_url(bot), barge_in=False) as (gw, ended):
            audio = caller_audio(1.8, [(0.8, 1.3)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
            sources = _barge_ins(gw)
    onset = caller.onset(0.8)
    cut = heard.cut_after(onset)
    assert cut is not None and cut < 0.3 * S
    session = bot.sessions[0]
    assert session.cancels == []
    assert len(session.truncates) == 1
    assert session.truncates[0][1] == pytest.approx(heard.heard_ms_until_cut(onset), abs=20)
    assert "error" not in session.sent_types
    assert sources == {"server-vad": 1.0}
    assert ended[0].barge_ins == 1


async def test_speech_started_while_streaming_lets_server_cancel(tmp_path: Path) -> None:
    # Real-time deltas: the response is active when the server detects speech; it
    # cancels it itself (interrupt_response), so the gateway sends no response.cancel
    # (which would earn response_cancel_not_active), only the exact truncate.
    async with LocalRealtimeBot(reply_ms=3000, send_realtime=True) as bot:
        async with gateway(tmp_path, bot_url(bot), barge_in=False) as (gw, ended):
            audio = caller_audio(1.8, [(0.8, 1.3)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
    onset = caller.onset(0.8)
    cut = heard.cut_after(onset)
    assert cut is not None and cut < 0.3 * S
    session = bot.sessions[0]
    assert session.cancels == []
    assert len(session.truncates) == 1
    assert session.truncates[0][1] == pytest.approx(heard.heard_ms_until_cut(onset), abs=20)
    assert "error" not in session.sent_types
    assert heard.audio_frames_before(onset + 0.9) == heard.audio_frames_before(onset + 0.3)


def _barge_ins(gw: Gateway) -> dict[str, float]:
    out = {}
    for metric in gw.metrics.barge_ins.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["source"]] = sample.value
    return out


async def test_reconnect_replays_context_and_call_continues(tmp_path: Path) -> None:
    async with LocalRealtimeBot(reply_ms=400, silence_ms=200, drop_after_ms=1300) as bot:
        async with gateway(tmp_path, bot_url(bot)) as (gw, ended):
            audio = caller_audio(3.2, [(0.6, 0.9), (1.9, 2.2)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
            counters = backend_of(gw).counters
    assert heard.ended_by == "simulator"
    assert counters["reconnects"] >= 1
    assert len(bot.sessions) >= 2
    assert bot.sessions[0].close_code == 1011
    second = bot.sessions[1]
    replayed = [(item["role"], item["content"][0]["text"]) for item in second.items]
    assert ("assistant", GREETING) in replayed  # the words the bot spoke, replayed
    assert any(role == "user" and text.startswith("(caller spoke") for role, text in replayed)
    # No greeting again on the new session, and the call went on: the second utterance
    # got a reply heard by the caller (frames after its end).
    assert "response.create" not in second.event_types()
    after = caller.onset(2.2)
    assert heard.audio_frames_before(after + 0.9) - heard.audio_frames_before(after) >= 10
    assert ended[0].end_reason == "caller-hangup"


async def test_unreachable_backend_hangs_up_after_n_failures(tmp_path: Path) -> None:
    async with LocalRealtimeBot() as bot:
        url = bot_url(bot)
    # The bot is stopped: every connect is refused.
    async with gateway(tmp_path, url, reconnect_attempts="2") as (gw, ended):
        caller = SimCaller(*gw.audiosocket.address, caller_audio(3.0, []))
        heard = await caller.run()
        counters = backend_of(gw).counters
    assert heard.ended_by == "gateway-hangup"
    assert ended[0].end_reason == "backend-unavailable"
    assert counters["connect_attempts"] == 3
    assert counters["reconnects"] == 2


async def test_auth_failure_is_not_retried(tmp_path: Path) -> None:
    async with LocalRealtimeBot(api_key="right-key") as bot:
        async with gateway(tmp_path, bot_url(bot), api_key="wrong-key",
                           reconnect_attempts="5") as (gw, ended):
            caller = SimCaller(*gw.audiosocket.address, caller_audio(3.0, []))
            heard = await caller.run()
            counters = backend_of(gw).counters
    assert heard.ended_by == "gateway-hangup"
    assert ended[0].end_reason == "backend-auth"
    assert counters["connect_attempts"] == 1
    assert bot.sessions == []


async def test_api_key_is_sent_as_bearer(tmp_path: Path) -> None:
    async with LocalRealtimeBot(api_key="right-key", reply_ms=200) as bot:
        async with gateway(tmp_path, bot_url(bot), api_key="right-key") as (gw, _):
            heard = await SimCaller(*gw.audiosocket.address, caller_audio(0.6, [])).run()
    assert heard.first_audio_s() is not None
    assert bot.sessions[0].headers.get("Authorization") == "Bearer right-key"
    assert "OpenAI-Beta" not in bot.sessions[0].headers


async def test_malformed_and_unknown_events_are_survived(tmp_path: Path) -> None:
    tone = (8000 * np.sin(2 * np.pi * 300 * np.arange(4000) / 8000)).astype("<i2")
    delta = base64.b64encode(ulaw_encode(tone.tobytes())).decode()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        await ws.recv()  # session.update
        for junk in ("not json", "[1, 2]", '{"type": 5}', '{"type": "response.output_audio.delta"}',
                     '{"type": "response.output_audio.delta", "response_id": "r", '
                     '"item_id": "i", "output_index": 0, "content_index": 0, "delta": "@@"}',
                     '{"type": "some.future.event", "x": 1}'):
            await ws.send(junk)
        base = {"response_id": "r1", "item_id": "i1", "output_index": 0, "content_index": 0}
        await ws.send(json.dumps({"type": "response.created", "response": {"id": "r1"}}))
        await ws.send(json.dumps({"type": "response.output_audio.delta", **base, "delta": delta}))
        await ws.send(json.dumps({"type": "response.output_audio.done", **base}))
        await ws.send(json.dumps({"type": "response.done",
                                  "response": {"id": "r1", "status": "completed"}}))
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with gateway(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime",
                           greeting=None) as (gw, ended):
            caller = SimCaller(*gw.audiosocket.address, caller_audio(1.2, []))
            heard = await caller.run()
            await ended.wait()
            counters = backend_of(gw).counters
    assert heard.ended_by == "simulator"
    assert heard.audio_frames_before(heard.started + 1.2) == pytest.approx(25, abs=1)
    assert counters["malformed_events"] == 5
    assert counters["unknown_events"] == 1
    assert counters["reconnects"] == 0


async def test_pcm24_path(tmp_path: Path) -> None:
    async with LocalRealtimeBot(reply_ms=2000) as bot:
        async with gateway(tmp_path, bot_url(bot), audio_format="pcm24") as (gw, ended):
            audio = caller_audio(1.6, [(0.7, 1.2)])
            caller = SimCaller(*gw.audiosocket.address, audio)
            heard = await caller.run()
            await ended.wait()
    session = bot.sessions[0]
    cfg = session.session_config
    assert cfg is not None
    assert cfg["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert cfg["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    first = heard.first_audio_s()
    assert first is not None and first < 0.5 * S
    # 24 kHz input resampled from 8 kHz: the bot's VAD saw the speech at the right time.
    assert 650 <= session.audio_in_ms <= 1700
    onset = caller.onset(0.7)
    cut = heard.cut_after(onset)
    assert cut is not None and cut < 0.3 * S
    assert len(session.truncates) == 1
    assert session.truncates[0][1] == pytest.approx(heard.heard_ms_until_cut(onset), abs=20)
    assert "error" not in session.sent_types
    # Bot audio at 8 kHz has the 300 Hz tone, not resampling garbage.
    frames = [f for _, f in heard.frames[5:30]]
    pcm = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak_hz = np.argmax(spectrum) * 8000 / len(pcm)
    assert peak_hz == pytest.approx(300, abs=15)


# ----------------------------------------------------------------------------- config


def test_from_config_urls_and_keys() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIBackend.from_config(make_config(backend="openai"))
    cfg = make_config(backend="openai", openai_api_key="sk-test")
    backend = OpenAIBackend.from_config(cfg)
    assert backend.url_for(settings_for(None)) == (
        "wss://api.openai.com/v1/realtime?model=gpt-realtime")
    local = OpenAIBackend.from_config(make_config(
        backend="openai", openai_url="ws://127.0.0.1:9/v1/realtime", openai_model="m1"))
    assert local.api_key is None
    agent = Agent(name="a", tenant="t", backend="openai", extra={"model": "m2"})
    assert local.url_for(settings_for(agent)) == "ws://127.0.0.1:9/v1/realtime?model=m2"
    assert compose_url("ws://h/v1/realtime?model=x&a=1", None) == "ws://h/v1/realtime?model=x&a=1"
    with pytest.raises(ConfigError):
        OpenAIBackend("http://h/v1/realtime", model="m")
    assert "sk-test" not in repr(cfg)


def test_agent_settings_validation() -> None:
    agent = Agent(name="a", tenant="t", backend="openai", greeting="Hi", voice="cedar",
                  extra={"audio_format": "pcm24", "vad_threshold": "0.7",
                         "silence_duration_ms": "300", "interrupt_response": "false",
                         "transcription_model": "none"})
    s = settings_for(agent)
    sc = s.session_config()
    assert (sc.input_format, sc.output_format, sc.rate) == ("audio/pcm", "audio/pcm", 24000)
    assert (sc.vad_threshold, sc.silence_duration_ms, sc.interrupt_response) == (0.7, 300, False)
    assert sc.transcription_model is None and sc.voice == "cedar" and s.greeting == "Hi"
    for bad in ({"audio_format": "mp3"}, {"vad_threshold": "2"}, {"append_ms": "x"},
                {"create_response": "maybe"}, {"turn_detection": "semantic"}):
        with pytest.raises(ConfigError):
            settings_for(Agent(name="a", tenant="t", backend="openai", extra=bad))


# ----------------------------------------------------------------------------- policy


def test_reconnect_policy() -> None:
    p = ReconnectPolicy(attempts=4, base_s=0.1, max_s=0.3)
    assert [p.delay(n) for n in range(6)] == [None, 0.1, 0.2, 0.3, 0.3, None]
    for code in (1001, 1005, 1006, 1011, 1012, 1013, None):
        assert p.retry_close(code)
    for code in (1000, 1008, 4000):
        assert not p.retry_close(code)
    assert p.retry_close(1000, expired=True)
    assert not p.retry_status(401) and not p.retry_status(403) and not p.retry_status(404)
    assert p.retry_status(503) and p.retry_status(429)


def test_turn_tracker_plans() -> None:
    t = TurnTracker(8.0)
    t.response_created("r1")
    assert t.audio("r1", "i1", 800)  # 100 ms
    # Played more than received (never happens, but clamp): truncate to what was received.
    plan = t.barge_in(250, server_cancels=False)
    assert plan.truncate == ("i1", 100) and plan.cancel
    assert not t.audio("r1", "i1", 800)  # late deltas of the cut response are dropped
    t.response_done("r1")
    t.response_created("r2")
    assert t.audio("r2", "i2", 1600)
    t.response_done("r2")  # all received: the response is no longer active
    plan = t.barge_in(120, server_cancels=False)
    assert plan.truncate == ("i2", 120) and not plan.cancel
    t.response_created("r3")
    t.audio("r3", "i3", 80)
    assert not t.barge_in(5, server_cancels=True).cancel
    assert t.barge_in(0, server_cancels=False).truncate is None  # nothing playing now


@pytest.mark.parametrize(("bytes_per_ms", "received", "want_ms"), [
    (8.0, 805, 100),  # pcmu/pcma: 100.625 ms received
    (8.0, 7, 0),  # less than a millisecond
    (48.0, 1000, 20),  # pcm 24 kHz: 20.83 ms received
    (48.0, 4799, 99),  # 99.98 ms
])
def test_truncate_clamp_rounds_received_audio_down(
        bytes_per_ms: float, received: int, want_ms: int) -> None:
    """The server refuses a truncate past the audio it sent; fractional milliseconds
    received (odd delta sizes) must round down, never up."""
    t = TurnTracker(bytes_per_ms)
    t.response_created("r1")
    t.audio("r1", "i1", received)
    assert t.received_ms("i1") == want_ms
    plan = t.barge_in(want_ms + 50, server_cancels=False)  # played "more" than received
    assert plan.truncate == ("i1", want_ms)


def test_context_history_is_bounded() -> None:
    h = ContextHistory(limit=2)
    for i in range(5):
        h.add("caller", f"line {i}")
    h.add("bot", "   ")
    assert list(h) == [("caller", "line 3"), ("caller", "line 4")]
    assert list(ContextHistory(limit=0)) == []
