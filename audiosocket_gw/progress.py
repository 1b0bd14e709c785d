"""Progress of long commands (``call --csv``, ``simulate``, ``bench``), on stderr.

On a terminal: a live progress bar (``rich``). Otherwise (a pipe, a log file, CI):
one plain line every ``every_s`` seconds and one at the end, so logs stay readable.
Results stay on stdout; progress never mixes into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

__all__ = ["Reporter", "summary_table", "ticking"]


class Reporter:
    """``advance()`` as work items finish; ``note`` is a short status shown beside."""

    def __init__(self, total: int, label: str, *, stream: IO[str] | None = None,
                 every_s: float = 5.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.label, self.every_s, self.clock = total, label, every_s, clock
        self.done = 0
        self.note = ""
        self.tty = self.stream.isatty() if tty is None else tty
        self._t0 = clock()
        self._last = self._t0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> Reporter:
        if self.tty:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                                 TimeElapsedColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, note="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line()

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        self.update(note)

    def update(self, note: str | None = None) -> None:
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, note=self.note)
            return
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        elapsed = self.clock() - self._t0
        note = f" ({self.note})" if self.note else ""
        print(f"{self.label}: {self.done}/{self.total} done{note}, {elapsed:.0f} s",
              file=self.stream, flush=True)


def summary_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                  *, stream: IO[str] | None = None) -> None:
    """Print a table (box drawing on a terminal, plain ASCII otherwise)."""
    out = stream if stream is not None else sys.stdout
    tty = out.isatty()
    console = Console(file=out, width=100, no_color=not tty)
    table = Table(title=title, box=box.HEAVY_HEAD if tty else box.ASCII)
    for col in columns:
        table.add_column(col, justify="right" if col in ("calls", "share") else "left")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


@contextlib.asynccontextmanager
async def ticking(reporter: Reporter, note: Callable[[], str | None],
                  interval: float = 0.5) -> AsyncIterator[Reporter]:
    """Refresh ``reporter`` every ``interval`` seconds while long work runs (plain
    lines then still come every ``every_s``, even when no item finishes)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            reporter.update(note())

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield reporter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
