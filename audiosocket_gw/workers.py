"""``audiosocket-gw serve --workers N``: N gateway processes on one host.

The supervisor (this module, the process systemd starts) runs no gateway itself:

- It resolves the listen addresses once (a port 0 becomes a real port, held by a
  bound, never-listening ``SO_REUSEPORT`` socket for the supervisor's lifetime) and
  starts N children ``serve --worker-index i`` on exactly those ports. Every child
  listens with ``SO_REUSEPORT``: the kernel spreads AudioSocket and HTTP connections
  over the workers.
- Every worker shares the one PostgreSQL store (``AIGW_DATABASE_URL``; with SQLite,
  ``AIGW_WORKERS`` > 1 is refused at startup). A call routed by one worker whose
  AudioSocket reaches another is found in the store (``CallRegistry.lookup``).
- Each worker is a node of its own in the store (``AIGW_NODE_ID`` + ``.w<i>``, or the
  default ``hostname:pid``) with its own lease: a crashed worker's calls are closed by
  a sibling, and the supervisor starts a new worker in its place.
- AMI: one connection per worker (the simplest design that survives a worker crash).
  Every worker sees every event; a status input applied by two workers changes the
  call once (``apply_input_change`` decides inside the store's transaction), so status
  callbacks and metrics count it once; startup/resync reconciliation only touch the
  worker's own calls.
- ``/metrics`` on the shared HTTP port answers from whichever worker the kernel
  picks, with every worker's series: each worker writes its exposition to
  ``<data dir>/metrics/<worker>.prom`` every second and adds its siblings' files,
  labelled ``worker`` (see ``metrics_merge``).
- SIGTERM/SIGINT: forwarded to every worker, which drains its calls (shutdown grace);
  the supervisor exits when all have, killing any still alive after grace + 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .config import format_hostport, parse_hostport
from .private import write_atomic

__all__ = ["run_supervisor"]

log = logging.getLogger("audiosocket_gw.workers")

RESTART_DELAY_S = 1.0


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound SO_REUSEPORT socket on ``host:port`` (never listening): the port the
    workers will share, kept ours while the supervisor runs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


def _strip(argv: Sequence[str], names: set[str]) -> list[str]:
    """``argv`` without the options ``names`` (``--x V`` and ``--x=V`` forms)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in names:
            skip = "=" not in a
            continue
        out.append(a)
    return out


async def run_supervisor(argv: Sequence[str], workers: int, audiosocket: str, http: str,
                         grace: float, ready_file: str | None) -> int:
    """Run ``workers`` children until SIGTERM/SIGINT; returns the exit code."""
    as_host, as_port = parse_hostport(audiosocket, setting="audiosocket")
    http_host, http_port = parse_hostport(http, setting="http")
    reserved: list[socket.socket] = []
    try:
        s1, as_port = _reserve(as_host, as_port)
        reserved.append(s1)
        s2, http_port = _reserve(http_host, http_port)
        reserved.append(s2)
    except OSError as exc:
        for s in reserved:
            s.close()
        print(f"audiosocket-gw: cannot listen: {exc}", file=sys.stderr)
        return 1
    as_addr = format_hostport(as_host, as_port)
    http_addr = format_hostport(http_host, http_port)
    base = _strip(argv, {"--workers", "--ready-file", "--audiosocket", "--http",
                         "--worker-index"}) + ["--workers", str(workers)]
    tmp = tempfile.TemporaryDirectory(prefix="aigw-workers-")
    procs: dict[int, asyncio.subprocess.Process] = {}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def spawn(i: int) -> asyncio.subprocess.Process:
        ready = Path(tmp.name) / f"ready{i}.json"
        ready.unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "audiosocket_gw", *base, "--audiosocket", as_addr,
            "--http", http_addr, "--worker-index", str(i), "--ready-file", str(ready))
        procs[i] = proc
        return proc

    async def wait_ready(i: int, within: float = 60.0) -> bool:
        ready = Path(tmp.name) / f"ready{i}.json"
        async with asyncio.timeout(within):
            while not ready.exists():
                if procs[i].returncode is not None:
                    return False
                await asyncio.sleep(0.05)
        return True

    code = 0
    try:
        for i in range(workers):
            await spawn(i)
        try:
            ok = all([await wait_ready(i) for i in range(workers)])
        except TimeoutError:
            ok = False
        if not ok:
            log.error("a worker failed to start; stopping")
            code = 1
            return code
        log.info("%d workers on AudioSocket %s, HTTP %s", workers, as_addr, http_addr)
        if ready_file:
            info = json.dumps({"audiosocket": as_addr, "http": http_addr,
                               "workers": [p.pid for p in procs.values()]})
            await asyncio.to_thread(write_atomic, Path(ready_file), info)
        while not stopping.is_set():
            waits = {asyncio.ensure_future(p.wait()): i for i, p in procs.items()}
            stop_wait = asyncio.ensure_future(stopping.wait())
            done, _ = await asyncio.wait([*waits, stop_wait],
                                         return_when=asyncio.FIRST_COMPLETED)
            for f in [*waits, stop_wait]:
                if f not in done:
                    f.cancel()
            if stopping.is_set():
                break
            for f in done:
                if f in waits:
                    i = waits[f]
                    log.error("worker %d (pid %d) exited with %s; starting a new one",
                              i, procs[i].pid, procs[i].returncode)
                    await asyncio.sleep(RESTART_DELAY_S)
                    await spawn(i)
        log.info("stopping %d workers", len(procs))
        return code
    finally:
        for p in procs.values():
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                await asyncio.wait_for(p.wait(), grace + 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for s in reserved:
            s.close()
        tmp.cleanup()
