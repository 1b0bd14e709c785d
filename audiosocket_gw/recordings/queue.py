"""The persisted recording queue: one row per recording, one per transcription job.

One async interface, ``RecordingJobs``, with two implementations built by
``store.factory.build_recording_queue``:

- ``SqliteRecordingQueue`` (embedded default, one process): its own SQLite file
  ``<data_dir>/recordings.sqlite`` (WAL, ``synchronous=FULL``), versioned by
  ``PRAGMA user_version`` (``MIGRATIONS``);
- ``store.pg_recordings.PostgresRecordingQueue`` (``AIGW_DATABASE_URL``): tables in the
  shared PostgreSQL database (the call store's migrations), shared by every node.

A recording must survive a crash between "Asterisk closed the file" and "S3 has a
verified copy": each state change is one committed transaction, so after a ``kill -9``
the queue is exactly as the last commit left it; ``recover()`` puts this node's rows
caught in ``uploading`` (and transcription jobs caught in ``running``) back to pending.
Uploads use a deterministic object key, so redoing an interrupted upload overwrites the
same object: nothing is duplicated.

Several nodes (PostgreSQL): each row records the node that owns its local file
(``node_id``); a node claims only its own rows, atomically (``FOR UPDATE SKIP LOCKED``),
so no job is uploaded by two workers or nodes. The rows of a node without a live lease
(``cluster.py``: crashed, or stopped with uploads pending) are ``orphans()``: a survivor
that can read the file (same size at the same path: MixMonitor files on a shared
spool) takes the row (``adopt()``), compare-and-set on (owner, state), so exactly one does;
one that cannot marks it ``stranded`` with the reason in ``last_error`` (another
survivor that can read it, or the node restarted under the same ``AIGW_NODE_ID``,
still picks it up). A ``verified`` row (uploaded, waiting for retention or its
transcription) stays ``verified`` when adopted; one whose file is out of reach becomes
``deleted`` with the reason (its S3 copy is complete), and its unfinished transcription
job ``failed``.

Recording states::

    local      captured, local-only mode (no bucket): kept on disk, never deleted
    pending    waiting for an upload attempt (next_attempt_at)
    uploading  an attempt is running (reset to pending at start-up)
    uploaded   the store accepted the bytes; checksum not yet verified
    verified   HEAD + read-back sha256 match the local file
    deleted    verified, retention elapsed, local file removed; or verified and its node
               lost with the local file out of reach of the survivor (``last_error``
               says so: that copy was not deleted). The S3 copy stays in both cases
    failed     gave up (attempts exhausted or a permanent error), last_error says why
    stranded   the owning node is gone and the file is not readable from the node that
               looked (last_error says which); resumed by a node that can read it
    erasing    deleted through another node's API (PostgreSQL): hidden from get and
               page, no longer changed; the owning node erases file, object and row

Transcription states: pending, running, done, failed.

``RecordingDB`` is the synchronous SQLite core (one connection; use it from one
thread); ``SqliteRecordingQueue`` runs it on a single worker thread for asyncio callers.
Times are epoch floats passed in by the caller (no clock reads in the core).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..private import secure_sqlite
from ..store.sqlite import enable_wal, write_tx

T = TypeVar("T")

__all__ = ["MIGRATIONS", "TAKEOVER_STATES", "JobState", "RecState", "RecordingDB",
           "RecordingJobs", "RecordingRow", "SqliteRecordingQueue",
           "TranscriptRow", "REC_COLUMNS", "TR_COLUMNS", "file_reachable",
           "recording_from_row", "transcript_from_row", "update_columns"]


class RecState(StrEnum):
    LOCAL = "local"
    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    DELETED = "deleted"
    FAILED = "failed"
    STRANDED = "stranded"
    ERASING = "erasing"
    """Deleted through another node's API (a shared store): hidden from every listing,
    waiting for the node whose disk holds the file to erase it (``to_erase``)."""


TAKEOVER_STATES = ("pending", "uploading", "uploaded", "stranded", "verified")
"""States of a dead node's row that a survivor takes over (the rest are final or
local-only). ``verified`` rows only wait for the retention sweep and the transcription,
both of the owning node: a survivor adopts them still ``verified`` (never re-uploaded)."""


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RecordingRow:
    """One recording (``call_id`` is the key: a call has at most one recording)."""

    call_id: str
    tenant: str
    agent: str
    source: str  # gateway | mixmonitor
    path: str
    key: str
    recording_sid: str
    state: str
    attempts: int
    sha256: str
    size: int
    duration_s: float
    channels: int
    captured_at: float
    next_attempt_at: float
    uploaded_at: float | None = None
    verified_at: float | None = None
    deleted_at: float | None = None
    last_error: str | None = None
    callback_url: str | None = None
    node_id: str = ""
    """The node whose disk holds ``path`` (the only one that uploads it, unless adopted)."""


@dataclass(frozen=True)
class TranscriptRow:
    call_id: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: float
    done_at: float | None = None
    engine: str | None = None
    text: str | None = None
    speakers: dict[str, str] | None = None
    last_error: str | None = None


REC_COLUMNS = [f.name for f in fields(RecordingRow)]
TR_COLUMNS = [f.name for f in fields(TranscriptRow)]
_UPDATABLE = {"recording": frozenset(REC_COLUMNS) - {"call_id", "node_id"},
              "transcript": frozenset(TR_COLUMNS) - {"call_id"}}


def update_columns(kind: str, values: dict[str, Any]) -> list[tuple[str, Any]]:
    """The checked ``(column, value)`` pairs of an UPDATE of a ``recording`` or
    ``transcript`` row, for both stores: known columns only (never the key, nor the
    owning node: that changes by adoption alone), ``speakers`` as JSON."""
    out: list[tuple[str, Any]] = []
    for name, value in values.items():
        if name not in _UPDATABLE[kind]:
            raise TypeError(f"unknown {kind} column {name!r}")
        if name == "speakers" and value is not None:
            value = json.dumps(value, sort_keys=True)
        out.append((name, value))
    return out

MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    # 1: the first schema (created IF NOT EXISTS: files from before versioning are v0)
    """CREATE TABLE IF NOT EXISTS recordings (
        call_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, agent TEXT NOT NULL,
        source TEXT NOT NULL, path TEXT NOT NULL, key TEXT NOT NULL,
        recording_sid TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
        sha256 TEXT NOT NULL, size INTEGER NOT NULL, duration_s REAL NOT NULL,
        channels INTEGER NOT NULL, captured_at REAL NOT NULL, next_attempt_at REAL NOT NULL,
        uploaded_at REAL, verified_at REAL, deleted_at REAL, last_error TEXT,
        callback_url TEXT)""",
    "CREATE INDEX IF NOT EXISTS recordings_due ON recordings (state, next_attempt_at)",
    """CREATE TABLE IF NOT EXISTS transcripts (
        call_id TEXT PRIMARY KEY, state TEXT NOT NULL, attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL, created_at REAL NOT NULL, done_at REAL,
        engine TEXT, text TEXT, speakers TEXT, last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS transcripts_due ON transcripts (state, next_attempt_at)",
), (
    # 2: the node that owns each recording's file
    "ALTER TABLE recordings ADD COLUMN node_id TEXT NOT NULL DEFAULT ''",
))
"""Migration ``i`` brings ``recordings.sqlite`` from ``user_version`` ``i`` to ``i + 1``."""


def file_reachable(path: str, size: int) -> bool:
    """True if ``path`` is a regular file of ``size`` bytes here (a survivor's check
    before it adopts a dead node's recording; the upload verifies the sha256)."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def recording_from_row(row: Any) -> RecordingRow | None:
    """A ``RecordingRow`` from a row of ``REC_COLUMNS`` (either store), or None."""
    return None if row is None else RecordingRow(*tuple(row))


def transcript_from_row(row: Any) -> TranscriptRow | None:
    """A ``TranscriptRow`` from a row of ``TR_COLUMNS`` (either store), or None."""
    if row is None:
        return None
    values = dict(zip(TR_COLUMNS, tuple(row), strict=True))
    if values["speakers"] is not None:
        values["speakers"] = json.loads(values["speakers"])
    return TranscriptRow(**values)


class RecordingDB:
    """Synchronous queue core over one SQLite connection (one thread at a time)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        secure_sqlite(self.path)  # phone numbers: 0600 (and its -wal/-shm), dir 0700
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self.conn = conn
        try:
            enable_wal(conn, busy_timeout_ms)
            conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except BaseException:
            conn.close()
            raise

    def _migrate(self) -> None:
        def up(conn: sqlite3.Connection) -> None:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path}: queue schema {version} is newer than this "
                                   f"gateway ({len(MIGRATIONS)}): upgrade the gateway")
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

        self._tx(up)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return write_tx(self.conn, fn)

    # -- recordings ----------------------------------------------------------------

    def add(self, row: RecordingRow) -> bool:
        """Insert a recording; False (and no change) if the call already has one."""
        cols = ", ".join(REC_COLUMNS)
        marks = ", ".join("?" * len(REC_COLUMNS))
        values = [getattr(row, c) for c in REC_COLUMNS]
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO recordings ({cols}) VALUES ({marks})", values
        )
        return cur.rowcount == 1

    def get(self, call_id: str) -> RecordingRow | None:
        cols = ", ".join(REC_COLUMNS)
        return recording_from_row(self.conn.execute(
            f"SELECT {cols} FROM recordings WHERE call_id = ?", (call_id,)).fetchone())

    def all(self) -> list[RecordingRow]:
        cols = ", ".join(REC_COLUMNS)
        rows = self.conn.execute(f"SELECT {cols} FROM recordings ORDER BY captured_at")
        return [RecordingRow(*r) for r in rows]

    def page(self, *, tenant: str | None = None, call_id: str | None = None,
             limit: int = 50, offset: int = 0) -> list[RecordingRow]:
        """Recordings newest first, optionally of one tenant or one call (REST lists)."""
        cols = ", ".join(REC_COLUMNS)
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("tenant", tenant), ("call_id", call_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {cols} FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY captured_at DESC, call_id LIMIT ? OFFSET ?"
        args += [max(0, int(limit)), max(0, int(offset))]
        return [RecordingRow(*r) for r in self.conn.execute(sql, args)]

    def remove(self, call_id: str) -> bool:
        """Forget a recording (and its transcription job); True if it existed."""

        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM transcripts WHERE call_id = ?", (call_id,))
            return conn.execute("DELETE FROM recordings WHERE call_id = ?",
                                (call_id,)).rowcount > 0

        return self._tx(delete)

    def recover(self) -> tuple[int, int]:
        """After a restart: attempts that were running did not finish; make them due."""

        def fix(conn: sqlite3.Connection) -> tuple[int, int]:
            a = conn.execute(
                "UPDATE recordings SET state = 'pending', next_attempt_at = 0 "
                "WHERE state IN ('uploading', 'uploaded')").rowcount
            b = conn.execute(
                "UPDATE transcripts SET state = 'pending', next_attempt_at = 0 "
                "WHERE state = 'running'").rowcount
            return a, b

        return self._tx(fix)

    def claim_upload(self, now: float) -> RecordingRow | None:
        """Take the oldest due pending recording and mark it ``uploading`` (atomically)."""

        def claim(conn: sqlite3.Connection) -> RecordingRow | None:
            found = conn.execute(
                "SELECT call_id FROM recordings WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, captured_at LIMIT 1", (now,)).fetchone()
            if found is None:
                return None
            conn.execute("UPDATE recordings SET state = 'uploading', attempts = attempts + 1 "
                         "WHERE call_id = ?", (found[0],))
            return self.get(found[0])

        return self._tx(claim)

    def next_due(self) -> float | None:
        """Earliest ``next_attempt_at`` of pending recordings (None: nothing pending)."""
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM recordings WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def set_state(self, call_id: str, state: RecState, **values: Any) -> bool:
        cols = update_columns("recording", values)
        sets = ["state = ?", *(f"{name} = ?" for name, _ in cols)]
        args: list[Any] = [state.value, *(v for _, v in cols), call_id]
        return self.conn.execute(
            f"UPDATE recordings SET {', '.join(sets)} WHERE call_id = ?", args).rowcount > 0

    def due_for_deletion(self, now: float, retention_s: float) -> list[RecordingRow]:
        """Verified recordings past retention whose transcription is not still to run."""
        cols = ", ".join("r." + c for c in REC_COLUMNS)
        rows = self.conn.execute(
            f"SELECT {cols} FROM recordings r LEFT JOIN transcripts t ON t.call_id = r.call_id "
            "WHERE r.state = 'verified' AND r.verified_at + ? <= ? "
            "AND (t.state IS NULL OR t.state IN ('done', 'failed'))",
            (retention_s, now))
        return [RecordingRow(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, COUNT(*) FROM recordings GROUP BY state")
        return {str(s): int(n) for s, n in rows}

    def depth(self) -> tuple[int, int]:
        """Recordings not yet verified, transcription jobs not yet done."""
        up = self.conn.execute("SELECT COUNT(*) FROM recordings WHERE state IN "
                               "('pending', 'uploading', 'uploaded')").fetchone()[0]
        jobs = self.conn.execute("SELECT COUNT(*) FROM transcripts WHERE state IN "
                                 "('pending', 'running')").fetchone()[0]
        return int(up), int(jobs)

    # -- transcription jobs ---------------------------------------------------------

    def add_job(self, call_id: str, now: float) -> bool:
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO transcripts (call_id, state, attempts, next_attempt_at, "
            "created_at) VALUES (?, 'pending', 0, ?, ?)", (call_id, now, now))
        return cur.rowcount == 1

    def get_job(self, call_id: str) -> TranscriptRow | None:
        cols = ", ".join(TR_COLUMNS)
        return transcript_from_row(self.conn.execute(
            f"SELECT {cols} FROM transcripts WHERE call_id = ?", (call_id,)).fetchone())

    def claim_job(self, now: float) -> TranscriptRow | None:
        def claim(conn: sqlite3.Connection) -> TranscriptRow | None:
            found = conn.execute(
                "SELECT call_id FROM transcripts WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT 1", (now,)).fetchone()
            if found is None:
                return None
            conn.execute("UPDATE transcripts SET state = 'running', attempts = attempts + 1 "
                         "WHERE call_id = ?", (found[0],))
            return self.get_job(found[0])

        return self._tx(claim)

    def next_job_due(self) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM transcripts WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def set_job(self, call_id: str, state: JobState, **values: Any) -> None:
        cols = update_columns("transcript", values)
        sets = ["state = ?", *(f"{name} = ?" for name, _ in cols)]
        args: list[Any] = [state.value, *(v for _, v in cols), call_id]
        self.conn.execute(f"UPDATE transcripts SET {', '.join(sets)} WHERE call_id = ?", args)


@runtime_checkable
class RecordingJobs(Protocol):
    """The recording queue as the pipeline uses it. All methods are coroutines.

    ``shared`` is True when several nodes use the queue (PostgreSQL): claims, the
    retention sweep, ``recover`` and ``depth`` then cover this node's rows only, and
    ``orphans``/``adopt``/``strand`` move a dead node's rows. With SQLite (one process)
    every row is this process's and ``orphans`` is empty.
    """

    node_id: str

    @property
    def shared(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def recover(self) -> tuple[int, int]:
        """This node's interrupted uploads and transcriptions (and its stranded rows)
        back to pending; returns (recordings, jobs)."""

    async def add(self, row: RecordingRow) -> bool:
        """Insert (``row.node_id`` replaced by this node); False if the call has one."""

    async def get(self, call_id: str) -> RecordingRow | None: ...

    async def all(self) -> list[RecordingRow]: ...

    async def page(self, *, tenant: str | None = None, call_id: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[RecordingRow]: ...

    async def remove(self, call_id: str) -> bool: ...

    async def claim_upload(self, now: float) -> RecordingRow | None:
        """Atomically take this node's oldest due pending row (state ``uploading``)."""

    async def next_due(self) -> float | None: ...

    async def set_state(self, call_id: str, state: RecState, **values: Any) -> bool:
        """Change a row this node owns; False if it is gone or another node adopted it."""

    async def due_for_deletion(self, now: float, retention_s: float) -> list[RecordingRow]: ...

    async def depth(self) -> tuple[int, int]: ...

    async def add_job(self, call_id: str, now: float) -> bool: ...

    async def get_job(self, call_id: str) -> TranscriptRow | None: ...

    async def claim_job(self, now: float) -> TranscriptRow | None: ...

    async def next_job_due(self) -> float | None: ...

    async def set_job(self, call_id: str, state: JobState, **values: Any) -> None: ...

    async def orphans(self, limit: int = 100) -> list[RecordingRow]:
        """Rows in ``TAKEOVER_STATES`` whose node holds no live lease, oldest first,
        ``stranded`` rows last (already looked at: they must not hide newer rows that a
        survivor can adopt behind ``limit``)."""

    async def adopt(self, row: RecordingRow, now: float) -> bool:
        """Make an orphan this node's and due now, if still owned by ``row.node_id`` in
        ``row.state`` and that node still has no live lease (one adopter wins; a node
        back under the same id keeps its row). ``pending``, except a ``verified`` row
        (stays verified; its transcription job, if it was running, pending again)."""

    async def strand(self, row: RecordingRow, reason: str) -> bool:
        """Mark an orphan this node cannot read ``stranded`` (same compare-and-set); a
        ``verified`` one ``deleted`` instead (uploaded: only its local copy is out of
        reach, not deleted here), its unfinished transcription job ``failed``."""

    async def request_erase(self, call_id: str) -> bool:
        """A recording deleted here whose file is on another node's disk: mark it
        ``erasing`` (gone from ``get`` and ``page`` at once; its state no longer
        changes, its transcription job is dropped) for that node to erase. False: no
        such row, or already asked."""

    async def to_erase(self) -> list[RecordingRow]:
        """Rows another node asked to erase (``request_erase``): this node's, and those
        of nodes without a live lease (whose files a survivor may reach on a shared
        spool)."""


class SqliteRecordingQueue:
    """``RecordingJobs`` over ``RecordingDB`` on one worker thread (one process).

    ``call(fn, *args, **kw)`` runs ``fn(db, *args, **kw)`` on the thread.
    """

    def __init__(self, path: str | Path, *, node_id: str = "") -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._executor: ThreadPoolExecutor | None = None
        self._db: RecordingDB | None = None

    @property
    def shared(self) -> bool:
        return False

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigw-recq")
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._executor, RecordingDB, self.path)

    async def close(self) -> None:
        executor, db = self._executor, self._db
        if executor is None:
            return
        self._executor = self._db = None
        try:
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(executor, db.close)
        finally:
            executor.shutdown(wait=True)

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None or self._db is None:
            raise RuntimeError("recording queue is not open")
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(db, *args, **kwargs))

    async def recover(self) -> tuple[int, int]:
        return await self.call(RecordingDB.recover)

    async def add(self, row: RecordingRow) -> bool:
        return await self.call(RecordingDB.add, replace(row, node_id=self.node_id))

    async def get(self, call_id: str) -> RecordingRow | None:
        return await self.call(RecordingDB.get, call_id)

    async def all(self) -> list[RecordingRow]:
        return await self.call(RecordingDB.all)

    async def page(self, *, tenant: str | None = None, call_id: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[RecordingRow]:
        return await self.call(RecordingDB.page, tenant=tenant, call_id=call_id, limit=limit,
                               offset=offset)

    async def remove(self, call_id: str) -> bool:
        return await self.call(RecordingDB.remove, call_id)

    async def claim_upload(self, now: float) -> RecordingRow | None:
        return await self.call(RecordingDB.claim_upload, now)

    async def next_due(self) -> float | None:
        return await self.call(RecordingDB.next_due)

    async def set_state(self, call_id: str, state: RecState, **values: Any) -> bool:
        return await self.call(RecordingDB.set_state, call_id, state, **values)

    async def due_for_deletion(self, now: float, retention_s: float) -> list[RecordingRow]:
        return await self.call(RecordingDB.due_for_deletion, now, retention_s)

    async def depth(self) -> tuple[int, int]:
        return await self.call(RecordingDB.depth)

    async def add_job(self, call_id: str, now: float) -> bool:
        return await self.call(RecordingDB.add_job, call_id, now)

    async def get_job(self, call_id: str) -> TranscriptRow | None:
        return await self.call(RecordingDB.get_job, call_id)

    async def claim_job(self, now: float) -> TranscriptRow | None:
        return await self.call(RecordingDB.claim_job, now)

    async def next_job_due(self) -> float | None:
        return await self.call(RecordingDB.next_job_due)

    async def set_job(self, call_id: str, state: JobState, **values: Any) -> None:
        await self.call(RecordingDB.set_job, call_id, state, **values)

    async def orphans(self, limit: int = 100) -> list[RecordingRow]:
        return []  # one process: every row is ours

    async def adopt(self, row: RecordingRow, now: float) -> bool:
        return False

    async def strand(self, row: RecordingRow, reason: str) -> bool:
        return False

    async def request_erase(self, call_id: str) -> bool:
        return False  # one process: every file is ours, deleted at once

    async def to_erase(self) -> list[RecordingRow]:
        return []
