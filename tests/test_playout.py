"""Playout buffer: frames, positions, marks, clear, per-item played milliseconds."""

from __future__ import annotations

from audiosocket_gw.playout import FRAME_BYTES, PlayoutBuffer


def tone(n: int, value: int = 1) -> bytes:
    return bytes([value]) * n


def test_empty_buffer_gives_none() -> None:
    b = PlayoutBuffer()
    assert b.pop_frame() is None
    assert b.underruns == 0


def test_frames_are_cut_across_chunks() -> None:
    b = PlayoutBuffer()
    b.push(tone(100, 1))
    b.push(tone(500, 2))
    f1 = b.pop_frame()
    assert f1 == tone(100, 1) + tone(220, 2)
    f2 = b.pop_frame()
    assert f2 == tone(280, 2) + bytes(40)  # tail padded with silence when not streaming
    assert b.played_bytes == 600 and b.pending_bytes == 0
    assert b.pop_frame() is None


def test_streaming_tail_is_held_and_counted_as_underrun() -> None:
    b = PlayoutBuffer()
    b.streaming = True
    b.push(tone(400))
    assert b.pop_frame() == tone(320)
    assert b.pop_frame() is None  # 80 bytes held back, frame alignment kept
    b.push(tone(240, 3))  # the utterance went on: that silent tick was a gap in it
    assert b.underruns == 1
    assert b.pop_frame() == tone(80) + tone(240, 3)


def test_idle_ticks_are_not_underruns() -> None:
    """Only a gap inside an utterance is an underrun: silent ticks after its last audio
    (before or after the backend says it is over) and an idle bot are not."""
    b = PlayoutBuffer()
    b.streaming = True
    b.push(tone(640))
    assert b.pop_frame() is not None and b.pop_frame() is not None
    for _ in range(5):  # ran out; the backend has not said it is over yet
        assert b.pop_frame() is None
    b.end_utterance()
    for _ in range(50):  # idle bot
        assert b.pop_frame() is None
    b.streaming = True  # the next utterance
    b.push(tone(320))
    assert b.underruns == 0
    # A gap inside an utterance, then its end with a held-back tail still to play.
    assert b.pop_frame() is not None
    b.push(tone(100))
    assert b.pop_frame() is None and b.pop_frame() is None
    b.end_utterance()
    assert b.underruns == 2
    assert b.pop_frame() == tone(100) + bytes(220)
    # A gap whose continuation was cleared (barge-in) is not an underrun either.
    b.streaming = True
    b.push(tone(100))
    assert b.pop_frame() is None
    b.clear()
    b.streaming = True
    b.push(tone(320))
    assert b.underruns == 2


def test_marks_fire_when_their_audio_is_written() -> None:
    b = PlayoutBuffer()
    assert b.mark("now") is True  # nothing queued: echo at once
    b.push(tone(FRAME_BYTES * 2))
    assert b.mark("a") is False
    b.push(tone(FRAME_BYTES))
    assert b.mark("b") is False
    b.pop_frame()
    assert b.reached_marks() is None
    b.pop_frame()
    assert b.reached_marks() == ["a"]
    b.pop_frame()
    assert b.reached_marks() == ["b"]


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    b = PlayoutBuffer()
    b.push(tone(FRAME_BYTES * 5), item_id="item1")
    b.mark("m1")
    b.push(tone(FRAME_BYTES))
    b.mark("m2")
    b.pop_frame()
    assert b.clear() == ["m1", "m2"]
    assert b.pop_frame() is None
    assert b.played_ms("item1") == 20
    assert b.enqueued_bytes == b.played_bytes  # positions stay consistent
    assert b.mark("after") is True


def test_played_ms_per_item_is_exact() -> None:
    b = PlayoutBuffer()
    b.push(tone(16 * 50), item_id="x")  # 50 ms
    b.push(tone(16 * 30), item_id="y")  # 30 ms
    b.pop_frame()  # 20 ms of x
    b.pop_frame()  # 20 ms of x
    assert b.played_ms("x") == 40 and b.played_ms("y") == 0
    b.pop_frame()  # 10 ms x + 10 ms y
    assert b.played_ms("x") == 50 and b.played_ms("y") == 10
    assert b.played_ms("unknown") == 0


def test_buffer_is_bounded() -> None:
    b = PlayoutBuffer(max_bytes=1000)
    assert b.push(tone(900))
    assert not b.push(tone(200))
    assert b.dropped_bytes == 200 and b.pending_bytes == 900


def test_item_history_keeps_the_newest_items() -> None:
    """The per-item history is bounded (32 items): the oldest items are forgotten, the
    newest always kept, or ``played_ms`` of the item being played (the one a barge-in
    truncates) would read 0 once a call has had more than 32 bot items."""
    b = PlayoutBuffer()
    for i in range(40):
        b.push(tone(FRAME_BYTES), item_id=f"i{i}")  # 20 ms each
    b.push(tone(FRAME_BYTES * 5), item_id="long")  # 100 ms
    for _ in range(42):
        assert b.pop_frame() is not None
    assert b.played_ms("long") == 40  # the item in progress, 2 frames in
    assert [b.played_ms(f"i{i}") for i in range(40)] == [0] * 9 + [20] * 31
