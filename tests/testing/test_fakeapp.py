"""Tests for the fake Media Streams app, driven by a client speaking through the encoder.

This also tests :class:`TwilioStreamEncoder` end to end over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from audiosocket_gw.dsp.g711 import ulaw_decode
from audiosocket_gw.testing.fakeapp import (
    GREETING_MARK,
    FakeTwilioApp,
    StreamValidator,
    tone_ulaw,
)
from audiosocket_gw.twilio.ids import call_sid_for, derived_account_sid, stream_sid_for
from audiosocket_gw.twilio.streams import (
    AppClear,
    AppMark,
    AppMedia,
    TwilioStreamEncoder,
    parse_app_message,
)

WAIT = 5.0


def encoder(**kw: Any) -> TwilioStreamEncoder:
    call_id = str(uuid.uuid4())
    return TwilioStreamEncoder(
        stream_sid=stream_sid_for(call_id),
        call_sid=call_sid_for(call_id),
        account_sid=derived_account_sid("acme"),
        **kw,
    )


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.recv()
    assert isinstance(frame, str)
    msg = json.loads(frame)
    assert isinstance(msg, dict)
    return msg


@pytest.fixture
async def app_factory() -> AsyncIterator[Any]:
    apps: list[FakeTwilioApp] = []

    async def make(**kw: Any) -> FakeTwilioApp:
        app = FakeTwilioApp(**kw)
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.stop()


def test_tone_is_8_bytes_per_ms_and_not_silent():
    tone = tone_ulaw(500)
    assert len(tone) == 4000
    assert len(set(tone)) > 20
    pcm = memoryview(ulaw_decode(tone)).cast("h")
    assert 0.25 * 32767 < max(pcm) <= 0.31 * 32767


async def test_url_and_lifecycle(app_factory):
    app = await app_factory()
    assert app.url == f"ws://127.0.0.1:{app.port}/stream"
    assert app.port > 0
    with pytest.raises(RuntimeError):
        await app.start()
    await app.stop()
    await app.stop()  # idempotent


async def test_faithful_session_has_no_violations(app_factory):
    app = await app_factory(greeting_ms=500, greeting_chunk_bytes=1000)
    enc = encoder(custom_parameters={"From": "+15017122661", "lang": "fr"})
    inbound = tone_ulaw(400, 300.0)
    async with connect(app.url, additional_headers={"X-Twilio-Signature": "sig"}) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        greeting: list[Any] = []
        while True:
            msg = await recv_json(ws)
            assert msg["streamSid"] == enc.stream_sid
            parsed = parse_app_message(json.dumps(msg))
            greeting.append(parsed)
            if isinstance(parsed, AppMark):
                break
        for i in range(0, len(inbound), 160):
            await ws.send(enc.media(inbound[i : i + 160]))
        await ws.send(enc.mark(GREETING_MARK))  # "played": echo the mark
        await ws.send(enc.dtmf("7"))
        await ws.send(enc.stop())
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.events) == 2 + 20 + 3)
    await asyncio.wait_for(session.closed.wait(), WAIT)

    assert session.violations == []
    assert session.kinds() == ["connected", "start"] + ["media"] * 20 + ["mark", "dtmf", "stop"]
    assert bytes(session.inbound_audio) == inbound
    assert session.marks_echoed == [GREETING_MARK]
    assert session.dtmf == ["7"]
    assert session.stream_sid == enc.stream_sid
    assert session.call_sid == enc.call_sid
    assert session.account_sid == enc.account_sid
    assert session.custom_parameters == {"From": "+15017122661", "lang": "fr"}
    assert session.path == "/stream"
    assert session.headers["x-twilio-signature"] == "sig"
    assert session.close_code == 1000
    assert not session.hung_up
    times = [e.at for e in session.events]
    assert times == sorted(times)

    # greeting: 4000 bytes in 1000-byte media messages, then the mark
    assert [type(m) for m in greeting] == [AppMedia] * 4 + [AppMark]
    assert [len(m.payload) for m in greeting[:4]] == [1000] * 4
    assert b"".join(m.payload for m in greeting[:4]) == tone_ulaw(500)
    assert greeting[-1] == AppMark(GREETING_MARK, enc.stream_sid)
    assert session.sent_audio() == tone_ulaw(500)
    assert [m["event"] for m in session.sent] == ["media"] * 4 + ["mark"]


async def test_odd_greeting_chunking(app_factory):
    app = await app_factory(greeting_ms=300, greeting_chunk_bytes=1000)
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        sizes = []
        while (msg := await recv_json(ws))["event"] == "media":
            sizes.append(len(base64.b64decode(msg["media"]["payload"])))
        assert msg == {
            "event": "mark",
            "mark": {"name": GREETING_MARK},
            "streamSid": enc.stream_sid,
        }
    assert sizes == [1000, 1000, 400]


async def test_echo(app_factory):
    app = await app_factory(echo=True)
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        frames = [bytes([i]) * 160 for i in range(5)]
        for frame in frames:
            await ws.send(enc.media(frame))
        echoed = [parse_app_message(json.dumps(await recv_json(ws))) for _ in frames]
    assert echoed == [AppMedia(f, enc.stream_sid) for f in frames]
    session = app.sessions[0]
    assert session.violations == []


async def test_clear_on_dtmf(app_factory):
    app = await app_factory(clear_on_dtmf=True, greeting_ms=100)
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        while (await recv_json(ws))["event"] != "mark":
            pass
        await ws.send(enc.media(bytes(160)))
        await ws.send(enc.dtmf("*"))
        msg = await recv_json(ws)
        assert parse_app_message(json.dumps(msg)) == AppClear(enc.stream_sid)
        # after clear, Twilio echoes the pending mark at once
        await ws.send(enc.mark(GREETING_MARK))
        session = await app.wait_for_session()
        await app.wait_for(lambda: session.marks_echoed == [GREETING_MARK])
    assert session.violations == []
    assert session.dtmf == ["*"]


async def test_no_dtmf_reaction_by_default(app_factory):
    app = await app_factory()
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        await ws.send(enc.dtmf("1"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await ws.recv()
    assert app.sessions[0].sent == []


async def test_hangup_after_ms(app_factory):
    app = await app_factory(hangup_after_ms=100)
    enc = encoder()
    loop = asyncio.get_running_loop()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        t0 = loop.time()
        await ws.send(enc.start())
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                while True:
                    await ws.send(enc.media(bytes(160)))
                    await asyncio.sleep(0.02)
        elapsed = loop.time() - t0
    session = app.sessions[0]
    await asyncio.wait_for(session.closed.wait(), WAIT)
    assert session.hung_up
    assert 0.09 <= elapsed < 2.0
    assert session.close_code == 1000
    assert session.violations == []


async def test_extra_on_start_raw_and_dict(app_factory):
    app = await app_factory(extra_on_start=["not json", {"event": "clear"}])
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        async with asyncio.timeout(WAIT):
            assert await ws.recv() == "not json"
        assert await recv_json(ws) == {"event": "clear", "streamSid": enc.stream_sid}


async def test_several_sessions(app_factory):
    app = await app_factory()
    encs = [encoder(), encoder()]
    async with connect(app.url) as ws1, connect(app.url + "?x=1") as ws2:
        for ws, enc in zip((ws1, ws2), encs, strict=True):
            await ws.send(enc.connected())
            await ws.send(enc.start())
        await app.wait_for(lambda: sum(len(s.events) for s in app.sessions) == 4)
    assert {s.stream_sid for s in app.sessions} == {e.stream_sid for e in encs}
    assert all(s.violations == [] for s in app.sessions)


async def test_wrong_path_binary_and_garbage_recorded(app_factory):
    app = await app_factory()
    url = app.url.replace("/stream", "/other")
    async with connect(url) as ws:
        await ws.send(b"\x00\x01")
        await ws.send("{oops")
        await ws.send("[1]")
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.violations) == 4)
    assert "expected '/stream'" in session.violations[0]
    assert "binary frame" in session.violations[1]
    assert "not JSON" in session.violations[2]
    assert "not an object" in session.violations[3]


async def test_violations_over_the_socket(app_factory):
    app = await app_factory()
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        await ws.send(enc.media(bytes(100)))  # short frame
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.events) == 3)
    assert session.violations == ["#3 media: media.payload is 100 bytes, expected 160"]


async def test_wait_for_times_out(app_factory):
    app = await app_factory()
    with pytest.raises(TimeoutError):
        await app.wait_for(lambda: False, wait_s=0.05)


# -- the validator alone ---------------------------------------------------------------------


def good_events(n_media: int = 3) -> tuple[TwilioStreamEncoder, list[dict[str, Any]]]:
    enc = encoder(custom_parameters={"a": "b"})
    frames = [enc.connected(), enc.start()]
    frames += [enc.media(bytes(160)) for _ in range(n_media)]
    frames += [enc.dtmf("1"), enc.mark("m1"), enc.stop()]
    return enc, [json.loads(f) for f in frames]


def run(events: list[dict[str, Any]], marks: tuple[str, ...] = ("m1",)) -> list[str]:
    validator = StreamValidator()
    for name in marks:
        validator.expect_mark(name)
    out: list[str] = []
    for event in events:
        out += validator.feed(event)
    return out


def test_validator_accepts_encoder_output():
    _, events = good_events(50)
    assert run(events) == []


def test_validator_unsent_mark():
    _, events = good_events()
    assert run(events, marks=()) == ["#7 mark: mark 'm1' echoed but never sent (or echoed twice)"]


def test_validator_mark_order():
    enc = encoder()
    frames = [enc.connected(), enc.start(), enc.mark("b"), enc.mark("a")]
    out = run([json.loads(f) for f in frames], marks=("a", "b"))
    assert out == ["#3 mark: mark 'b' echoed before 'a'"]


def mutate(index: int, change: Any) -> list[dict[str, Any]]:
    _, events = good_events()
    change(events[index])
    return events


@pytest.mark.parametrize(
    ("index", "change", "expected"),
    [
        (0, lambda e: e.update(event="start"), "first event is not 'connected'"),
        (0, lambda e: e.update(version="2.0"), "protocol 'Call' and version '1.0.0'"),
        (0, lambda e: e.update(sequenceNumber="0"), "neither sequenceNumber nor streamSid"),
        (1, lambda e: e.update(sequenceNumber=1), "sequenceNumber must be a decimal string"),
        (1, lambda e: e.update(sequenceNumber="2"), "start must have sequenceNumber '1'"),
        (1, lambda e: e["start"].update(accountSid="AC1"), "not an AC sid"),
        (1, lambda e: e["start"].update(callSid="CAx"), "not a CA sid"),
        (1, lambda e: e["start"].update(streamSid="MZ" + "0" * 32), "differs from the message"),
        (1, lambda e: e["start"].update(tracks=["both"]), "tracks must be ['inbound']"),
        (1, lambda e: e["start"].update(customParameters={"a": 1}), "object of strings"),
        (1, lambda e: e["start"]["mediaFormat"].update(sampleRate="8000"), "mediaFormat"),
        (1, lambda e: e["start"]["mediaFormat"].update(channels=True), "mediaFormat"),
        (1, lambda e: e["start"]["mediaFormat"].update(encoding="audio/l16"), "mediaFormat"),
        (1, lambda e: e.pop("start"), "missing 'start' object"),
        (2, lambda e: e.pop("streamSid"), "missing streamSid"),
        (2, lambda e: e.update(streamSid="MZ" + "f" * 32), "differs from start's"),
        (2, lambda e: e.update(sequenceNumber="5"), "sequenceNumber 5 does not follow 1"),
        (2, lambda e: e.update(sequenceNumber="+3"), "sequenceNumber must be a decimal string"),
        (2, lambda e: e["media"].update(chunk=1), "media.chunk must be a decimal string"),
        (3, lambda e: e["media"].update(chunk="3"), "media.chunk 3 does not follow 1"),
        (3, lambda e: e["media"].update(timestamp="21"), "timestamp 21 but 20 expected"),
        (3, lambda e: e["media"].update(timestamp=20), "timestamp must be a decimal string"),
        (2, lambda e: e["media"].update(track="outbound"), "track must be 'inbound'"),
        (2, lambda e: e["media"].update(payload="!!"), "not valid base64"),
        (2, lambda e: e["media"].update(payload="/w=="), "1 bytes, expected 160"),
        (2, lambda e: e["media"].pop("payload"), "payload missing"),
        (5, lambda e: e["dtmf"].update(track="inbound"), "must be 'inbound_track'"),
        (5, lambda e: e["dtmf"].update(digit="11"), "not a DTMF digit"),
        (6, lambda e: e["mark"].update(name=3), "mark.name must be a string"),
        (7, lambda e: e["stop"].update(callSid="CA" + "0" * 32), "differ from start's"),
        (7, lambda e: e.update(event="hangup"), "unknown event kind"),
        (2, lambda e: e.pop("event"), "missing or non-string 'event'"),
    ],
)
def test_validator_catches(index, change, expected):
    out = run(mutate(index, change))
    assert any(expected in v for v in out), out


def test_validator_missing_connected_reported_once():
    _, events = good_events()
    assert run(events[1:]) == ["#1 start: first event is not 'connected'"]


def test_validator_order_problems():
    enc, events = good_events()
    assert run(events[:1] + events[2:]) != []  # no start
    assert "event before start" in run(events[:1] + events[2:])[0]
    assert "connected sent again" in run(events[:2] + events[:1])[0]
    assert any("start sent again" in v for v in run(events[:2] + [events[1]]))
    after = run(events + [events[2]])
    assert after[0].startswith("#9 media: event after stop")


async def test_sample_shaped_deltas_barge_in_and_reply(app_factory):
    """``mark_each_chunk`` + ``barge_in`` + ``reply_ms``: the official samples' behaviour."""
    app = await app_factory(greeting_ms=500, greeting_chunk_bytes=800, mark_each_chunk=True,
                            barge_in=True, reply_ms=100, silence_frames=3)
    assert app.listens
    enc = encoder()
    quiet, loud = bytes([0xFF]) * 160, tone_ulaw(20, 300.0)
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        greeting = [await recv_json(ws) for _ in range(10)]
        # one media message per 100 ms delta, each followed by its mark
        assert [m["event"] for m in greeting] == ["media", "mark"] * 5
        names = [m["mark"]["name"] for m in greeting[1::2]]
        assert names == [f"greeting:{n}" for n in range(5)]
        session = await app.wait_for_session()
        assert session.mark_queue == names and session.last_assistant_item == "greeting"
        for name in names[:2]:  # the caller heard the first 200 ms
            await ws.send(enc.mark(name))
        for frame in (quiet, quiet, loud, loud):  # speech starts on the 2nd loud frame
            await ws.send(enc.media(frame))
        assert await recv_json(ws) == {"event": "clear", "streamSid": enc.stream_sid}
        for name in names[2:]:  # Twilio echoes what the clear discarded at once
            await ws.send(enc.mark(name))
        for frame in (quiet, quiet, quiet):  # the caller's turn ends: the app replies
            await ws.send(enc.media(frame))
        reply = [await recv_json(ws) for _ in range(2)]
        assert [m["event"] for m in reply] == ["media", "mark"]
        assert reply[1]["mark"]["name"] == "reply-1:0"
        assert base64.b64decode(reply[0]["media"]["payload"]) == tone_ulaw(100, 660.0)
        await ws.send(enc.mark("reply-1:0"))
        await ws.send(enc.stop())
        await app.wait_for(lambda: len(session.events) == 2 + 5 + 7 + 1 + 1)
    await asyncio.wait_for(session.closed.wait(), WAIT)

    assert session.violations == []
    assert session.responses == ["greeting", "reply-1"]
    assert [stamp for _, stamp in session.speech_starts] == [60]
    assert [stamp for _, stamp, _ in session.inbound_levels] == [20 * k for k in range(7)]
    (cut,) = session.interruptions
    assert cut.item == "greeting"
    assert cut.elapsed_ms == 60  # latest_media_timestamp - response_start_timestamp_twilio
    assert cut.played_ms_by_marks == 200
    assert cut.pending_marks == tuple(names[2:])
    assert cut.at == session.timed_sent()[10][0]  # the clear, after the 10 greeting messages
    assert session.mark_queue == [] and session.last_assistant_item == "reply-1"
    assert [n for _, n in session.mark_echoes()] == [*names, "reply-1:0"]
    assert [n for _, n in session.sent_marks()] == [*names, "reply-1:0"]
    assert session.sent_at == sorted(session.sent_at)


async def test_no_speech_detection_unless_asked(app_factory):
    app = await app_factory(greeting_ms=100)
    assert not app.listens
    enc = encoder()
    async with connect(app.url) as ws:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        while (await recv_json(ws))["event"] != "mark":
            pass
        for _ in range(4):
            await ws.send(enc.media(tone_ulaw(20, 300.0)))
        session = await app.wait_for_session()
        await app.wait_for(lambda: len(session.events) == 6)
    assert session.inbound_levels == [] and session.speech_starts == []
    assert [m["event"] for m in session.sent] == ["media", "mark"]  # no clear
    assert session.mark_queue == [GREETING_MARK]  # never echoed
    assert session.responses == ["greeting"]


async def test_drop_live_and_forget_closed(app_factory):
    app = await app_factory()
    enc = encoder()
    async with connect(app.url) as ws, connect(app.url) as idle:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        await app.wait_for(lambda: any(s.call_sid for s in app.sessions))
        assert len(app.live_sessions) == 2
        # Only sessions that got their ``start`` (a call sid to report) are dropped.
        assert app.drop_live(5) == [enc.call_sid]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5.0)
        assert closed.value.rcvd is None  # aborted: no close frame
        await app.wait_for(lambda: len(app.live_sessions) == 1)
        gone = app.forget_closed()
        assert [s.call_sid for s in gone] == [enc.call_sid]
        assert len(app.sessions) == 1 and not app.sessions[0].closed.is_set()
        await idle.send(encoder().connected())  # the other one is untouched
