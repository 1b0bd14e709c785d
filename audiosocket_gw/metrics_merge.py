"""One ``/metrics`` view of every worker of ``serve --workers N``.

Each worker writes its own exposition to ``<data dir>/metrics/w<i>.prom`` once a
second (atomically: a temporary file then ``rename``); ``/metrics``, answered by
whichever worker the kernel gives the connection to, returns its live series plus
its siblings' last snapshots (at most ~1 s old), every sample labelled
``worker="<i>"``. Sum over ``worker`` for host totals (``sum without (worker)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["WorkerMetrics", "merge_expositions"]

log = logging.getLogger("audiosocket_gw.metrics")

INTERVAL_S = 1.0


def merge_expositions(texts: dict[int, str]) -> bytes:
    """Expositions by worker index -> one exposition with a ``worker`` label."""
    families: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            log.warning("worker %d: unreadable metrics snapshot; skipped", worker)
            continue
        for fam in parsed:
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                merged.add_sample(s.name, {**s.labels, "worker": str(worker)}, s.value,
                                  s.timestamp, s.exemplar)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class WorkerMetrics:
    """Write this worker's snapshot; merge everyone's (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, directory: Path, index: int,
                 workers: int) -> None:
        self.registry = registry
        self.directory = directory
        self.index = index
        self.workers = workers
        self._task: asyncio.Task[None] | None = None

    def _path(self, i: int) -> Path:
        return self.directory / f"w{i}.prom"

    def _write(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.directory / f".w{self.index}.{os.getpid()}.tmp"
        tmp.write_bytes(generate_latest(self.registry))
        tmp.replace(self._path(self.index))

    async def start(self) -> None:
        await asyncio.to_thread(self._write)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="worker-metrics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                await asyncio.to_thread(self._write)
            except OSError as exc:
                log.warning("cannot write the metrics snapshot: %s", exc)

    def _read_all(self) -> dict[int, str]:
        texts = {self.index: generate_latest(self.registry).decode()}
        for i in range(self.workers):
            if i != self.index:
                with contextlib.suppress(OSError):
                    texts[i] = self._path(i).read_text()
        return texts

    async def exposition(self) -> bytes:
        """Every worker's series, labelled ``worker``."""
        texts = await asyncio.to_thread(self._read_all)
        return merge_expositions(texts)
