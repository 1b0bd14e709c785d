"""Completion of Asterisk MixMonitor files: only when Asterisk has closed them.

Facts (docs/PROTOCOLS.md §5.3): there is **no MixMonitorStop at hangup**; the
post-process ``command`` runs 1-10 ms after the hangup with the WAV already closed
and complete; in that command variables are written ``^{VAR}`` (expanded when
MixMonitor starts). So the primary signal is the hook; the dialplan runs::

    MixMonitor(${AIGW_TENANT}/${AIGW_CALL_ID}.wav,,/usr/bin/curl -fsS -m 5 -X POST
        -H "Authorization: Bearer <token>"
        http://127.0.0.1:9094/v1/recordings/mixmonitor-done?call_id=^{AIGW_CALL_ID})

(relative paths land in ``/var/spool/asterisk/monitor``; never use option ``b``).

The fallback, for a lost hook, is close-write detection by polling: a file counts as
complete only when **the call has ended** (the gateway saw the hangup) **and** its
size and mtime have not changed for ``stable_s`` seconds measured after that hangup.
Size alone is never trusted: MixMonitor keeps appending while the call is up.

``CompletionDetector`` is the sans-I/O rule (clock passed in); ``MixMonitorWatcher``
is the asyncio shell that stats the files of pending calls in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

log = logging.getLogger("audiosocket_gw.recordings")

Stat = tuple[int, int]  # (size, mtime_ns)


class Verdict(Enum):
    WAIT = "wait"
    COMPLETE = "complete"
    MISSING = "missing"


class CompletionDetector:
    """Decides, from successive stats of one file, when it is complete."""

    def __init__(self, *, stable_s: float, missing_s: float) -> None:
        self.stable_s = stable_s
        self.missing_s = missing_s
        self.ended_at: float | None = None
        self._last: Stat | None = None
        self._since = 0.0

    def ended(self, now: float) -> None:
        """The call hung up at ``now`` (only the first report counts)."""
        if self.ended_at is None:
            self.ended_at = now

    def observe(self, now: float, stat: Stat | None) -> Verdict:
        if stat != self._last:
            self._last = stat
            self._since = now
        if self.ended_at is None:
            return Verdict.WAIT
        quiet_since = max(self._since, self.ended_at)
        if stat is None:
            return Verdict.MISSING if now - self.ended_at >= self.missing_s else Verdict.WAIT
        if now - quiet_since >= self.stable_s:
            return Verdict.COMPLETE
        return Verdict.WAIT


@dataclass
class Expected:
    """A MixMonitor file we wait for."""

    call_id: str
    tenant: str
    agent: str
    path: str
    detector: CompletionDetector = field(repr=False)


def path_inside(root: str | Path, *parts: str) -> Path:
    """``root/part/...``, refused (``ValueError``) unless it stays inside ``root``.

    Each part must be one plain name (no separator, not ``.``/``..``, no NUL), and the
    normalised result must still be below ``root``: a tenant id or call id can never
    put a file elsewhere, whatever validation happened upstream.
    """
    base = Path(os.path.normpath(os.path.abspath(root)))
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise ValueError(f"{part!r} is not usable as a file name")
    out = Path(os.path.normpath(base.joinpath(*parts)))
    if out.parent == out or not out.is_relative_to(base) or out == base:
        raise ValueError(f"{out} is outside {base}")
    return out


def mixmonitor_path(root: str | Path, tenant: str, call_id: str) -> str:
    return str(path_inside(root, tenant, f"{call_id}.wav"))


def _stat(path: str) -> Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


OnComplete = Callable[[Expected, str], Coroutine[Any, Any, None]]
"""Called once per file with how it completed: ``hook``, ``stable`` or ``missing``."""


class MixMonitorWatcher:
    """Tracks expected MixMonitor files until the hook or the fallback completes them."""

    def __init__(
        self,
        root: str | Path,
        on_complete: OnComplete,
        *,
        stable_s: float = 2.0,
        poll_s: float = 0.5,
        missing_s: float = 60.0,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.on_complete = on_complete
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.missing_s = missing_s
        self.max_pending = max_pending
        self.clock = clock
        self.pending: dict[str, Expected] = {}
        self._task: asyncio.Task[None] | None = None
        self._completing: set[asyncio.Task[None]] = set()

    def expect(self, call_id: str, tenant: str, agent: str) -> Expected | None:
        """Start waiting for ``{root}/{tenant}/{call_id}.wav`` (None when over the limit)."""
        if call_id in self.pending:
            return self.pending[call_id]
        if len(self.pending) >= self.max_pending:
            log.warning("call %s: too many MixMonitor files pending; not tracked", call_id)
            return None
        try:
            path = mixmonitor_path(self.root, tenant, call_id)
        except ValueError as exc:
            log.error("call %s: MixMonitor file not tracked: %s", call_id, exc)
            return None
        exp = Expected(call_id, tenant, agent, path,
                       CompletionDetector(stable_s=self.stable_s, missing_s=self.missing_s))
        self.pending[call_id] = exp
        return exp

    def ended(self, call_id: str) -> None:
        exp = self.pending.get(call_id)
        if exp is not None:
            exp.detector.ended(self.clock())

    async def hook(self, call_id: str, tenant: str | None = None, agent: str = "") -> str:
        """Asterisk's post-process command ran: the file is closed and complete.

        Returns ``completed``, ``unknown`` (no such file) or ``duplicate``.
        """
        exp = self.pending.pop(call_id, None)
        if exp is None:
            if tenant is None:
                found = await asyncio.to_thread(self._find, call_id)
                if found is None:
                    return "unknown"
                tenant = found
            try:
                path = mixmonitor_path(self.root, tenant, call_id)
            except ValueError:
                return "unknown"
            exp = Expected(call_id, tenant, agent, path,
                           CompletionDetector(stable_s=self.stable_s, missing_s=self.missing_s))
        if await asyncio.to_thread(_stat, exp.path) is None:
            return "unknown"
        await self.on_complete(exp, "hook")
        return "completed"

    def _find(self, call_id: str) -> str | None:
        """The tenant folder holding ``{call_id}.wav`` (for a hook after a restart)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if entry.is_dir() and os.path.exists(os.path.join(entry.path, call_id + ".wav")):
                    return entry.name
        return None

    # -- fallback polling -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="mixmonitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._completing:
            await asyncio.gather(*self._completing, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("MixMonitor poll failed")

    async def poll_once(self) -> None:
        """Stat every pending file whose call has ended and apply the detector."""
        watched = [e for e in self.pending.values() if e.detector.ended_at is not None]
        stats = await asyncio.to_thread(lambda: [_stat(e.path) for e in watched])
        now = self.clock()
        for exp, st in zip(watched, stats, strict=True):
            verdict = exp.detector.observe(now, st)
            if verdict is Verdict.WAIT or self.pending.get(exp.call_id) is not exp:
                continue
            del self.pending[exp.call_id]
            how = "stable" if verdict is Verdict.COMPLETE else "missing"
            task = asyncio.get_running_loop().create_task(self.on_complete(exp, how))
            self._completing.add(task)
            task.add_done_callback(self._completing.discard)
