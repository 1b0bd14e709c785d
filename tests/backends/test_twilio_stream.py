"""twilio-stream backend over real sockets: gateway + FakeTwilioApp + AudioSocket callers.

Every test runs a real gateway (``running_gateway(backend="twilio-stream")``), the strict
fake Media Streams app (which records every deviation from Twilio's behaviour in
``session.violations``) and a hand-driven AudioSocket caller that records the arrival time
of every frame the gateway writes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.dsp.g711 import ulaw_encode
from audiosocket_gw.testing.fakeapp import GREETING_MARK, FakeTwilioApp
from audiosocket_gw.twilio.ids import call_sid_for, is_sid
from tests.helpers import MS, running_gateway, until

SILENT = 64.0  # mean |sample| below which a frame counts as silence


def level(frame: bytes) -> float:
    return float(np.abs(np.frombuffer(frame, dtype="<i2").astype(np.int32)).mean())


class Caller:
    """Asterisk's side of one AudioSocket call: sends frames on a schedule, records arrivals."""

    def __init__(self, addr: tuple[str, int], *, frame_bytes: int = 320,
                 audio: bytes | None = None) -> None:
        self.addr = addr
        self.frame_bytes = frame_bytes
        self.audio = audio  # None: a silent channel (Asterisk sends nothing)
        self.call_id = str(uuid.uuid4())
        self.frames: list[tuple[float, bytes]] = []
        self.hangup_at: float | None = None
        self.closed = asyncio.Event()
        self.sent = bytearray()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Caller:
        self.reader, self.writer = await asyncio.open_connection(*self.addr)
        self.writer.write(asp.encode_uuid(self.call_id))
        self.t0 = time.monotonic()
        self._tasks.append(asyncio.create_task(self._read()))
        if self.audio is not None:
            self._tasks.append(asyncio.create_task(self._send()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hangup()

    async def _read(self) -> None:
        dec = asp.Decoder(require_uuid_first=False)
        while True:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:  # we kept sending after the gateway closed: RST
                break
            now = time.monotonic()
            if not data:
                break
            dec.feed(data)
            for ev in dec.events():
                if isinstance(ev, asp.Audio):
                    self.frames.append((now, ev.data))
                elif isinstance(ev, asp.Hangup):
                    self.hangup_at = now
        self.closed.set()

    async def _send(self) -> None:
        assert self.audio is not None
        period = self.frame_bytes / 16000
        n = 0
        while not self.closed.is_set() and not self.writer.is_closing():
            off = (n * self.frame_bytes) % len(self.audio)
            chunk = (self.audio + self.audio)[off: off + self.frame_bytes]
            self.writer.write(asp.encode_audio(chunk))
            self.sent += chunk
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n * period - time.monotonic()))

    def dtmf(self, digit: str) -> None:
        self.writer.write(asp.encode_dtmf(digit))

    async def hangup(self) -> None:
        for t in self._tasks[1:]:
            t.cancel()
        if not self.writer.is_closing():
            self.writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def loud(self) -> list[tuple[float, bytes]]:
        return [(t, f) for t, f in self.frames if level(f) >= SILENT]

    async def wait_until(self, pred: Any, wait_s: float = 3.0) -> None:
        await until(pred, wait_s)


def speech(seconds: float) -> bytes:
    """A caller signal below the gateway's local VAD threshold (the gateway's own barge-in
    would otherwise cut the app's audio, which Twilio never does: see the report)."""
    n = np.arange(int(seconds * 8000))
    return (300 * np.sin(2 * np.pi * 300 * n / 8000) + (n % 31)).astype("<i2").tobytes()


def assert_suffix_stream(got: bytes, sent_pcm: bytes, frame_bytes: int) -> None:
    """``got`` is the caller's audio as mu-law from some frame on (frames before the stream
    opened are not sent), cut at a 160-byte boundary."""
    sent = ulaw_encode(sent_pcm)
    step = frame_bytes // 2
    starts = [i for i in range(0, len(sent) - 160, step) if sent[i: i + len(got)] == got]
    assert starts, "inbound audio is not the caller's audio, frame-aligned"


def tenants_toml(tmp_path: Path, *, stream_url: str = "", voice_url: str = "",
                 extra: dict[str, str] | None = None, **agent: Any) -> str:
    lines = ['default_agent = "bot"', "[tenants.acme]",
             'twilio_account_sid = "AC' + "ab" * 16 + '"',
             "[agents.bot]", 'tenant = "acme"', 'backend = "twilio-stream"']
    if stream_url:
        lines.append(f'stream_url = "{stream_url}"')
    if voice_url:
        lines.append(f'voice_url = "{voice_url}"')
    for k, v in agent.items():
        lines.append(f"{k} = {v!r}".replace("'", '"'))
    if extra:
        lines.append("[agents.bot.extra]")
        lines += [f'{k} = "{v}"' for k, v in extra.items()]
    path = tmp_path / "tenants.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_valid_stream_greeting_heard_and_mark_after_audio() -> None:
    async with FakeTwilioApp(greeting_ms=400, greeting_chunk_bytes=1000) as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
        session = await app.wait_for_session()
        await app.wait_for(lambda: GREETING_MARK in session.marks_echoed, 5.0)
        echo_at = next(e.at for e in session.events if e.kind == "mark")
        await asyncio.sleep(60 * MS)
        assert session.violations == []
        assert session.kinds()[:2] == ["connected", "start"]
        assert is_sid("AC", session.account_sid) and session.account_sid is not None
        assert session.call_sid == call_sid_for(caller.call_id)
        assert session.custom_parameters == {}
        # The greeting (400 ms in 1000-byte media messages) reached the caller whole.
        loud = caller.loud()
        assert 19 <= len(loud) <= 21
        first, last = loud[0][0], loud[-1][0]
        assert 0.36 <= last - first <= 500 * MS
        # The mark came back after the last greeting frame was written, within 2 ticks.
        assert last - 5 * MS <= echo_at <= last + 60 * MS
        # Caller audio streamed as 160-byte mu-law chunks, byte-exact.
        got = bytes(session.inbound_audio)
        assert len(got) >= 160 * 10
        assert_suffix_stream(got, bytes(caller.sent), 320)
        assert gw.backends["twilio-stream"].metrics.mark_echo_delay._sum.get() > 0.3  # type: ignore[attr-defined]


async def test_30ms_caller_frames_recut_into_160_byte_chunks() -> None:
    async with FakeTwilioApp() as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, frame_bytes=480, audio=speech(0.6)) as caller:
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.of_kind("media")) >= 15, 3.0)
        assert session.violations == []  # 160-byte payloads, chunk/timestamp continuous
        got = bytes(session.inbound_audio)
        assert_suffix_stream(got, bytes(caller.sent), 480)
        stamps = [int(m["media"]["timestamp"]) for m in session.of_kind("media")]
        assert stamps[:4] == [0, 20, 40, 60]


async def test_silent_caller_still_streams_silence() -> None:
    async with FakeTwilioApp() as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, audio=None) as caller:
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.of_kind("media")) >= 1, 2.0)
        t_first = time.monotonic()
        await asyncio.sleep(400 * MS)
        n = len(session.of_kind("media"))
        expected = (time.monotonic() - t_first) / 0.020  # one chunk per 20 ms
        assert session.violations == []
        assert set(session.inbound_audio) == {0xFF}
        assert 0.7 * expected <= n <= 1.3 * expected + 1
        last_ts = int(session.of_kind("media")[-1]["media"]["timestamp"])
        assert abs(last_ts / 1000 - (time.monotonic() - t_first)) < 150 * MS
        assert caller.hangup_at is None
        # The silence fill runs on the gateway's pacer: no timer task of its own.
        backend = gw.backends["twilio-stream"]
        assert backend._tick_sub is not None  # type: ignore[attr-defined]
        assert not [t for t in asyncio.all_tasks() if "ticker" in t.get_name()]


async def test_clear_drops_audio_and_echoes_pending_mark_at_once() -> None:
    async with FakeTwilioApp(greeting_ms=3000, clear_on_dtmf=True) as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
        session = await app.wait_for_session()
        await caller.wait_until(lambda: len(caller.loud()) >= 10)
        caller.dtmf("5")
        await app.wait_for(lambda: GREETING_MARK in session.marks_echoed, 2.0)
        dtmf_at = next(e.at for e in session.events if e.kind == "dtmf")
        echo_at = next(e.at for e in session.events if e.kind == "mark")
        assert session.dtmf == ["5"]
        assert session.of_kind("dtmf")[0]["dtmf"] == {"track": "inbound_track", "digit": "5"}
        assert echo_at - dtmf_at < 0.1  # at once, not after the 3 s greeting
        await asyncio.sleep(100 * MS)
        loud = caller.loud()
        assert loud[-1][0] <= dtmf_at + 50 * MS  # silenced within a tick or two
        assert len(loud) < 100
        assert session.violations == []


async def test_app_hangup_ends_call() -> None:
    async with FakeTwilioApp(hangup_after_ms=200) as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
        await asyncio.wait_for(caller.closed.wait(), 3.0)
        assert caller.hangup_at is not None  # 00 00 00 before the close
        session = app.sessions[0]
        assert session.hung_up and session.violations == []


async def test_caller_hangup_sends_stop() -> None:
    async with FakeTwilioApp() as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw:
        async with Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
            session = await app.wait_for_session()
            await app.wait_for(lambda: len(session.of_kind("media")) >= 5, 2.0)
        await asyncio.wait_for(session.closed.wait(), 3.0)
        assert session.kinds()[-1] == "stop"
        assert session.of_kind("stop")[0]["stop"] == {
            "accountSid": session.account_sid, "callSid": call_sid_for(caller.call_id)}
        assert session.violations == []
        assert session.close_code == 1000


async def test_malformed_app_messages_are_not_fatal() -> None:
    extra: list[Any] = ["not json", {"event": "bogus"},
                        {"event": "media", "media": {"payload": "!!"}},
                        {"event": "mark", "mark": {"name": "after-junk"}}]
    async with FakeTwilioApp(extra_on_start=extra) as app, \
            running_gateway(backend="twilio-stream", stream_url=app.url) as gw, \
            Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
        session = await app.wait_for_session()
        await app.wait_for(lambda: "after-junk" in session.marks_echoed, 2.0)
        assert session.violations == []
        backend = gw.backends["twilio-stream"]
        assert backend.metrics.app_messages_rejected._value.get() == 3  # type: ignore[attr-defined]
        assert caller.hangup_at is None and not caller.closed.is_set()


async def test_on_app_close_continue_keeps_call(tmp_path: Path) -> None:
    async with FakeTwilioApp(hangup_after_ms=100) as app:
        cfg = tenants_toml(tmp_path, stream_url=app.url, extra={"on_app_close": "continue"})
        async with running_gateway(config=cfg) as gw, \
                Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
            session = await app.wait_for_session()
            await asyncio.wait_for(session.closed.wait(), 2.0)
            n = len(caller.frames)
            await asyncio.sleep(200 * MS)
            assert caller.hangup_at is None and not caller.closed.is_set()
            assert len(caller.frames) >= n + 5  # the pacer keeps the line alive
            assert session.custom_parameters == {}
            assert session.account_sid == "AC" + "ab" * 16


@pytest.mark.parametrize("fallback", ["hangup", "announce"])
async def test_app_down_fallback(tmp_path: Path, fallback: str) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    cfg = tenants_toml(tmp_path, stream_url=f"ws://127.0.0.1:{port}/stream",
                       extra={"fallback": fallback})
    async with running_gateway(config=cfg) as gw, \
            Caller(gw.audiosocket.address, audio=speech(1.0)) as caller:
        await asyncio.wait_for(caller.closed.wait(), 3.0)
        assert caller.hangup_at is not None
        loud = caller.loud()
        if fallback == "announce":
            assert 25 <= len(loud) <= 35  # three 200 ms beeps, then the hangup
        else:
            assert loud == []
        fails = gw.backends["twilio-stream"].metrics.app_connect_failures
        assert fails.labels("connect")._value.get() == 1  # type: ignore[attr-defined]
