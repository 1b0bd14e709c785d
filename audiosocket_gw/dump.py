"""Per-call debug dump: a stereo WAV of both legs plus a JSON-lines event log.

Why: when a caller says "the bot talked over me" or "it cut me off", the only useful
evidence is both directions on one time line next to what the backend said. A
``CallDump`` is an ``AudioTap`` (``control.add_tap``) and writes:

* ``<dir>/<call_id>.wav``: 8 kHz 16-bit stereo, caller left, bot right, aligned on the
  pacer clock. Every pacer tick adds exactly one 20 ms stereo frame: the bot frame the
  pacer wrote (silence when it wrote none) next to one frame of caller audio taken from
  a small FIFO of what arrived since. A tick with no caller audio pads the left channel
  with silence; caller audio piling up beyond ``max_lag_frames`` (clock drift between
  Asterisk and the gateway) drops the oldest excess, so the two legs never drift apart
  by more than that. Written through soundfile in blocks of ``block_ticks``.
* ``<dir>/<call_id>.events.jsonl``: one JSON object per line, ``{"t": seconds since the
  dump opened, "type": ..., ...}``, at most ``max_events`` lines (then one final
  ``dump.truncated`` line with the number left out).

The alignment itself is ``stereo.StereoAligner``, shared with the gateway's recordings.

Opt-in only (agent ``debug_dump`` or ``--debug-dump``): a dump costs a little CPU per
tick and disk space, and holds caller audio. File writes are small buffered writes on the
event loop; any I/O error disables the dump (logged once) rather than touching the call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

from .private import create_private, open_private_text, private_dir
from .stereo import FRAME_BYTES, StereoAligner

__all__ = ["CallDump"]

log = logging.getLogger("audiosocket_gw.dump")

RATE: Final = 8000


class CallDump:
    """Stereo WAV + JSON event log of one call (an ``AudioTap``)."""

    def __init__(
        self,
        directory: str | Path,
        call_id: str,
        *,
        max_events: int = 10_000,
        max_lag_frames: int = 3,
        block_ticks: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = private_dir(directory)  # call audio: dirs 0700, files 0600
        # One plain name inside ``directory``: no separator, never "." / ".." or hidden.
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)[:100]
        safe = safe.lstrip(".") or "call"
        self.wav_path = path / f"{safe}.wav"
        self.events_path = path / f"{safe}.events.jsonl"
        self._clock = clock
        self._t0 = clock()
        self._max_events = max_events
        self.aligner = StereoAligner(max_lag_bytes=max_lag_frames * FRAME_BYTES)
        self._block_ticks = block_ticks
        self._block: list[npt.NDArray[np.int16]] = []
        self.events = 0
        self.events_dropped = 0
        self.closed = False
        create_private(self.wav_path)  # 0600 before libsndfile opens it
        self._wav: sf.SoundFile | None = sf.SoundFile(
            str(self.wav_path), "w", samplerate=RATE, channels=2, subtype="PCM_16"
        )
        self._events: IO[str] | None = open_private_text(self.events_path)

    # -- AudioTap ------------------------------------------------------------------

    @property
    def ticks(self) -> int:
        return self.aligner.ticks

    @property
    def caller_padded(self) -> int:
        return self.aligner.caller_padded

    @property
    def caller_dropped_bytes(self) -> int:
        return self.aligner.caller_dropped_bytes

    def caller(self, pcm: bytes) -> None:
        """Caller audio as it arrives (any size); consumed one frame per tick."""
        if not self.closed:
            self.aligner.caller(pcm)

    def bot(self, frame: bytes | None) -> None:
        """One pacer tick: ``frame`` was written (None: silence). Adds 20 ms to the WAV."""
        if self.closed:
            return
        self._block.append(self.aligner.tick(frame))
        if len(self._block) >= self._block_ticks:
            self._flush_audio()

    def close(self) -> None:
        """Write what is pending and close both files (idempotent)."""
        if self.closed:
            return
        self._flush_audio()
        if self.events_dropped and self._events is not None:
            self._write_line({"t": self._now(), "type": "dump.truncated",
                              "dropped": self.events_dropped})
        self.closed = True
        for closer in (self._wav, self._events):
            if closer is not None:
                try:
                    closer.close()
                except (OSError, RuntimeError) as exc:
                    log.warning("debug dump %s: close failed: %s", self.wav_path.name, exc)
        self._wav = None
        self._events = None

    # -- events ------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Append one event (``kind`` plus JSON-serialisable ``fields``) to the log."""
        if self.closed or self._events is None:
            return
        if self.events >= self._max_events:
            self.events_dropped += 1
            return
        self.events += 1
        self._write_line({"t": self._now(), "type": kind, **fields})

    # -- internals ---------------------------------------------------------------

    def _now(self) -> float:
        return round(self._clock() - self._t0, 4)

    def _write_line(self, obj: dict[str, Any]) -> None:
        assert self._events is not None
        try:
            self._events.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
        except (OSError, ValueError) as exc:
            log.warning("debug dump %s: event log disabled: %s", self.events_path.name, exc)
            self._events = None

    def _flush_audio(self) -> None:
        if not self._block:
            return
        data = np.concatenate(self._block)
        self._block.clear()
        if self._wav is None:
            return
        try:
            self._wav.write(data)
        except (OSError, RuntimeError) as exc:
            log.warning("debug dump %s: audio disabled: %s", self.wav_path.name, exc)
            self._wav = None
