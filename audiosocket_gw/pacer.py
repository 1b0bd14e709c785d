"""One 20 ms clock for every call.

Asterisk's AudioSocket has no playout buffer on the way back: every frame the gateway
writes goes out as RTP at once. So the gateway must write exactly one 20 ms frame per
call every 20 ms, bot audio or silence (silence also keeps Asterisk's 2 s inactivity
timer from hanging up). Per-call sleeping tasks do not scale to hundreds of calls, so a
single task ticks on an absolute monotonic schedule (frame ``n`` is due at
``start + n * period``: no drift) and writes the next frame of every active stream,
in groups that each start at a fixed offset from the tick (``WriteSlots``), so every
call's frame leaves at the same point of every tick; per-tick bookkeeping is kept
out of the writes (``before_tick`` runs ahead of the deadline, ``after_tick`` after,
in the waits between the groups as far as it fits there).

``Schedule`` is the sans-I/O bookkeeping (testable with an injected clock); ``Pacer``
is the thin asyncio shell.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger(__name__)

PERIOD: Final = 0.020


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


class WriteSlots:
    """Where each group of streams starts writing within a tick (sans-I/O).

    Written back to back, call ``k``'s frame leaves after the ``k`` writes before it, so
    one slow write (an interrupt, a preempted virtual CPU, a long system call) moves
    every later call's frame of that tick, and the interval the callers measure moves
    with it. Written in groups of ``group`` streams, each group starting at its own
    offset from the tick's start (``step`` apart, on the clock), a slow write moves at
    most the rest of its group: the next group starts on time again if the delay fits
    in the ``slack``. ``step`` is ``group`` writes at their running mean cost plus the
    slack, and follows that cost only when it has moved by more than ``hysteresis``:
    moving the offsets moves every later group's frames (one tick of jitter for them),
    so it must not happen on every fluctuation. When the groups would spread the writes
    over more than ``max_share`` of the period, they are written back to back (the
    offsets would cost more time than a tick can spare).
    """

    __slots__ = ("alpha", "cost", "group", "hysteresis", "max_share", "slack", "step")

    def __init__(self, group: int = 25, slack: float = 0.3, hysteresis: float = 0.25,
                 alpha: float = 0.02, max_share: float = 0.4) -> None:
        self.group = group
        self.slack = slack
        self.hysteresis = hysteresis
        self.alpha = alpha
        self.max_share = max_share
        self.cost = 0.0
        """Running mean of one stream's write, in seconds (0: not measured yet)."""
        self.step = 0.0
        """Seconds from one group's start to the next one's (0: back to back)."""

    def observe(self, seconds: float, writes: int) -> None:
        """A tick wrote ``writes`` streams in ``seconds`` (time spent waiting excluded)."""
        if writes <= 0 or seconds <= 0:
            return
        c = seconds / writes
        self.cost = c if not self.cost else self.cost + self.alpha * (c - self.cost)
        want = self.group * self.cost * (1.0 + self.slack)
        if not self.step or abs(want - self.step) > self.hysteresis * self.step:
            self.step = want

    def offsets(self, streams: int, period: float) -> float:
        """The ``step`` to use for a tick of ``streams`` streams (0: back to back)."""
        groups = -(-streams // self.group)
        if groups < 2 or not self.step or (groups - 1) * self.step > self.max_share * period:
            return 0.0
        return self.step


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
        """Write the next frame. Must not block and should not raise.

        Only the write: the pacer writes the streams' frames at fixed offsets within
        every tick. Bookkeeping belongs in an optional ``after_tick()`` method, which
        the pacer runs after this stream's write of the tick, outside the writes: in
        the wait before a later group of streams, or once every stream has written.
        """


_Afters = tuple[tuple[PacedStream, Callable[[], None] | None], ...]


class Pacer:
    """The single asyncio task that drives every ``PacedStream``."""

    def __init__(
        self,
        *,
        period: float = PERIOD,
        on_tick_stats: Callable[[float, int, float], None] | None = None,
        spin: float = 0.001,
        ahead: float = 0.003,
    ) -> None:
        self.period = period
        self.spin = spin
        self.ahead = ahead
        self._streams: dict[PacedStream, None] = {}
        self._snapshot: tuple[PacedStream, ...] = ()
        self._after_at: _Afters = ()
        """Each snapshot stream with its ``after_tick`` (None: it has none), in order."""
        self._after_cost = 0.0
        self._task: asyncio.Task[None] | None = None
        self._on_tick_stats = on_tick_stats
        self.schedule: Schedule | None = None
        self.errors = 0
        self.spin_seconds = 0.0
        """Time spent waiting on the clock itself (the ``spin`` before each tick's
        deadline, and between its write groups).
        Sleeping it instead (the kernel's timers are finer than epoll's) made the ticks
        slower and no steadier on a virtual machine: an idle virtual CPU is descheduled
        and comes back with cold caches."""
        self.cpu_stalls = CpuStalls()
        """How often, and for how long, the CPU was taken away during those waits."""
        self.before_tick: list[Callable[[], None]] = []
        """Batched per-tick work that must see everything that arrived before the tick's
        writes (the caller frames' levels: a barge-in decided there is cut by that
        tick). Run twice per tick: ``ahead`` seconds before the deadline, while the
        loop would only be waiting, and again just before the writes for what came in
        since. So its cost, and how that cost varies from tick to tick, is not paid
        between the deadline and the writes (it was the largest part of the frames'
        jitter at the caller). A hook must therefore handle being run with nothing new."""
        self._every: tuple[Every, ...] = ()
        self.slots = WriteSlots()
        """Where each group of streams starts writing within a tick."""

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
        self._rebuild()

    def remove(self, stream: PacedStream) -> None:
        if self._streams.pop(stream, 0) is None:
            self._rebuild()

    def _rebuild(self) -> None:
        self._snapshot = tuple(self._streams)
        self._after_at = tuple((s, getattr(s, "after_tick", None)) for s in self._snapshot)

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
        writes = 0.0
        for _ in range(n):
            self._run_hooks()
            # No collection of the garbage collector in the middle of the writes (it
            # runs at the next allocation after).
            gc_on = gc.isenabled()
            if gc_on:
                gc.disable()
            afters = self._after_at
            try:
                writes, done = self._write_all(afters)
            finally:
                if gc_on:
                    gc.enable()
            self._after_from(afters, done)
            if self._every:
                self._run_every()
        if n and self._on_tick_stats is not None:
            self._on_tick_stats(lateness, len(self._snapshot) * n, writes)

    def _write_all(self, afters: _Afters) -> tuple[float, int]:
        """Every stream's frame, in groups anchored on the clock (``WriteSlots``).

        While a group waits for its start, the ``after_tick`` of streams already
        written runs in the wait, as far as it fits (the wait is spent on work due
        anyway instead of on the clock). Returns how long the writes took from the
        first to the last, and how many streams' ``after_tick`` ran.
        """
        streams = self._snapshot
        slots = self.slots
        group = slots.group
        step = slots.offsets(len(streams), self.period)
        chunks = ([streams[i : i + group] for i in range(0, len(streams), group)] if step
                  else (streams,))
        t0 = time.monotonic()
        waited = spun = 0.0
        done = written = 0
        for g, chunk in enumerate(chunks):
            if g:
                start = t0 + g * step
                w0 = time.monotonic()
                done = self._after_until(afters, done, written, start)
                spun += _spin_until(start, self.cpu_stalls)
                waited += time.monotonic() - w0
            for stream in chunk:
                try:
                    stream.on_tick()
                except Exception:
                    self.errors += 1
                    log.exception("pacer: stream %r failed on tick; removing it", stream)
                    self.remove(stream)
            written += len(chunk)
        total = time.monotonic() - t0
        slots.observe(total - waited, len(streams))
        self.spin_seconds += spun
        return total, done

    def _after_until(self, afters: _Afters, done: int,
                     written: int, until: float) -> int:
        """Run the ``after_tick`` of streams ``done`` to ``written`` (of the tick's
        snapshot) while one more fits before ``until``; returns the new ``done``."""
        cost = self._after_cost
        while done < written:
            now = time.monotonic()
            if now + cost > until:
                break
            stream, after = afters[done]
            done += 1
            if after is not None:
                self._after_one(stream, after, afters)
                spent = time.monotonic() - now
                cost += 0.05 * (2.0 * spent - cost)  # a running mean, with margin
        self._after_cost = cost
        return done

    def _after_from(self, afters: _Afters, done: int) -> None:
        """The ``after_tick`` of every stream from ``done`` on (the tick's writes are over)."""
        for stream, after in afters[done:]:
            if after is not None:
                self._after_one(stream, after, afters)

    def _after_one(self, stream: PacedStream, after: Callable[[], None],
                   afters: _Afters) -> None:
        if afters is not self._after_at and stream not in self._streams:
            return  # removed during this tick (its write failed)
        try:
            after()
        except Exception:
            self.errors += 1
            log.exception("pacer: stream %r failed after its tick; removing it", stream)
            self.remove(stream)

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

    def _run_hooks(self) -> None:
        for hook in self.before_tick:
            try:
                hook()
            except Exception:
                self.errors += 1
                log.exception("pacer: before-tick hook %r failed", hook)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.schedule = Schedule(time.monotonic(), self.period)
        while True:
            deadline = sched.next_deadline
            if not self._snapshot:  # an idle gateway neither runs ahead nor spins
                await _until(loop, deadline)
                if sched.next_deadline == deadline:
                    self._run_due(sched)
                continue
            # epoll timeouts have millisecond granularity (asyncio rounds them up), so
            # the timers wake up to a millisecond late: ``ahead`` and ``spin`` early.
            if self.before_tick and self.ahead > self.spin:
                await _until(loop, deadline - self.ahead)
                if sched.next_deadline != deadline:
                    # poll() ran this tick meanwhile (a batch of socket callbacks spanned
                    # the deadline): wait for the next one on a timer, never on the clock.
                    continue
                if time.monotonic() < deadline - self.spin:
                    self._run_hooks()
            await _until(loop, deadline - self.spin)
            if sched.next_deadline != deadline:
                continue
            self.spin_seconds += _spin_until(deadline, self.cpu_stalls)
            self._run_due(sched)


async def _until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep on the event loop until ``when`` (``time.monotonic()``, as ``loop.time()``)."""
    await asyncio.sleep(max(0.0, when - loop.time()))


CPU_STALL: Final = 0.0005
"""A gap longer than this between two readings of the clock in a spin: the CPU was
taken from the gateway (a spin iteration takes well under a microsecond)."""


class CpuStalls:
    """The times the CPU was taken from the pacer while it waited on the clock.

    A spin reads the clock back to back, so two readings more than ``CPU_STALL`` apart
    mean the process did not run in between: the kernel ran another task on its core
    (at normal priority; ``AIGW_REALTIME_PRIORITY`` prevents that), an interrupt took
    that long, or the hypervisor did not run the virtual CPU. No code of the gateway
    causes it, and it is what delays whole ticks at the caller (README, "What limits
    it"). The spins cover only part of each tick (the wait before the deadline and
    between write groups, ``Pacer.spin_seconds``), so these counts are a sample of the
    stalls, taken where they cost the callers most.
    """

    __slots__ = ("count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0


def _spin_until(when: float, stalls: CpuStalls,
                clock: Callable[[], float] = time.monotonic) -> float:
    """Wait on the clock itself until ``when``; return the seconds spent.

    Gaps over ``CPU_STALL`` between two readings are added to ``stalls``.
    """
    stall = CPU_STALL
    now = start = clock()
    while now < when:
        last, now = now, clock()
        if now - last > stall:
            stalls.count += 1
            stalls.seconds += now - last
    return now - start
