"""Tests for the frame-level voice activity detector."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from audiosocket_gw.dsp.vad import (
    SILENCE_LEVEL,
    VadConfig,
    VadEvent,
    VoiceActivityDetector,
    frame_level,
)


def _tone(amplitude: float, samples: int = 160, freq: float = 440.0) -> bytes:
    t = np.arange(samples) / 8000
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _const(value: int, samples: int = 160) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def _run(
    vad: VoiceActivityDetector, frames: list[bytes], bot_level: float = 0.0
) -> list[VadEvent | None]:
    return [vad.process(f, bot_level) for f in frames]


SILENCE = bytes(320)
LOUD = _const(3000)  # 20 ms, level 3000
LOUD_30MS = _const(3000, 240)  # 480 bytes


def test_frame_level() -> None:
    assert frame_level(b"") == 0.0
    assert frame_level(b"\x05") == 0.0
    assert frame_level(_const(-1000)) == 1000.0
    assert frame_level(np.array([100, -300, 0, -32768], "<i2").tobytes()) == 8292.0
    assert frame_level(np.array([10, -30], "<i2").tobytes() + b"\xff") == 20.0
    level = frame_level(_tone(10000, 8000))
    assert level == pytest.approx(10000 * 2 / np.pi, rel=1e-3)


def test_silence_level_constant() -> None:
    assert SILENCE_LEVEL == 256.0
    assert frame_level(_const(255)) < SILENCE_LEVEL <= frame_level(_const(256))


def test_default_config() -> None:
    config = VadConfig()
    assert (config.threshold, config.onset_ms, config.hangover_ms, config.echo_margin) == (
        600.0,
        80,
        400,
        2.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threshold = 1.0  # type: ignore[misc]
    assert VoiceActivityDetector().config == config


@pytest.mark.parametrize("field", ["threshold", "onset_ms", "hangover_ms", "echo_margin"])
def test_config_rejects_negative(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        VadConfig(**{field: -1})


def test_silence_and_quiet_noise_never_trigger() -> None:
    vad = VoiceActivityDetector()
    rng = np.random.default_rng(0)
    noise = [rng.integers(-500, 500, 160).astype("<i2").tobytes() for _ in range(500)]
    assert all(frame_level(f) < 600 for f in noise)
    assert _run(vad, [SILENCE] * 500 + noise) == [None] * 1000
    assert vad.speaking is False


def test_loud_tone_starts_after_exactly_onset_and_stops_after_hangover() -> None:
    vad = VoiceActivityDetector()
    events = _run(vad, [SILENCE] * 10 + [_tone(5000)] * 20 + [SILENCE] * 30)
    assert events[10:13] == [None, None, None]
    assert events[13] is VadEvent.SPEECH_START  # 4th loud frame = 80 ms
    assert events.index(VadEvent.SPEECH_START) == 13
    assert events[14:30] == [None] * 16
    # 400 ms hangover = 20 silent frames: the 20th silent frame (index 30 + 19) stops.
    assert events[30:49] == [None] * 19
    assert events[49] is VadEvent.SPEECH_STOP
    assert events[50:] == [None] * 10
    assert events.count(VadEvent.SPEECH_START) == 1
    assert events.count(VadEvent.SPEECH_STOP) == 1
    assert vad.speaking is False


def test_speaking_property_follows_events() -> None:
    vad = VoiceActivityDetector()
    states = []
    for frame in [LOUD] * 5 + [SILENCE] * 21:
        vad.process(frame)
        states.append(vad.speaking)
    assert states == [False] * 3 + [True] * 21 + [False] * 2


def test_short_click_does_not_trigger() -> None:
    vad = VoiceActivityDetector()
    click = [LOUD] * 3  # 60 ms < 80 ms onset
    frames = ([SILENCE] * 5 + click) * 10
    assert _run(vad, frames) == [None] * len(frames)
    assert vad.speaking is False


def test_onset_must_be_consecutive() -> None:
    vad = VoiceActivityDetector()
    frames = [LOUD, LOUD, LOUD, SILENCE, LOUD, LOUD, LOUD, LOUD]
    assert _run(vad, frames) == [None] * 7 + [VadEvent.SPEECH_START]


def test_short_pause_within_speech_does_not_stop() -> None:
    vad = VoiceActivityDetector()
    frames = [LOUD] * 4 + ([SILENCE] * 19 + [LOUD]) * 5 + [SILENCE] * 20
    events = _run(vad, frames)
    assert [e for e in events if e is not None] == [VadEvent.SPEECH_START, VadEvent.SPEECH_STOP]
    assert events[-1] is VadEvent.SPEECH_STOP


def test_threshold_is_strict() -> None:
    at_threshold = _const(600)
    vad = VoiceActivityDetector()
    assert _run(vad, [at_threshold] * 20) == [None] * 20
    assert _run(vad, [_const(601)] * 4)[-1] is VadEvent.SPEECH_START


def test_480_byte_frames() -> None:
    vad = VoiceActivityDetector()
    events = _run(vad, [LOUD_30MS] * 5 + [_const(0, 240)] * 15)
    # 80 ms onset: frames of 30 ms reach it on the 3rd frame (90 ms).
    assert events[:3] == [None, None, VadEvent.SPEECH_START]
    # 400 ms hangover: 14 frames = 420 ms is the first >= 400 ms.
    assert events[5:18] == [None] * 13
    assert events[18] is VadEvent.SPEECH_STOP


def test_mixed_and_odd_frame_sizes_count_time_exactly() -> None:
    vad = VoiceActivityDetector()
    # 10 ms + 30 ms + 39.875 ms = 79.875 ms: not yet; one more sample reaches 80 ms.
    assert vad.process(_const(3000, 80)) is None
    assert vad.process(_const(3000, 240)) is None
    assert vad.process(_const(3000, 319) + b"\x01") is None
    assert vad.process(_const(3000, 1)) is VadEvent.SPEECH_START


def test_empty_frame_changes_nothing() -> None:
    vad = VoiceActivityDetector()
    _run(vad, [LOUD] * 3)
    assert vad.process(b"") is None
    assert vad.process(LOUD) is VadEvent.SPEECH_START


def test_echo_at_bot_level_does_not_trigger_but_loud_speech_does() -> None:
    vad = VoiceActivityDetector()
    bot_level = 2000.0
    echo = _tone(2000 * np.pi / 2 * 1.5)  # caller-leg echo at 1.5x the bot's level
    assert frame_level(echo) > VadConfig().threshold  # would trigger without the bot
    assert _run(vad, [echo] * 50, bot_level=bot_level) == [None] * 50
    assert vad.speaking is False
    loud = _tone(8000)  # level ~5093 > 2 * 2000
    events = _run(vad, [loud] * 4, bot_level=bot_level)
    assert events == [None, None, None, VadEvent.SPEECH_START]
    # The same echo counted as speech once the bot is quiet.
    vad2 = VoiceActivityDetector()
    assert _run(vad2, [echo] * 4)[-1] is VadEvent.SPEECH_START


def test_bot_starting_to_play_ends_echo_speech() -> None:
    vad = VoiceActivityDetector()
    frame = _const(1500)
    assert _run(vad, [frame] * 4)[-1] is VadEvent.SPEECH_START
    events = _run(vad, [frame] * 20, bot_level=1000.0)  # needs > 2000 now
    assert events[-1] is VadEvent.SPEECH_STOP


def test_low_bot_level_keeps_base_threshold() -> None:
    vad = VoiceActivityDetector()
    assert vad.threshold_for(0.0) == 600.0
    assert vad.threshold_for(100.0) == 600.0
    assert vad.threshold_for(1000.0) == 2000.0
    assert _run(vad, [_const(500)] * 10, bot_level=100.0) == [None] * 10


def test_custom_config() -> None:
    vad = VoiceActivityDetector(VadConfig(threshold=100, onset_ms=20, hangover_ms=60))
    events = _run(vad, [_const(200), SILENCE, SILENCE, SILENCE])
    assert events == [VadEvent.SPEECH_START, None, None, VadEvent.SPEECH_STOP]


def test_reset() -> None:
    vad = VoiceActivityDetector()
    _run(vad, [LOUD] * 4)
    assert vad.speaking is True
    vad.reset()
    assert vad.speaking is False
    assert _run(vad, [SILENCE] * 30) == [None] * 30
    _run(vad, [LOUD] * 3)
    vad.reset()
    assert vad.process(LOUD) is None  # the onset count was cleared too


def test_frame_levels_equals_frame_level_per_frame() -> None:
    """The batched levels (both the equal-size 2-D path and the mixed-size path) are
    exactly the one-frame levels."""
    from audiosocket_gw.dsp.vad import frame_level, frame_levels

    rng = np.random.default_rng(7)

    def frames(sizes: list[int]) -> list[bytes]:
        return [rng.integers(-32768, 32768, n // 2, dtype=np.int16).tobytes()
                + (b"\x7f" if n & 1 else b"") for n in sizes]

    for batch in (frames([320] * 400), frames([480] * 7), frames([320, 480, 0, 321, 2]),
                  frames([2] * 3), frames([320] * 399 + [322]), [b""], []):
        got = frame_levels(batch)
        assert got.tolist() == [frame_level(f) for f in batch]
    # loudest possible frames: the sums stay exact
    loud = [bytes.fromhex("0080") * 240] * 5
    assert frame_levels(loud).tolist() == [32768.0] * 5
