"""Per-call playout buffer: bot audio waiting for the pacer, with exact positions.

Positions are counted in bytes of 8 kHz slin (16 bytes per millisecond) at the moment
the pacer *writes* a frame to Asterisk, which is what makes Twilio mark echoes and
OpenAI ``audio_end_ms`` truncation exact: a mark is reached when every byte queued
before it has been written, and ``played_ms(item)`` is what the caller really heard.

Pure and clock-free. The buffer is bounded (``max_bytes``); audio pushed beyond the
bound is dropped and counted, never queued without limit.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

FRAME_BYTES: Final = 320  # 20 ms of 8 kHz 16-bit mono
BYTES_PER_MS: Final = 16
SILENCE: Final = bytes(FRAME_BYTES)
_MAX_ITEMS: Final = 32


class PlayoutBuffer:
    """FIFO of bot audio chunks, popped one whole frame per pacer tick.

    ``streaming`` tells the buffer that the backend is in the middle of an utterance:
    a tick that finds less than a frame then writes silence and the partial tail is
    held back (so frames stay aligned); when not streaming the tail is padded with
    silence and played.

    An underrun is a gap *inside* an utterance: silent ticks while streaming that are
    followed by more audio of the same utterance (counted when that audio arrives, or
    when ``end_utterance`` finds a held-back tail still to play). Ticks after the last
    audio of an utterance, before the backend says it is over, and any tick of an idle
    bot are not underruns: nothing was missing from what the caller heard.
    """

    __slots__ = (
        "_chunks",
        "_gap",
        "_head",
        "_item_played",
        "_marks",
        "dropped_bytes",
        "enqueued_bytes",
        "frame_bytes",
        "max_bytes",
        "pending_bytes",
        "played_bytes",
        "streaming",
        "underruns",
    )

    def __init__(self, *, frame_bytes: int = FRAME_BYTES, max_bytes: int = 16 * 120_000) -> None:
        self.frame_bytes = frame_bytes
        self.max_bytes = max_bytes
        self._chunks: deque[tuple[bytes, str | None]] = deque()
        self._head = 0  # offset into the first chunk
        self._marks: deque[tuple[int, str]] = deque()
        self._item_played: OrderedDict[str, int] = OrderedDict()
        self.enqueued_bytes = 0  # total ever accepted
        self.played_bytes = 0  # total real audio bytes written (padding excluded)
        self.pending_bytes = 0
        self.dropped_bytes = 0
        self.underruns = 0
        self._gap = 0  # silent ticks of the current utterance, not yet judged
        self.streaming = False

    # -- producer side -------------------------------------------------------

    def push(self, pcm: bytes, item_id: str | None = None) -> bool:
        """Queue bot audio. Returns False (and counts the loss) when over ``max_bytes``."""
        n = len(pcm)
        if n == 0:
            return True
        if self.pending_bytes + n > self.max_bytes:
            self.dropped_bytes += n
            return False
        if self._gap:  # the utterance goes on after silent ticks: they were a gap in it
            if self.streaming:
                self.underruns += self._gap
            self._gap = 0
        self._chunks.append((pcm, item_id))
        self.pending_bytes += n
        self.enqueued_bytes += n
        return True

    def mark(self, name: str) -> bool:
        """Place a mark after everything queued so far.

        Returns True when it is already reached (nothing queued): the caller echoes it
        at once, as Twilio does.
        """
        if self.pending_bytes == 0 and not self._marks:
            return True
        self._marks.append((self.enqueued_bytes, name))
        return False

    def end_utterance(self) -> None:
        """The backend's utterance is complete: a partial tail is padded and played.

        Silent ticks just before count as underruns only if a held-back tail still
        follows them; otherwise the utterance had simply run out (not a gap).
        """
        if self._gap:
            if self.pending_bytes:
                self.underruns += self._gap
            self._gap = 0
        self.streaming = False

    def clear(self) -> list[str]:
        """Drop all queued audio; return every pending mark name (they were not played)."""
        self.dropped_bytes += self.pending_bytes
        self.enqueued_bytes -= self.pending_bytes
        self._chunks.clear()
        self._head = 0
        self.pending_bytes = 0
        self.streaming = False
        self._gap = 0  # what would have followed the silent ticks was dropped
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    # -- pacer side ----------------------------------------------------------

    def pop_frame(self) -> bytes | None:
        """The next frame to write, or None when there is no bot audio (write silence)."""
        fb = self.frame_bytes
        pending = self.pending_bytes
        if pending < fb:
            if pending == 0 or self.streaming:
                if self.streaming:
                    self._gap += 1
                return None
        chunk, item = self._chunks[0]
        head = self._head
        if len(chunk) - head >= fb:
            frame = chunk[head : head + fb]
            head += fb
            if head == len(chunk):
                self._chunks.popleft()
                head = 0
            self._head = head
            self._account(item, fb)
            self.pending_bytes = pending - fb
            return frame
        return self._gather(fb)

    def _gather(self, fb: int) -> bytes:
        parts = []
        need = fb
        while need and self._chunks:
            chunk, item = self._chunks[0]
            take = min(need, len(chunk) - self._head)
            parts.append(chunk[self._head : self._head + take])
            self._account(item, take)
            self._head += take
            need -= take
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0
        real = fb - need
        self.pending_bytes -= real
        if need:
            parts.append(bytes(need))
        return b"".join(parts)

    def _account(self, item: str | None, n: int) -> None:
        self.played_bytes += n
        if item is not None:
            played = self._item_played
            if item in played:
                played[item] += n
            else:
                played[item] = n
                if len(played) > _MAX_ITEMS:
                    played.popitem(last=False)

    def reached_marks(self) -> list[str] | None:
        """Marks whose audio has all been written (call after ``pop_frame``)."""
        marks = self._marks
        if not marks or marks[0][0] > self.played_bytes:
            return None
        out = []
        while marks and marks[0][0] <= self.played_bytes:
            out.append(marks.popleft()[1])
        return out

    # -- queries -------------------------------------------------------------

    @property
    def has_audio(self) -> bool:
        return self.pending_bytes > 0

    @property
    def pending_ms(self) -> float:
        return self.pending_bytes / BYTES_PER_MS

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` actually written to Asterisk."""
        return self._item_played.get(item_id, 0) // BYTES_PER_MS
