"""Both legs of a call on one time line, for recordings and debug dumps.

The pacer is the gateway's clock: every tick writes one 20 ms bot frame (or silence).
``StereoAligner.tick`` pairs that frame with the next 20 ms of caller audio received
since, so a sound sent on both legs at the same moment lands on the same stereo frame.
Caller audio arrives on Asterisk's clock, with jitter: a tick with less than a frame
is padded with silence, and a backlog beyond ``max_lag_bytes`` (clock drift, bursts)
drops its oldest audio so the legs never drift apart by more than that.

Pure: no I/O, no clock. Used by ``recordings.recorder.StereoRecorder`` (the gateway's
own recording) and ``dump.CallDump`` (per-call debug dumps).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
FRAME_BYTES: Final = 2 * FRAME_SAMPLES


class StereoAligner:
    """Caller audio FIFO + one stereo frame per pacer tick (caller left, bot right)."""

    __slots__ = ("_backlog", "caller_dropped_bytes", "caller_padded", "max_lag_bytes", "ticks")

    def __init__(self, *, max_lag_bytes: int = 3 * FRAME_BYTES) -> None:
        self.max_lag_bytes = max_lag_bytes
        self._backlog = bytearray()
        self.ticks = 0
        self.caller_padded = 0  # ticks with less than a frame of caller audio
        self.caller_dropped_bytes = 0

    def caller(self, pcm: bytes) -> None:
        """Caller audio as it arrives (any size)."""
        self._backlog += pcm

    def tick(self, frame: bytes | None, out: npt.NDArray[np.int16] | None = None
             ) -> npt.NDArray[np.int16]:
        """The stereo frame of this tick (``frame`` = the bot frame written, None = silence).

        ``out`` (shape (160, 2), int16) is filled in place when given.
        """
        self.ticks += 1
        row = np.empty((FRAME_SAMPLES, 2), dtype=np.int16) if out is None else out
        if frame is not None and len(frame) >= FRAME_BYTES:
            row[:, 1] = np.frombuffer(frame, dtype="<i2", count=FRAME_SAMPLES)
        else:
            row[:, 1] = 0
        backlog = self._backlog
        have = min(len(backlog) // 2, FRAME_SAMPLES)
        if have:
            row[:have, 0] = np.frombuffer(backlog, dtype="<i2", count=have)
            del backlog[: have * 2]
        if have < FRAME_SAMPLES:
            row[have:, 0] = 0
            self.caller_padded += 1
        excess = len(backlog) - self.max_lag_bytes
        if excess > 0:
            excess += excess & 1
            del backlog[:excess]
            self.caller_dropped_bytes += excess
        return row

    def drain(self) -> npt.NDArray[np.int16]:
        """At the end of the call: the caller audio still queued, bot side silent."""
        n = len(self._backlog) // 2
        rest = np.zeros((n, 2), dtype=np.int16)
        if n:
            rest[:, 0] = np.frombuffer(self._backlog, dtype="<i2", count=n)
        self._backlog.clear()
        return rest
