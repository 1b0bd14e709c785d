"""One 20 ms clock for every call.

Asterisk's AudioSocket has no playout buffer on the way back: every frame the gateway
writes goes out as RTP at once. So the gateway must write exactly one 20 ms frame per
call every 20 ms, bot audio or silence (silence also keeps Asterisk's 2 s inactivity
timer from hanging up). Per-call sleeping tasks do not scale to hundreds of calls, so a
single task ticks on an absolute monotonic schedule (frame ``n`` is due at
``start + n * period``: no drift) and writes the next frame of every active stream.

``Schedule`` is the sans-I/O bookkeeping (testable with an injected clock); ``Pacer``
is the thin asyncio shell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger(__name__)

PERIOD: Final = 0.020


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Schedule:
    """Absolute tick schedule with bounded catch-up.

    ``due(now)`` says how many ticks to run now. A tick that is late by less than
    ``max_catchup`` periods is run late (the next deadline does not move, so there is no
    drift); when the loop was blocked longer, the missed ticks beyond that are skipped
    and counted in ``missed`` (bursting them would reach the caller as an RTP burst).
    """

    __slots__ = ("_n", "max_catchup", "missed", "period", "start", "ticks")

    def __init__(self, start: float, period: float = PERIOD, max_catchup: int = 2) -> None:
        self.start = start
        self.period = period
        self.max_catchup = max_catchup
        self._n = 0
        self.ticks = 0
        self.missed = 0

    @property
    def next_deadline(self) -> float:
        return self.start + self._n * self.period

    def due(self, now: float) -> tuple[int, float]:
        """Return (ticks to run now, lateness of the first of them in seconds)."""
        deadline = self.next_deadline
        if now < deadline:
            return 0, 0.0
        behind = int((now - deadline) / self.period) + 1
        if behind > self.max_catchup:
            skipped = behind - self.max_catchup
            self.missed += skipped
            self._n += skipped
            behind = self.max_catchup
        lateness = now - self.next_deadline
        self._n += behind
        self.ticks += behind
        return behind, lateness


class Every:
    """A callback the pacer runs every ``n_ticks`` ticks (``Pacer.every``)."""

    __slots__ = ("fn", "left", "n_ticks", "pacer")

    def __init__(self, pacer: Pacer, n_ticks: int, fn: Callable[[float], None]) -> None:
        self.pacer: Pacer | None = pacer
        self.n_ticks = n_ticks
        self.left = n_ticks
        self.fn = fn

    def cancel(self) -> None:
        pacer, self.pacer = self.pacer, None
        if pacer is not None:
            pacer._unsubscribe(self)

    def __repr__(self) -> str:
        return f"<Every {self.n_ticks} ticks: {self.fn!r}>"


def ticks_for(seconds: float, period: float = PERIOD) -> int:
    """Whole pacer ticks closest to ``seconds`` (at least one)."""
    return max(1, round(seconds / period))


class PacedStream(Protocol):
    def on_tick(self) -> None:
        """Write the next frame. Must not block and should not raise."""


class Pacer:
    """The single asyncio task that drives every ``PacedStream``."""

    def __init__(
        self,
        *,
        period: float = PERIOD,
        on_tick_stats: Callable[[float, int], None] | None = None,
        spin: float = 0.001,
    ) -> None:
        self.period = period
        self.spin = spin
        self._streams: dict[PacedStream, None] = {}
        self._snapshot: tuple[PacedStream, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._on_tick_stats = on_tick_stats
        self.schedule: Schedule | None = None
        self.errors = 0
        self.spin_seconds = 0.0
        """Time spent waiting out deadlines on the clock (the ``spin`` before each tick)."""
        self.before_tick: list[Callable[[], None]] = []
        """Run once per tick before any stream writes (batched per-tick work)."""
        self._every: tuple[Every, ...] = ()

    def every(self, n_ticks: int, fn: Callable[[float], None]) -> Every:
        """Run ``fn(now)`` every ``n_ticks`` ticks, after the streams have written.

        The one clock for periodic work (silence fill, watchdogs...): no task, no timer
        of its own. ``now`` is ``time.monotonic()`` at that tick. Call ``cancel()`` on
        the returned handle to stop. A failing ``fn`` is logged and counted, and kept.
        """
        if n_ticks < 1:
            raise ValueError(f"n_ticks must be >= 1, got {n_ticks}")
        sub = Every(self, n_ticks, fn)
        self._every = (*self._every, sub)
        return sub

    def _unsubscribe(self, sub: Every) -> None:
        self._every = tuple(s for s in self._every if s is not sub)

    def add(self, stream: PacedStream) -> None:
        self._streams[stream] = None
        self._snapshot = tuple(self._streams)

    def remove(self, stream: PacedStream) -> None:
        if self._streams.pop(stream, 0) is None:
            self._snapshot = tuple(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def poll(self) -> None:
        """Run the tick now if its deadline has passed.

        The server calls this after handling incoming bytes. Under load the event loop
        may be busy running a long batch of socket callbacks when the tick's timer
        expires, and asyncio only looks at timers between batches; checking the clock
        in every callback (one comparison) bounds the pacer's lateness to one callback
        instead of one batch.
        """
        sched = self.schedule
        if sched is not None and time.monotonic() >= sched.next_deadline:
            self._run_due(sched)

    def _run_due(self, sched: Schedule) -> None:
        n, lateness = sched.due(time.monotonic())
        for _ in range(n):
            for hook in self.before_tick:
                try:
                    hook()
                except Exception:
                    self.errors += 1
                    log.exception("pacer: before-tick hook %r failed", hook)
            for stream in self._snapshot:
                try:
                    stream.on_tick()
                except Exception:
                    self.errors += 1
                    log.exception("pacer: stream %r failed on tick; removing it", stream)
                    self.remove(stream)
            if self._every:
                self._run_every()
        if n and self._on_tick_stats is not None:
            self._on_tick_stats(lateness, len(self._snapshot) * n)

    def _run_every(self) -> None:
        now = 0.0
        for sub in self._every:
            sub.left -= 1
            if sub.left > 0:
                continue
            sub.left = sub.n_ticks
            if not now:
                now = time.monotonic()
            try:
                sub.fn(now)
            except Exception:
                self.errors += 1
                log.exception("pacer: periodic callback %r failed", sub)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.schedule = Schedule(time.monotonic(), self.period)
        spin = self.spin
        while True:
            fut = loop.create_future()
            # epoll timeouts have millisecond granularity (asyncio rounds them up), so
            # wake up to ``spin`` early and wait out the rest on the clock itself.
            early = spin if self._snapshot else 0.0  # an idle gateway does not spin
            deadline = sched.next_deadline
            handle = loop.call_at(deadline - early, _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
            if sched.next_deadline != deadline:
                # poll() ran this tick meanwhile (a batch of socket callbacks spanned
                # the deadline): wait for the next one on a timer, never on the clock.
                continue
            t0 = time.monotonic()
            while time.monotonic() < deadline:
                pass
            self.spin_seconds += time.monotonic() - t0
            self._run_due(sched)
