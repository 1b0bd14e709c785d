"""The pacer's schedule on an injected clock, and the asyncio shell with real time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from audiosocket_gw.pacer import Pacer, Schedule

from .helpers import MS


def test_ticks_on_absolute_deadlines_without_drift() -> None:
    s = Schedule(start=100.0, period=0.02)
    ran = 0
    # Wake up 1.5 ms late every time: lateness never accumulates into drift.
    for n in range(1000):
        now = 100.0 + n * 0.02 + 0.0015
        count, lateness = s.due(now)
        assert count == 1
        assert lateness == pytest.approx(0.0015, abs=1e-9)
        ran += count
    assert ran == 1000
    assert s.next_deadline == pytest.approx(100.0 + 1000 * 0.02)
    assert s.missed == 0


def test_not_due_before_deadline() -> None:
    s = Schedule(start=0.0, period=0.02)
    assert s.due(0.0) == (1, 0.0)
    assert s.due(0.019)[0] == 0


def test_short_stall_catches_up_long_stall_skips() -> None:
    s = Schedule(start=0.0, period=0.02, max_catchup=2)
    s.due(0.0)
    count, lateness = s.due(0.045)  # deadlines 0.02 and 0.04 both passed
    assert count == 2 and lateness == pytest.approx(0.025)
    assert s.missed == 0
    count, _ = s.due(0.2)  # 0.06 .. 0.2: 8 deadlines passed, run 2, skip 6
    assert count == 2 and s.missed == 6
    assert s.next_deadline == pytest.approx(0.22)


class Recorder:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: list[float] = []

    def on_tick(self) -> None:
        self.times.append(self.loop.time())


class Exploding:
    def on_tick(self) -> None:
        raise RuntimeError("boom")


async def test_pacer_drives_every_stream_and_survives_a_failing_one() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(period=20 * MS)
    a, b = Recorder(loop), Recorder(loop)
    pacer.add(a)
    pacer.add(Exploding())
    pacer.add(b)
    pacer.start()
    await asyncio.sleep(210 * MS)
    await pacer.stop()
    assert pacer.errors == 1 and len(pacer) == 2
    assert len(a.times) == len(b.times)
    assert 8 <= len(a.times) <= 12
    assert all(abs(x - y) < 10 * MS for x, y in zip(a.times, b.times, strict=True))
    pacer.remove(a)
    pacer.remove(a)  # idempotent
    assert len(pacer) == 1


async def test_every_runs_on_the_pacer_clock_and_can_be_cancelled() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(period=20 * MS)
    stream = Recorder(loop)
    pacer.add(stream)
    each: list[float] = []
    third: list[float] = []
    pacer.every(1, each.append)
    sub3 = pacer.every(3, third.append)

    def boom(now: float) -> None:
        raise RuntimeError("boom")

    pacer.every(2, boom)
    with pytest.raises(ValueError):
        pacer.every(0, each.append)
    pacer.start()
    await asyncio.sleep(250 * MS)
    sub3.cancel()
    sub3.cancel()  # idempotent
    n3 = len(third)
    await asyncio.sleep(100 * MS)
    await pacer.stop()
    # Same clock as the streams: one call per tick (give or take the tick in flight).
    assert abs(len(each) - len(stream.times)) <= 1 and len(each) >= 10
    assert n3 >= 3 and len(third) == n3
    assert all(b > a for a, b in zip(each, each[1:], strict=False))
    assert pacer.errors >= 3  # the failing callback is counted, and kept


async def test_a_tick_run_by_poll_is_not_waited_for_again() -> None:
    """The server's ``poll()`` may run a tick between the pacer's early wake-up timer
    firing and its task resuming (a long batch of socket callbacks spanning the
    deadline). The task must then not wait out the *next* deadline on the clock: that
    busy-wait held the event loop for up to a whole tick (~20 % of the gateway's CPU
    samples in a 150-call Twilio-streams profile)."""
    import time

    loop = asyncio.get_running_loop()
    pacer = Pacer(period=20 * MS, spin=1 * MS)
    stream = Recorder(loop)
    pacer.add(stream)
    pacer.start()
    await asyncio.sleep(0)
    for _ in range(5):
        sched = pacer.schedule
        assert sched is not None
        deadline = sched.next_deadline

        def busy_batch(deadline: float = deadline) -> None:
            # callbacks that start before the pacer's wake-up (deadline - spin) and run
            # past the deadline, then the server's poll() as after data_received
            while time.monotonic() < deadline + 0.2 * MS:
                pass
            pacer.poll()

        loop.call_at(deadline - 2 * MS, busy_batch)
        await asyncio.sleep(max(0.0, deadline - loop.time()) + 6 * MS)
    await pacer.stop()
    assert len(stream.times) >= 5  # the polled ticks ran
    # the ordinary spin is < 1 ms per tick (room for a busy machine's preemptions); the
    # bug spun ~19.8 ms after each polled tick
    assert pacer.spin_seconds < len(stream.times) * 8 * MS, pacer.spin_seconds


class Ordered:
    """A stream that logs its on_tick and after_tick, and whether the collector ran."""

    def __init__(self, name: str, log: list[tuple[str, str, bool]]) -> None:
        self.name = name
        self.log = log

    def on_tick(self) -> None:
        import gc

        self.log.append((self.name, "write", gc.isenabled()))

    def after_tick(self) -> None:
        import gc

        self.log.append((self.name, "after", gc.isenabled()))


async def test_every_stream_writes_before_any_bookkeeping_and_without_gc() -> None:
    """The frames leave back to back (the same offsets within every tick): each
    stream's ``after_tick`` runs once all have written, and no collection of the
    garbage collector can land between two writes."""
    import gc

    log: list[tuple[str, str, bool]] = []
    pacer = Pacer(period=20 * MS)
    pacer.add(Ordered("a", log))
    pacer.add(Ordered("b", log))
    pacer.add(Recorder(asyncio.get_running_loop()))  # no after_tick: fine
    assert gc.isenabled()
    pacer.start()
    await asyncio.sleep(110 * MS)
    await pacer.stop()
    assert gc.isenabled()
    ticks = [log[i : i + 4] for i in range(0, len(log) - len(log) % 4, 4)]
    assert len(ticks) >= 3
    for tick in ticks:
        assert tick == [("a", "write", False), ("b", "write", False),
                        ("a", "after", True), ("b", "after", True)]


async def test_before_tick_work_is_done_ahead_of_the_deadline() -> None:
    """Batched work (the levels of the tick's caller frames) runs ``ahead`` of the
    deadline, while the loop would only wait, and again at the tick for what came in
    since: the writes start on time however long that work takes. Before, the work ran
    at the deadline and every write of the tick waited for it."""
    import time

    loop = asyncio.get_running_loop()
    busy = 4 * MS
    pacer = Pacer(period=20 * MS, spin=1 * MS, ahead=8 * MS)
    stream = Recorder(loop)
    pending = [True]
    hook_runs: list[float] = []

    def batch() -> None:  # as LevelBatch.run: costly with frames waiting, else nothing
        hook_runs.append(time.monotonic())
        if pending[0]:
            pending[0] = False
            end = time.monotonic() + busy
            while time.monotonic() < end:
                pass

    class Feeds(Recorder):
        def on_tick(self) -> None:
            pending[0] = True  # frames arrive after every tick's writes

    feeder = Feeds(loop)
    pacer.before_tick.append(batch)
    pacer.add(stream)
    pacer.add(feeder)
    pacer.start()
    await asyncio.sleep(0)
    sched = pacer.schedule
    assert sched is not None
    start = sched.start
    await asyncio.sleep(300 * MS)
    await pacer.stop()
    late = sorted(t - (start + round((t - start) / (20 * MS)) * 20 * MS)
                  for t in stream.times[1:])
    assert len(late) >= 8
    median = late[len(late) // 2]
    assert median < busy / 2, late  # was >= busy: the work sat between deadline and writes
    # ahead, and again at the tick (a timer woken very late on a busy machine may skip
    # the run ahead now and then: most ticks must have it)
    assert len(hook_runs) >= 1.5 * len(late)


def test_write_slots_follow_the_write_cost_but_not_its_fluctuations() -> None:
    from audiosocket_gw.pacer import WriteSlots

    slots = WriteSlots(group=25, slack=0.3, hysteresis=0.25, alpha=0.02)
    assert slots.offsets(200, 0.02) == 0.0  # nothing measured yet: back to back
    slots.observe(200 * 6e-6, 200)
    assert slots.step == pytest.approx(25 * 6e-6 * 1.3)
    first = slots.step
    # ticks a little faster or slower, and one slow tick 10 times the cost: the offsets
    # stay put (moving them moves every later group's frames)
    for cost in (5e-6, 7e-6, 6.5e-6, 60e-6, 5.5e-6, 6e-6):
        slots.observe(200 * cost, 200)
    assert slots.step == first
    # a lasting change of the cost is followed
    for _ in range(200):
        slots.observe(200 * 12e-6, 200)
    assert slots.step == pytest.approx(25 * 12e-6 * 1.3, rel=0.3) and slots.step > first
    assert slots.offsets(200, 0.02) == slots.step
    assert slots.offsets(25, 0.02) == 0.0  # one group: nothing to anchor
    assert slots.offsets(4000, 0.02) == 0.0  # would spread over too much of the tick
    slots.observe(0.0, 0)  # an empty tick changes nothing
    assert slots.step > first


class Timed:
    """A stream whose write takes ``cost`` seconds (``extra`` more on odd ticks)."""

    def __init__(self, times: list[float], cost: float, extra: float = 0.0) -> None:
        self.times = times
        self.cost = cost
        self.extra = extra
        self.n = 0

    def on_tick(self) -> None:
        import time

        self.times.append(time.monotonic())
        end = time.monotonic() + self.cost + (self.extra if self.n % 2 else 0.0)
        self.n += 1
        while time.monotonic() < end:
            pass


@pytest.mark.parametrize("anchored", [True, False])
async def test_a_slow_write_moves_only_the_rest_of_its_group(anchored: bool) -> None:
    """Groups of streams start at fixed offsets from the tick's start: a write that
    is slower on every other tick no longer moves the frames of the later groups (it
    moved every later call's frame by as much, tick after tick)."""
    from audiosocket_gw.pacer import WriteSlots

    pacer = Pacer(period=20 * MS)
    # 10 groups of ~0.5 ms writes, 1 ms apart: room up to 16 ms on a slow machine
    pacer.slots = WriteSlots(group=10, slack=1.0, max_share=0.8 if anchored else 0.0)
    first: list[float] = []
    last: list[float] = []
    cost = 50e-6
    streams = [Timed(first if i == 0 else last if i == 95 else [], cost,
                     extra=400e-6 if i == 3 else 0.0) for i in range(100)]
    for s in streams:
        pacer.add(s)
    pacer.start()
    await asyncio.sleep(600 * MS)
    await pacer.stop()
    offsets = [b - a for a, b in zip(first, last, strict=False)][5:]  # after the estimate
    assert len(offsets) >= 10
    moves = sorted(abs(b - a) for a, b in zip(offsets, offsets[1:], strict=False))
    median = moves[len(moves) // 2]
    if anchored:
        assert median < 200e-6, moves
    else:  # back to back: every tick moves the last streams by the slow write's 400 us
        assert median > 300e-6, moves


class Booked:
    """A stream whose write takes ``cost`` seconds; logs (tick, name, event)."""

    def __init__(self, pacer: Pacer, name: str, log: list[tuple[int, str, str]],
                 cost: float, fail_at: int = -1) -> None:
        self.pacer = pacer
        self.name = name
        self.log = log
        self.cost = cost
        self.fail_at = fail_at

    def _tick(self) -> int:
        assert self.pacer.schedule is not None
        return self.pacer.schedule.ticks

    def on_tick(self) -> None:
        import time

        if self._tick() == self.fail_at:
            raise RuntimeError("write failed")
        self.log.append((self._tick(), self.name, "write"))
        end = time.monotonic() + self.cost
        while time.monotonic() < end:
            pass

    def after_tick(self) -> None:
        self.log.append((self._tick(), self.name, "after"))


async def test_the_waits_between_write_groups_do_the_written_streams_bookkeeping() -> None:
    """While a group of streams waits for its offset, the ``after_tick`` of streams
    already written runs (the wait was spent on the clock); each stream's runs once
    per tick, after its own write, never for a stream whose write failed."""
    from audiosocket_gw.pacer import WriteSlots

    pacer = Pacer(period=20 * MS)
    # groups of 2 writes of ~0.2 ms, 2 ms apart: ~1.6 ms to wait between groups
    pacer.slots = WriteSlots(group=2, slack=4.0, max_share=0.9)
    log: list[tuple[int, str, str]] = []
    names = [f"s{i}" for i in range(8)]
    for name in names:
        pacer.add(Booked(pacer, name, log, 200e-6, fail_at=12 if name == "s5" else -1))
    pacer.start()
    await asyncio.sleep(400 * MS)
    await pacer.stop()
    ticks = sorted({t for t, _, _ in log})[:-1]  # the last one may be cut short
    assert len(ticks) >= 10
    in_gaps = 0
    for t in ticks:
        events = [(n, e) for tt, n, e in log if tt == t]
        alive = [n for n in names if n != "s5" or t < 12]
        assert sorted(n for n, e in events if e == "write") == sorted(alive)
        assert sorted(n for n, e in events if e == "after") == sorted(alive), events
        for n in alive:
            assert events.index((n, "write")) < events.index((n, "after")), events
        last_write = max(i for i, (_, e) in enumerate(events) if e == "write")
        in_gaps += sum(1 for i, (_, e) in enumerate(events) if e == "after" and i < last_write)
    # once the write cost is known, the first groups' bookkeeping is done in the waits
    # (six per tick on an idle machine; at least one per tick on a busy one)
    assert in_gaps >= len(ticks), in_gaps


def test_a_spin_counts_the_gaps_in_its_clock_readings_as_cpu_stalls() -> None:
    """Readings 0.4 ms apart are a busy CPU's; 0.6 ms apart, the CPU was taken away."""
    from audiosocket_gw.pacer import CpuStalls, _spin_until

    readings = iter([0.0, 0.0001, 0.0005, 0.0011, 0.0012, 0.0032, 0.0033, 0.0034])
    stalls = CpuStalls()
    spent = _spin_until(0.0034, stalls, clock=lambda: next(readings))
    assert spent == pytest.approx(0.0034)
    assert stalls.count == 2  # 0.0005 -> 0.0011 and 0.0012 -> 0.0032, not 0.0001 -> 0.0005
    assert stalls.seconds == pytest.approx(0.0006 + 0.002)


SPINNER = """
import signal, time
from audiosocket_gw.pacer import CpuStalls, _spin_until
told = []
signal.signal(signal.SIGUSR1, lambda *_: told.append(1))
s = CpuStalls()
print("spinning", flush=True)
while not told:  # 50 ms spins back to back (no system call between them)
    _spin_until(time.monotonic() + 0.05, s)
print(s.count, s.seconds, flush=True)
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_a_process_stopped_during_its_spin_counts_the_stall() -> None:
    """The real thing: the spinning process is stopped (SIGSTOP) for 30 ms, as a
    hypervisor that does not run the virtual CPU would; its spin counts a stall at
    least that long. It spins until told to end, and the 30 ms count from when the
    process is seen stopped, so a busy machine cannot make the stop miss the spins or
    shorten it; only lower bounds: a busy machine adds stalls, never removes them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE,
                          text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "spinning"
            time.sleep(0.05)  # into its spin
            os.kill(child.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 10.0
            while _state(child.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)
            assert _state(child.pid) == "T"
            time.sleep(0.03)
            os.kill(child.pid, signal.SIGCONT)
            os.kill(child.pid, signal.SIGUSR1)
            count, seconds = child.stdout.readline().split()
        finally:
            child.kill()
    assert int(count) >= 1
    assert float(seconds) >= 0.025
