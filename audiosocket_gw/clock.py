"""The gateway's one clock: wall time for records, monotonic time for durations.

Its own module (no imports from the package) so that ``call`` and ``server``, which
the context refers to, can take it without an import cycle; ``context`` re-exports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock"]


@dataclass(frozen=True)
class Clock:
    """Wall time (epoch seconds, for records) and monotonic time (for durations)."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
