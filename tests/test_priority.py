"""``AIGW_REALTIME_PRIORITY``: the event loop's thread under SCHED_FIFO, what it starts
afterwards at normal priority, a clear refusal of bad values, and a gateway that says
(log and ``/metrics``) when it may not raise its priority."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from audiosocket_gw.config import Config, ConfigError
from audiosocket_gw.testing.proc import GatewayProcess

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux only")

PROBE = """
import os, threading
from audiosocket_gw.priority import raise_priority
got = raise_priority({priority})
seen = []
t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
t.start(); t.join()
print(got, os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, seen[0])
"""


def permitted(priority: int) -> bool:
    """May a process of this user run under SCHED_FIFO at ``priority``? (root, or a
    RLIMIT_RTPRIO that high; asked in a child, never of the test process itself)."""
    r = subprocess.run(
        [sys.executable, "-c", "import os\ntry:\n    os.sched_setscheduler(0, os.SCHED_FIFO, "
         f"os.sched_param({priority}))\nexcept OSError:\n    print('no')\nelse:\n"
         "    print('yes')"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() == "yes"


def main_thread_policy(pid: int) -> tuple[int, int]:
    """(policy, realtime priority) of ``pid``'s main thread, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[38]), int(fields[37])  # fields 41 and 40 of proc(5)


def test_the_loop_thread_runs_fifo_and_what_it_starts_runs_normal() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE.format(priority=3)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got, policy, prio, thread_policy = map(int, r.stdout.split())
    if permitted(3):
        assert (got, policy, prio) == (3, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, 3)
    else:
        assert (got, policy, prio) == (0, os.SCHED_OTHER, 0)
        assert "not permitted" in r.stderr and "LimitRTPRIO=3" in r.stderr
    assert thread_policy == os.SCHED_OTHER  # SCHED_RESET_ON_FORK


def test_zero_leaves_the_scheduling_alone() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE.format(priority=0)],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["0", str(os.SCHED_OTHER), "0", str(os.SCHED_OTHER)]
    assert r.stderr == ""


@pytest.mark.parametrize("value", ["-1", "100", "high", "1.5"])
def test_a_bad_priority_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match="AIGW_REALTIME_PRIORITY"):
        Config.from_env({"AIGW_REALTIME_PRIORITY": value})


async def test_serve_runs_its_event_loop_at_the_priority_and_says_so() -> None:
    env = {**os.environ, "AIGW_REALTIME_PRIORITY": "2"}
    gw = GatewayProcess("--allow-unregistered", "--audiosocket", "127.0.0.1:0",
                        "--http", "127.0.0.1:0", "--shutdown-grace", "0.2", env=env)
    await gw.start()
    try:
        url = "http://{}:{}/metrics".format(*gw.http)
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        policy = main_thread_policy(gw.pid)
    finally:
        code = await gw.stop()
    assert code == 0
    if permitted(2):
        assert "aigw_realtime_priority 2.0" in text
        assert policy == (os.SCHED_FIFO, 2)
    else:
        assert "aigw_realtime_priority 0.0" in text
        assert policy == (os.SCHED_OTHER, 0)
