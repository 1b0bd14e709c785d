"""Run the real gateway as a child process (for the demo and the benchmark).

The child binds port 0 (any free port) unless told otherwise and writes its real
addresses to a ready file, so nothing fails because a default port is taken; the
parent always terminates it (SIGTERM, then SIGKILL) so no process is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from ..config import parse_hostport


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (Linux /proc), None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (Linux /proc), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class GatewayProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 log_path: str | None = None, cpu: int | None = None) -> None:
        self.args = list(args)
        self.cpu = cpu
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.audiosocket: tuple[str, int] = ("127.0.0.1", 0)
        self.http: tuple[str, int] = ("127.0.0.1", 0)
        self.workers: list[int] = []
        """Worker pids under ``serve --workers N`` (empty: one process, ``pid``)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="aigw-")
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> GatewayProcess:
        if self.proc is not None:  # started already (``start()`` called by the owner)
            return self
        try:
            await self.start()
        except BaseException:
            await self.stop()  # the child and the temporary directory, now
            raise
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _pin(self) -> None:
        """Runs in the child before exec: keep the gateway on one core (benchmarks)."""
        if self.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {self.cpu})

    async def start(self, start_within: float = 20.0) -> None:
        ready = Path(self._tmp.name) / "ready.json"
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("AIGW_DATA_DIR", str(Path(self._tmp.name) / "data"))
        # Without a log file the child's output goes to one in the temporary directory,
        # so a gateway that exits at start says why in the error.
        log_path = self.log_path or str(Path(self._tmp.name) / "gateway.log")
        out: IO[bytes] = await asyncio.to_thread(open, log_path, "ab")
        self._log = out
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "audiosocket_gw", "serve", "--ready-file", str(ready),
            *self.args, env=env, stdout=out, stderr=out,
            preexec_fn=self._pin if self.cpu is not None else None,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_within
        while not ready.exists():
            if self.proc.returncode is not None:
                tail = await asyncio.to_thread(_tail, log_path)
                raise RuntimeError(
                    f"gateway exited with code {self.proc.returncode} at start: {tail}")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError("gateway did not start in time")
            await asyncio.sleep(0.05)
        info = json.loads(ready.read_text())
        self.audiosocket = parse_hostport(info["audiosocket"], setting="audiosocket")
        self.http = parse_hostport(info["http"], setting="http")
        self.workers = [int(p) for p in info.get("workers", [])]

    async def stop(self, stop_within: float = 15.0) -> int | None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), stop_within)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._tmp.cleanup()
        return None if proc is None else proc.returncode


def _tail(path: str, limit: int = 2000) -> str:
    """The end of the child's output (why it exited), or a note that there is none."""
    try:
        data = Path(path).read_bytes()[-limit:]
    except OSError:
        return "(no output)"
    return data.decode("utf-8", "replace").strip() or "(no output)"
