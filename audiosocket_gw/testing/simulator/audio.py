"""Audio sources for simulated callers: WAV files and generated speech-like signals.

Generated audio can be *tagged*: the first four samples of every 20 ms frame carry a
magic word, the call index and the frame's sequence number. The echo backend returns
audio byte for byte, so the simulator can match each echoed frame to the frame it sent
and measure transit time exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

RATE: Final = 8000
FRAME_SAMPLES: Final = 160
TAG_MAGIC: Final = 0x5A7A  # 23162, an unlikely sample value in this position


def speech_like(seconds: float, *, seed: int = 0, level: float = 6000.0) -> npt.NDArray[np.int16]:
    """Talk spurts (a voiced tone with harmonics, syllable-rate envelope) and pauses."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    rng = np.random.default_rng(seed)
    f0 = 110.0 + 60.0 * rng.random()
    voice = (
        np.sin(2 * np.pi * f0 * t)
        + 0.5 * np.sin(2 * np.pi * 2 * f0 * t)
        + 0.25 * np.sin(2 * np.pi * 3 * f0 * t)
    )
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t))
    # 1.5 s of talk, then 1 s pause, repeating, offset per caller.
    phase = (t + rng.random() * 2.5) % 2.5
    talking = (phase < 1.5).astype(np.float64)
    signal = level * voice / 1.75 * syllables * talking
    return np.clip(signal, -32768, 32767).astype(np.int16)


def tag_frames(samples: npt.NDArray[np.int16], call_index: int) -> npt.NDArray[np.int16]:
    """Stamp (magic, call index, seq high, seq low) into each frame's first samples."""
    out = samples.copy()
    frames = len(out) // FRAME_SAMPLES
    for seq in range(frames):
        base = seq * FRAME_SAMPLES
        out[base] = TAG_MAGIC
        out[base + 1] = call_index & 0x7FFF
        out[base + 2] = (seq >> 15) & 0x7FFF
        out[base + 3] = seq & 0x7FFF
    return out


def read_tag(frame: bytes, call_index: int) -> int | None:
    """The sequence number stamped in ``frame`` by ``tag_frames``, if it is ours."""
    if len(frame) < 8:
        return None
    s = np.frombuffer(frame[:8], dtype="<i2")
    if int(s[0]) != TAG_MAGIC or int(s[1]) != (call_index & 0x7FFF):
        return None
    return (int(s[2]) << 15) | int(s[3])


def load_wav_8k(path: str | Path) -> npt.NDArray[np.int16]:
    """Read a WAV as 8 kHz mono int16 (mixing down and resampling when needed)."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    if rate != RATE:
        # Offline, whole-file: linear interpolation after a moving-average low-pass is
        # enough for a test signal; the gateway's own path never resamples this way.
        if rate > RATE:
            k = max(1, int(round(rate / RATE)))
            mono = np.convolve(mono, np.ones(k) / k, mode="same")
        n_out = int(len(mono) * RATE / rate)
        mono = np.interp(np.arange(n_out) * rate / RATE, np.arange(len(mono)), mono)
    return np.asarray(np.clip(mono * 32767.0, -32768, 32767), dtype=np.int16)


def write_wav(path: str | Path, pcm: bytes, rate: int = RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.frombuffer(pcm, dtype="<i2"), rate, subtype="PCM_16")
