"""The gateway's own recording: a stereo WAV, caller left, bot right, on the pacer clock.

Why: when Asterisk runs on another host there is no MixMonitor file to pick up, but
the gateway sees both directions. Alignment follows the pacer: every tick the call
writes one bot frame (or silence) and calls ``bot()``; the recorder then emits one
stereo frame of 160 samples whose right channel is that bot frame and whose left
channel is the next 160 caller samples that arrived since (zeros when Asterisk sent
none: it sends nothing while the caller's channel is silent). A caller frame that
arrives between two ticks is therefore written at the next tick, and a bot frame at
the tick that wrote it: both legs line up within one frame.

Memory is bounded: the caller backlog keeps at most ``max_backlog_ms`` (a burst
beyond that is trimmed, oldest first, as MixMonitor drops queued audio above 500 ms),
and rows are handed to the writer thread in 1 s blocks.

``WavWriterThread`` is one shared thread that owns every open ``soundfile`` handle:
files are written incrementally to ``<dir>/.part/{call_id}.wav.part`` and renamed
into place when closed (so a finished name always means a complete file). Its
input queue is bounded in data blocks; when full, blocks are dropped and counted
rather than blocking the 20 ms path; close requests are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..private import create_private, private_dir
from ..stereo import StereoAligner

log = logging.getLogger("audiosocket_gw.recordings")

RATE: Final = 8000
FRAME: Final = 160  # samples per 20 ms tick
BLOCK_FRAMES: Final = 50  # one second per block handed to the writer


@dataclass(frozen=True)
class CapturedFile:
    """A finished recording file (or the reason it could not be finished)."""

    path: str
    frames: int
    channels: int
    error: str | None = None

    @property
    def duration_s(self) -> float:
        return self.frames / RATE


class WavWriterThread:
    """One thread writing every gateway recording (soundfile handles live only here)."""

    def __init__(self, *, max_blocks: int = 2048) -> None:
        self.max_blocks = max_blocks
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._blocks = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped_blocks = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aigw-rec-writer",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued block and close request, then end the thread."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            self._thread = None

    def write(self, handle: object, part: str, block: npt.NDArray[np.int16]) -> bool:
        with self._lock:
            if self._blocks >= self.max_blocks:
                self.dropped_blocks += 1
                return False
            self._blocks += 1
        self._q.put(("write", handle, part, block))
        return True

    def close(self, handle: object, part: str, final: str,
              done: Callable[[CapturedFile], None]) -> None:
        self._q.put(("close", handle, part, final, done))

    def _run(self) -> None:
        import soundfile as sf

        files: dict[int, tuple[Any, int, str | None]] = {}  # id(handle) -> (sf, frames, err)
        while True:
            op = self._q.get()
            if op is None:
                break
            kind, handle, part = op[0], op[1], op[2]
            key = id(handle)
            if kind == "write":
                with self._lock:
                    self._blocks -= 1
                block = op[3]
                f, frames, err = files.get(key, (None, 0, None))
                if err is None:
                    try:
                        if f is None:
                            private_dir(os.path.dirname(part))
                            create_private(part)  # 0600 before libsndfile opens it
                            f = sf.SoundFile(part, "w", samplerate=RATE, channels=2,
                                             subtype="PCM_16", format="WAV")
                        f.write(block)
                        frames += len(block)
                    except Exception as exc:
                        err = f"{type(exc).__name__}: {exc}"
                files[key] = (f, frames, err)
            else:
                final, done = op[3], op[4]
                f, frames, err = files.pop(key, (None, 0, None))
                try:
                    if f is None and err is None:  # no audio at all: still a valid file
                        private_dir(os.path.dirname(part))
                        create_private(part)
                        f = sf.SoundFile(part, "w", samplerate=RATE, channels=2,
                                         subtype="PCM_16", format="WAV")
                    if f is not None:
                        f.close()
                    if err is None:
                        private_dir(os.path.dirname(final))
                        os.replace(part, final)  # keeps the part's 0600
                except Exception as exc:
                    err = err or f"{type(exc).__name__}: {exc}"
                try:
                    done(CapturedFile(final, frames, 2, err))
                except Exception:
                    log.exception("recording completion callback failed")


class StereoRecorder:
    """An ``AudioTap``: feed it the call's two directions, get a stereo WAV at close."""

    def __init__(
        self,
        writer: WavWriterThread,
        final_path: str | Path,
        part_path: str | Path,
        on_done: Callable[[CapturedFile], None],
        *,
        max_backlog_ms: int = 500,
    ) -> None:
        self.writer = writer
        self.final_path = str(final_path)
        self.part_path = str(part_path)
        self._on_done = on_done
        self.aligner = StereoAligner(max_lag_bytes=max_backlog_ms * RATE // 1000 * 2)
        self._block = np.zeros((BLOCK_FRAMES * FRAME, 2), dtype=np.int16)
        self._fill = 0  # samples in the current block
        self.closed = False

    @property
    def ticks(self) -> int:
        return self.aligner.ticks

    @property
    def trimmed_bytes(self) -> int:
        return self.aligner.caller_dropped_bytes

    def caller(self, pcm: bytes) -> None:
        if not self.closed:
            self.aligner.caller(pcm)

    def bot(self, frame: bytes | None) -> None:
        if self.closed:
            return
        self.aligner.tick(frame, self._block[self._fill:self._fill + FRAME])
        self._fill += FRAME
        if self._fill == len(self._block):
            self._flush()

    def _flush(self) -> None:
        if self._fill:
            self.writer.write(self, self.part_path, self._block[:self._fill].copy())
            self._fill = 0

    def close(self) -> None:
        """The call ended: write what is left of the caller's audio and finish the file."""
        if self.closed:
            return
        self._flush()
        rest = self.aligner.drain()
        if len(rest):
            self.writer.write(self, self.part_path, rest)
        self.closed = True
        self.writer.close(self, self.part_path, self.final_path, self._on_done)


def threadsafe_done(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.Future[CapturedFile], Callable[[CapturedFile], None]]:
    """A future on ``loop`` and a callback any thread may call to resolve it."""
    fut: asyncio.Future[CapturedFile] = loop.create_future()

    def done(result: CapturedFile) -> None:
        def resolve() -> None:
            if not fut.done():
                fut.set_result(result)

        try:
            loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is already closed: nobody is waiting any more
            log.warning("recording %s finished after the event loop closed", result.path)

    return fut, done
