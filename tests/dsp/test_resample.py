"""Tests for the streaming polyphase resampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_gw.dsp.resample import StreamResampler

RATE_PAIRS = [(8000, 24000), (24000, 8000), (8000, 16000), (16000, 8000)]


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _noise(rate: int, seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, int(rate * seconds)).astype(np.int16)


def _pcm(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def _arr(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _one_shot(in_rate: int, out_rate: int, pcm: bytes) -> bytes:
    rs = StreamResampler(in_rate, out_rate)
    return rs.process(pcm) + rs.flush()


def _chunked(in_rate: int, out_rate: int, pcm: bytes, sizes: list[int]) -> bytes:
    rs = StreamResampler(in_rate, out_rate)
    out = []
    pos = 0
    for size in sizes:
        out.append(rs.process(pcm[pos : pos + size]))
        pos += size
    out.append(rs.process(pcm[pos:]))
    out.append(rs.flush())
    return b"".join(out)


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x)) + 1e-12))


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_20ms_chunks_equal_one_shot(in_rate: int, out_rate: int) -> None:
    pcm = _pcm(_noise(in_rate, 1.0))
    frame = in_rate // 50 * 2
    sizes = [frame] * (len(pcm) // frame)
    whole = _one_shot(in_rate, out_rate, pcm)
    assert _chunked(in_rate, out_rate, pcm, sizes) == whole
    factor = max(in_rate, out_rate) // min(in_rate, out_rate)
    n_in = len(pcm) // 2
    expected_core = n_in * factor if out_rate > in_rate else n_in // factor
    assert len(whole) // 2 > expected_core  # the flushed tail adds the delayed samples


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_odd_sample_and_odd_byte_chunks_equal_one_shot(in_rate: int, out_rate: int) -> None:
    pcm = _pcm(_noise(in_rate, 0.3, seed=2))
    sizes = [1, 2, 3, 5, 7, 2, 1, 1, 641, 0, 2, 963, 4, 1, 1, 37]
    assert _chunked(in_rate, out_rate, pcm, sizes) == _one_shot(in_rate, out_rate, pcm)


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(RATE_PAIRS),
    sizes=st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_random_chunks_equal_one_shot(pair: tuple[int, int], sizes: list[int], seed: int) -> None:
    in_rate, out_rate = pair
    pcm = _pcm(_noise(in_rate, 0.25, seed=seed))
    assert _chunked(in_rate, out_rate, pcm, sizes) == _one_shot(in_rate, out_rate, pcm)


def test_output_lengths_per_chunk() -> None:
    up = StreamResampler(8000, 24000)
    assert len(up.process(bytes(320))) == 960
    assert len(up.process(bytes(480))) == 1440
    assert len(up.process(bytes(3))) == 6  # one sample now, the odd byte is kept
    assert len(up.process(bytes(1))) == 6
    down = StreamResampler(24000, 8000)
    lengths = [len(down.process(bytes(2))) for _ in range(6)]
    assert lengths == [2, 0, 0, 2, 0, 0]
    assert len(down.process(bytes(960))) == 320


@pytest.mark.parametrize(("low", "high"), [(8000, 24000), (8000, 16000)])
def test_sine_round_trip_snr(low: int, high: int) -> None:
    x = _tone(1000, low, 1.0).astype(np.float64)
    up = StreamResampler(low, high)
    down = StreamResampler(high, low)
    mid = up.process(_pcm(x)) + up.flush()
    y = _arr(down.process(mid) + down.flush())
    delay = round((up.latency_ms + down.latency_ms) * low / 1000)
    assert delay == 20
    core = slice(200, len(x) - 200)
    aligned = y[delay : delay + len(x)]
    signal = x[core]
    error = aligned[core] - signal
    snr = _rms_db(signal) - _rms_db(error)
    assert snr > 30
    # Misaligning by one sample must wreck the SNR: the delay is really 20 samples.
    wrong = y[delay + 1 : delay + 1 + len(x)][core] - signal
    assert _rms_db(signal) - _rms_db(wrong) < 20


@pytest.mark.parametrize("freq", [300, 1000, 3000])
def test_upsampling_keeps_level(freq: int) -> None:
    x = _tone(freq, 8000, 0.5).astype(np.float64)
    rs = StreamResampler(8000, 24000)
    y = _arr(rs.process(_pcm(x)))
    level_in = _rms_db(x[400:-400])
    level_out = _rms_db(y[1200:-1200])
    assert abs(level_out - level_in) < 0.5
    # No image of the tone above 4 kHz: compare with a pure tone at 24 kHz.
    spectrum = np.abs(np.fft.rfft(y[1200:-1200] * np.hanning(len(y) - 2400)))
    freqs = np.fft.rfftfreq(len(y) - 2400, 1 / 24000)
    images = spectrum[freqs > 4600].max()
    assert 20 * np.log10(images / spectrum.max()) < -40


def test_6khz_tone_does_not_alias_when_downsampling() -> None:
    x = _tone(6000, 24000, 1.0).astype(np.float64)
    rs = StreamResampler(24000, 8000)
    y = _arr(rs.process(_pcm(x)))
    attenuation = _rms_db(x) - _rms_db(y[100:-100])
    assert attenuation > 40
    # Whereas a 2 kHz tone (where 6 kHz would alias to) passes at full level.
    z = _arr(StreamResampler(24000, 8000).process(_pcm(_tone(2000, 24000, 1.0))))
    assert abs(_rms_db(z[100:-100]) - _rms_db(x)) < 0.5


def test_naive_per_frame_resampling_would_fail_but_streaming_does_not() -> None:
    # Continuity check: the streaming output of a sine has no frame-boundary glitches.
    x = _tone(440, 8000, 0.5)
    rs = StreamResampler(8000, 24000)
    frames = [rs.process(_pcm(x[i : i + 160])) for i in range(0, len(x), 160)]
    y = _arr(b"".join(frames))
    reference = 10000 * np.sin(2 * np.pi * 440 * (np.arange(len(y)) - 30) / 24000)
    assert np.max(np.abs(y[100:] - reference[100:])) < 60


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_silence_stays_silence(in_rate: int, out_rate: int) -> None:
    rs = StreamResampler(in_rate, out_rate)
    out = rs.process(bytes(in_rate // 50 * 2 * 10)) + rs.flush()
    assert len(out) > 0
    assert out == bytes(len(out))


def test_full_scale_is_clipped_not_wrapped() -> None:
    square = np.tile(np.r_[np.full(8, 32767), np.full(8, -32768)], 100).astype(np.int16)
    rs = StreamResampler(8000, 24000)
    y = np.frombuffer(rs.process(_pcm(square)), dtype="<i2").astype(np.int32)
    # Gibbs overshoot saturates at the rails instead of wrapping to the other sign.
    assert y.max() == 32767
    assert y.min() == -32768
    middle = y[60 : 60 + 48 * 90].reshape(-1, 48)[:, 20:28]  # positive half-period centres
    assert np.all(middle > 25000)


def test_flush_resets_state() -> None:
    rs = StreamResampler(8000, 24000)
    pcm = _pcm(_noise(8000, 0.1))
    first = rs.process(pcm) + rs.flush()
    second = rs.process(pcm) + rs.flush()
    assert first == second
    assert len(first) == (len(pcm) // 2 + 10) * 3 * 2


def test_reset_drops_state() -> None:
    rs = StreamResampler(24000, 8000)
    pcm = _pcm(_noise(24000, 0.05))
    first = rs.process(pcm)
    rs.process(b"\x01\x02\x03")
    rs.reset()
    assert rs.process(pcm) == first


def test_latency() -> None:
    for in_rate, out_rate in RATE_PAIRS:
        assert StreamResampler(in_rate, out_rate).latency_ms == pytest.approx(1.25)
    assert StreamResampler(8000, 8000).latency_ms == 0.0


def test_equal_rates_pass_through() -> None:
    rs = StreamResampler(8000, 8000)
    pcm = _pcm(_noise(8000, 0.05))
    assert rs.process(pcm[:101]) + rs.process(pcm[101:]) + rs.flush() == pcm


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(8000, 11025), (44100, 8000), (0, 8000), (8000, -16000), (16000, 24000)],
)
def test_unsupported_rates_raise(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match=r"\d"):
        StreamResampler(in_rate, out_rate)
