"""Watchdog cores on a fake clock (no sleeping)."""

from __future__ import annotations

import numpy as np

from audiosocket_gw.call import LevelBatch
from audiosocket_gw.dsp.vad import frame_level
from audiosocket_gw.watchdogs import AmdDetector, CallWatch, Limits, answered_by_from_amd


def tone(ms: int, amp: int = 3000) -> bytes:
    n = ms * 8
    return (np.sin(np.arange(n) * 0.3) * amp).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms * 16)


def feed(det: AmdDetector, pcm: bytes) -> None:
    for i in range(0, len(pcm), 320):
        if det.feed(pcm[i:i + 320]) is not None:
            return


def test_silence_timeout_on_fake_clock() -> None:
    w = CallWatch("c", 100.0, Limits(silence_timeout_s=20.0), outbound=False)
    assert w.check(119.9, 100.0, 100.0) == []
    assert w.check(125.0, 110.0, 100.0) == []  # caller speech at 110 resets it
    w.talking(126.0)  # TALK_DETECT event
    assert w.check(145.9, 110.0, 100.0) == []
    v = w.check(146.0, 110.0, 100.0)
    assert [(x.kind, x.reason) for x in v] == [("hangup", "silence-timeout")]
    assert w.check(200.0, 110.0, 100.0) == []  # done once


def test_bot_audio_counts_as_activity_and_max_duration() -> None:
    w = CallWatch("c", 0.0, Limits(silence_timeout_s=5.0, max_duration_s=30.0), outbound=False)
    for t in range(1, 30):
        assert w.check(float(t), 0.0, float(t)) == []
    assert [x.reason for x in w.check(30.0, 0.0, 30.0)] == ["max-duration"]


def test_amd_varsets_machine_hangs_up_or_leaves_message() -> None:
    w = CallWatch("c", 0.0, Limits(), outbound=True)
    w.amd("MACHINE", "LONGGREETING-1500-1500")
    v = w.check(1.0, 0.0, 0.0)
    assert [(x.kind, x.answered_by or x.reason) for x in v] == [
        ("answered_by", "machine_start"), ("hangup", "voicemail")]
    w2 = CallWatch("c", 0.0, Limits(voicemail_action="leave_message"), outbound=True)
    w2.amd("MACHINE", "LONGGREETING-1500-1500")
    assert [x.kind for x in w2.check(1.0, 0.0, 0.0)] == ["answered_by"]


def test_voicemail_budget_gives_unknown() -> None:
    w = CallWatch("c", 0.0, Limits(voicemail_budget_s=15.0), outbound=True)
    assert w.check(14.9, 14.0, 0.0) == []
    v = w.check(15.0, 14.0, 0.0)
    assert [(x.kind, x.answered_by) for x in v] == [("answered_by", "unknown")]
    inbound = CallWatch("c", 0.0, Limits(), outbound=False)
    assert inbound.check(15.0, 14.0, 0.0) == []


def test_in_stream_detector_matches_asterisk_amd() -> None:
    human = AmdDetector()
    feed(human, tone(400) + silence(900))
    assert human.result is not None and human.result.status == "HUMAN"
    machine = AmdDetector()
    feed(machine, tone(6000))
    assert machine.result is not None and machine.result.cause.startswith("LONGGREETING")
    quiet = AmdDetector()
    feed(quiet, silence(3000))
    assert quiet.result is not None and quiet.result.cause.startswith("INITIALSILENCE")
    words = AmdDetector()
    feed(words, (tone(200) + silence(100)) * 4)
    assert words.result is not None and words.result.cause.startswith("MAXWORDS")
    w = CallWatch("c", 0.0, Limits(), outbound=True)
    for i in range(0, 48000 * 2, 320):
        w.caller_audio(tone(6000)[i:i + 320])
    assert w.answered_by == "machine_start"


def test_answered_by_mapping() -> None:
    assert answered_by_from_amd("HUMAN") == "human"
    assert answered_by_from_amd("MACHINE") == "machine_start"
    assert answered_by_from_amd("NOTSURE") == "unknown"
    assert answered_by_from_amd("HANGUP") == "unknown"


def test_detector_steps_on_levels_measured_by_the_bridge() -> None:
    """The bridge measures every caller frame once (``LevelBatch``); the in-stream
    detector steps on those levels and decides exactly as on the raw audio."""
    pcm = tone(300) + silence(120) + tone(250) + silence(900)
    frames = [pcm[i:i + 480] for i in range(0, len(pcm), 480)]  # 30 ms frames
    on_audio, on_levels = AmdDetector(), AmdDetector()
    for f in frames:
        on_audio.feed(f)
        on_levels.feed_level(frame_level(f), len(f) // 2)
    assert on_audio.result is not None and on_audio.result == on_levels.result
    w = CallWatch("c", 0.0, Limits(), outbound=True)
    batch = LevelBatch()
    long_greeting = tone(2000)
    for i in range(0, len(long_greeting), 320):
        batch.add(_LevelsTo(w), long_greeting[i:i + 320])
    batch.run()
    assert w.answered_by == "machine_start"


class _LevelsTo:
    def __init__(self, watch: CallWatch) -> None:
        self.watch = watch

    def on_caller_level(self, level: float, samples: int) -> None:
        self.watch.caller_level(level, samples)

    def on_bot_level(self, level: float) -> None:
        raise AssertionError("no bot frame was added")
