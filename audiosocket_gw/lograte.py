"""Rate-limited log lines: one line per interval, with the count of what it stands for.

A condition that repeats per frame or per event (a full playout buffer, a full
queue, a connection storm) must not write one line each: the first occurrence logs
at once, later ones are counted, and at most one line per ``interval`` seconds (per
key) reports how many happened meanwhile. Counters and metrics still see every one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["LogRate"]


class LogRate:
    """``allow(key)`` -> None (suppressed, counted) or the number suppressed before."""

    __slots__ = ("_clock", "_next", "_suppressed", "interval", "max_keys")

    def __init__(self, interval: float = 10.0, *, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable = None) -> int | None:
        now = self._clock()
        due = self._next.get(key)
        if due is not None and now < due:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if due is None and len(self._next) >= self.max_keys:
            self._next.pop(next(iter(self._next)))  # bounded: the oldest key goes
        self._next[key] = now + self.interval
        return self._suppressed.pop(key, 0)

    @staticmethod
    def suffix(suppressed: int) -> str:
        """`` (+N more since the last report)`` or an empty string."""
        return f" (+{suppressed} more since the last report)" if suppressed else ""
