"""Realtime scheduling for the gateway's event loop (``AIGW_REALTIME_PRIORITY``).

Why: the pacer must write every call's frame at the same point of every 20 ms tick. A
process at normal priority shares its core with whatever else wakes there (the init
system, kernel threads, a log shipper): the kernel may run one of those for a
millisecond or more while the gateway waits, and every call's frame of that tick is
late at the caller. Measured with ``make bench`` (openai backend, 200 calls, the
gateway pinned to one core, alternating runs): caller jitter p99 1.7-10.3 ms with 4-13
whole ticks late per 20 s at normal priority, 0.13-0.22 ms with none under SCHED_FIFO,
at the same CPU per call. Asterisk offers the same for the same reason (``asterisk -p``).

How: the thread that runs the event loop (the audio path: AudioSocket, pacer, backends)
switches itself to ``SCHED_FIFO`` at ``priority`` with ``SCHED_RESET_ON_FORK``, so the
threads and processes it starts afterwards (file and S3 work handed to threads,
subprocesses) run at normal priority and cannot hold the core. Linux caps a realtime
task at 95 % of each second by default (``kernel.sched_rt_runtime_us``), so an
overloaded gateway still leaves its core some time. Needs ``CAP_SYS_NICE`` or a
``RLIMIT_RTPRIO`` of at least ``priority`` (systemd: ``LimitRTPRIO=``); without either
the gateway says so once and runs at normal priority.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("audiosocket_gw.priority")

MAX_PRIORITY = 99
"""Linux's highest SCHED_FIFO priority."""


def raise_priority(priority: int) -> int:
    """Run the calling thread under SCHED_FIFO at ``priority`` (0: leave it).

    Returns the realtime priority in effect afterwards (0: normal scheduling).
    """
    if priority <= 0:
        return 0
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        log.warning("AIGW_REALTIME_PRIORITY=%d: this platform has no realtime scheduling; "
                    "running at normal priority", priority)
        return 0
    try:
        setter(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        log.warning("AIGW_REALTIME_PRIORITY=%d: not permitted (%s); running at normal "
                    "priority (give the service LimitRTPRIO=%d or CAP_SYS_NICE)",
                    priority, exc.strerror or exc, priority)
        return 0
    log.info("event loop runs under SCHED_FIFO at priority %d", priority)
    return priority
