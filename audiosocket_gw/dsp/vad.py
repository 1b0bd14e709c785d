"""Energy-based voice activity detection for 8 kHz slin16 caller audio.

Why: the gateway needs to know when the caller starts talking (barge-in: stop the bot's
playback) and when they stop (end of turn, watchdog reset), without relying on Asterisk's
TALK_DETECT events being configured. While the bot is playing, some of its audio echoes
back on the caller leg, so the threshold is raised to ``echo_margin`` times the level of
what the bot is currently sending.

Design: pure and clock-free. Time is derived only from the amount of audio given
(``len(pcm) / 2 / 8000`` seconds), counted in samples so frame sizes of 320 bytes (20 ms),
480 bytes (30 ms) or anything else add up exactly. The level measure is mean(|sample|),
the same one Asterisk uses for silence detection (a frame is silent below 256,
``SILENCE_LEVEL``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SILENCE_LEVEL",
    "VadConfig",
    "VadEvent",
    "VoiceActivityDetector",
    "frame_level",
    "frame_levels",
]

SILENCE_LEVEL = 256.0
"""A frame is silent when mean(|sample|) is below this (Asterisk's default threshold)."""

_SAMPLE_RATE = 8000


def frame_level(pcm: bytes) -> float:
    """Mean absolute sample value of slin16 LE audio (0.0 when there is no sample)."""
    count = len(pcm) // 2
    if count == 0:
        return 0.0
    samples = np.frombuffer(pcm, dtype="<i2", count=count).astype(np.float32)
    return float(np.abs(samples).sum()) / count


def frame_levels(frames: Sequence[bytes]) -> npt.NDArray[np.float64]:
    """``frame_level`` of many frames in one pass.

    numpy's fixed cost per call (microseconds) dwarfs the work on 160 samples, so the
    gateway measures every call's caller audio of one pacer tick together: one join,
    one conversion, one ``reduceat``. Empty frames give 0.0. When every frame has the
    same even length (the usual tick: 20 ms frames from every call) it is one 2-D sum,
    three times faster still (the sums are exact integers either way).
    """
    n = len(frames)
    size = len(frames[0]) if n else 0
    if size and not size & 1 and all(len(f) == size for f in frames):
        x = np.frombuffer(b"".join(frames), dtype="<i2").reshape(n, size // 2)
        sums: npt.NDArray[np.int64] = np.abs(x.astype(np.int32)).sum(axis=1, dtype=np.int64)
        return sums / (size // 2)
    counts = np.fromiter((len(f) // 2 for f in frames), dtype=np.int64, count=len(frames))
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(frames))
    buf = b"".join(f if not len(f) & 1 else f[:-1] for f in frames)
    x = np.abs(np.frombuffer(buf, dtype="<i2").astype(np.float32))
    starts = np.zeros(len(frames), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    nonempty = counts > 0
    totals = np.zeros(len(frames))
    # reduceat needs strictly valid start indices: only for the non-empty frames.
    totals[nonempty] = np.add.reduceat(x, starts[nonempty])
    return np.divide(totals, counts, out=np.zeros(len(frames)), where=nonempty)


@dataclass(frozen=True)
class VadConfig:
    """Tuning for :class:`VoiceActivityDetector`.

    ``threshold``: minimum mean |sample| that counts as speech. ``onset_ms``: speech must
    stay above the threshold this long (consecutively) before SPEECH_START. ``hangover_ms``:
    this much audio below the threshold ends speech (SPEECH_STOP). ``echo_margin``: while
    the bot plays at level L, caller audio must exceed ``max(threshold, echo_margin * L)``.
    """

    threshold: float = 600.0
    onset_ms: int = 80
    hangover_ms: int = 400
    echo_margin: float = 2.0

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.onset_ms < 0:
            raise ValueError(f"onset_ms must be >= 0, got {self.onset_ms}")
        if self.hangover_ms < 0:
            raise ValueError(f"hangover_ms must be >= 0, got {self.hangover_ms}")
        if self.echo_margin < 0:
            raise ValueError(f"echo_margin must be >= 0, got {self.echo_margin}")


class VadEvent(enum.Enum):
    """Transitions reported by :meth:`VoiceActivityDetector.process`."""

    SPEECH_START = "speech_start"
    SPEECH_STOP = "speech_stop"


_DEFAULT_CONFIG = VadConfig()


class VoiceActivityDetector:
    """Onset/hangover state machine over frame levels of 8 kHz slin16 audio."""

    def __init__(self, config: VadConfig = _DEFAULT_CONFIG) -> None:
        self._config = config
        self._onset_samples = config.onset_ms * _SAMPLE_RATE // 1000
        self._hangover_samples = config.hangover_ms * _SAMPLE_RATE // 1000
        self._speaking = False
        self._above = 0  # consecutive samples above threshold while not speaking
        self._below = 0  # consecutive samples below threshold while speaking

    @property
    def config(self) -> VadConfig:
        """The configuration in use."""
        return self._config

    @property
    def speaking(self) -> bool:
        """True between SPEECH_START and SPEECH_STOP."""
        return self._speaking

    def reset(self) -> None:
        """Return to the initial not-speaking state."""
        self._speaking = False
        self._above = 0
        self._below = 0

    def threshold_for(self, bot_level: float) -> float:
        """Effective speech threshold while the bot plays at ``bot_level``."""
        return max(self._config.threshold, self._config.echo_margin * bot_level)

    def process(self, pcm: bytes, bot_level: float = 0.0) -> VadEvent | None:
        """Feed one frame of caller audio; returns an event on a state change.

        ``bot_level`` is the level (see :func:`frame_level`) of the audio the bot is
        playing at the same time, 0.0 when it is quiet. An empty frame changes nothing.
        """
        samples = len(pcm) // 2
        if samples == 0:
            return None
        return self.process_level(frame_level(pcm), samples, bot_level)

    def process_level(
        self, level: float, samples: int, bot_level: float = 0.0
    ) -> VadEvent | None:
        """``process`` for a frame whose level is already known (see ``frame_levels``)."""
        if samples <= 0:
            return None
        voiced = level > self.threshold_for(bot_level)
        if not self._speaking:
            if not voiced:
                self._above = 0
                return None
            self._above += samples
            if self._above >= self._onset_samples:
                self._speaking = True
                self._above = 0
                self._below = 0
                return VadEvent.SPEECH_START
            return None
        if voiced:
            self._below = 0
            return None
        self._below += samples
        if self._below >= self._hangover_samples:
            self._speaking = False
            self._above = 0
            self._below = 0
            return VadEvent.SPEECH_STOP
        return None
