"""``CallStore`` on a SQLite file: embedded, zero set-up, crash-safe.

- One dedicated worker thread per store (a ``ThreadPoolExecutor(max_workers=1)``)
  owns the ``sqlite3`` connection; every method is ``await loop.run_in_executor``,
  so the event loop never blocks on disk and the connection is only ever used from
  the thread that opened it.
- WAL journal, ``synchronous=NORMAL`` (a committed transaction survives a process
  crash such as SIGKILL; on power loss the last few commits may roll back, never
  corrupting the file), ``busy_timeout``, foreign keys on.
- Explicit transactions (``isolation_level=None``, ``BEGIN IMMEDIATE`` for every
  write): several gateway processes may share the file; the limiter's
  count-then-insert happens under the write lock, so it cannot over-admit.
- The schema is versioned (``schema_version`` table, ``MIGRATIONS`` list); ``open()``
  applies the missing migrations in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from ..callstate import ACTIVE, CallInput, CallStatus
from ..private import secure_sqlite
from .base import (
    CALL_COLUMNS,
    CALL_SELECT,
    CallEvent,
    CallRecord,
    DuplicateCall,
    RolloutRule,
    RolloutStat,
    StoreError,
    UnknownCall,
    call_from_row,
    check_update_fields,
    dump_json,
    transition,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteCallStore"]

T = TypeVar("T")

MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: calls, their event log, limiter slots.
    (
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            agent TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
            from_number TEXT NOT NULL,
            to_number TEXT NOT NULL,
            status TEXT NOT NULL,
            answered_by TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            answered_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            hangup_cause INTEGER,
            hangup_reason TEXT,
            duration_s DOUBLE PRECISION,
            billable_s DOUBLE PRECISION,
            metadata TEXT NOT NULL DEFAULT '{}',
            transcript_ref TEXT,
            recording_ref TEXT,
            mos_in_min DOUBLE PRECISION,
            mos_in_mean DOUBLE PRECISION,
            mos_out_min DOUBLE PRECISION,
            mos_out_mean DOUBLE PRECISION
        )""",
        "CREATE INDEX calls_status ON calls (status)",
        "CREATE INDEX calls_tenant_created ON calls (tenant, created_at)",
        "CREATE INDEX calls_created ON calls (created_at)",
        """CREATE TABLE call_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id TEXT NOT NULL REFERENCES calls (id),
            kind TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX call_events_call ON call_events (call_id, seq)",
        """CREATE TABLE call_slots (
            call_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            released INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX call_slots_tenant ON call_slots (tenant, released)",
    ),
    # 2: the last time a live call was known alive (heartbeat), for crash recovery.
    ("ALTER TABLE calls ADD COLUMN last_alive_at DOUBLE PRECISION",),
    # 3: idempotency keys of POST /v1/calls; the migration rollout's rules and log.
    (
        """CREATE TABLE idempotency_keys (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            call_id TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, key)
        )""",
        "CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)",
        """CREATE TABLE rollout_rules (
            scope TEXT NOT NULL CHECK (scope IN ('global', 'tenant', 'did')),
            target TEXT NOT NULL,
            percent INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
            tenant TEXT NOT NULL DEFAULT '',
            updated_at DOUBLE PRECISION NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (scope, target)
        )""",
        """CREATE TABLE rollout_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at DOUBLE PRECISION NOT NULL,
            tenant TEXT NOT NULL,
            did TEXT NOT NULL,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX rollout_log_at ON rollout_log (at)",
    ),
    # 4: the node that handles each call (several gateways on one store).
    ("ALTER TABLE calls ADD COLUMN node_id TEXT",),
    # 5: AudioSocket legs expected back for a call (a Dial's resume leg).
    (
        """CREATE TABLE call_legs (
            leg_id TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX call_legs_expires ON call_legs (expires_at)",
    ),
)
"""Migration ``i`` brings the schema from version ``i`` to ``i + 1``. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)

_ACTIVE_VALUES = tuple(sorted(s.value for s in ACTIVE))
_ACTIVE_SQL = "(" + ", ".join("?" * len(_ACTIVE_VALUES)) + ")"


def write_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error).

    IMMEDIATE takes the write lock up front, so two writers never both read then both
    write (the limiter's count-then-insert depends on it). Shared with the recordings
    queue, which keeps its own database file.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once (no busy handler) when another connection is doing the same: two
    processes opening one fresh file together (two ``serve --workers`` children on one
    ``recordings.sqlite`` failed at start this way, ~1 start in 10 when synchronised).
    Retries for ``busy_timeout_ms``; returns the journal mode.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(0.1, delay * 2)


class SqliteCallStore:
    """A ``CallStore`` in one SQLite file (created if missing, parents included)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the file in the worker thread, set pragmas, run migrations."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigw-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        """Close the connection and stop the worker thread (pending calls finish first)."""
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    def _open_sync(self) -> None:
        secure_sqlite(self.path)  # phone numbers: 0600 (and its -wal/-shm), dir 0700
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = enable_wal(conn, self.busy_timeout_ms)
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version} is newer than this gateway "
                    f"({SCHEMA_VERSION}): upgrade the gateway"
                )
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction (worker thread only)."""
        return write_tx(self._c(), fn)

    async def schema_version(self) -> int:
        """The schema version of the open database."""

        def q() -> int:
            return int(self._c().execute("SELECT version FROM schema_version").fetchone()[0])

        return await self._run(q)

    async def pragma(self, name: str) -> Any:
        """Read one PRAGMA (e.g. ``journal_mode``); for diagnostics and tests."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")

        def q() -> Any:
            row = self._c().execute(f"PRAGMA {name}").fetchone()
            return None if row is None else row[0]

        return await self._run(q)

    # ---------------------------------------------------------------------- calls

    async def create_call(self, call: CallRecord) -> None:
        """Insert ``call``; ``DuplicateCall`` if its id exists."""
        if call.direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be inbound or outbound, got {call.direction!r}")
        values = [getattr(call, name) for name in CALL_COLUMNS]
        values[list(CALL_COLUMNS).index("status")] = CallStatus(call.status).value
        values[list(CALL_COLUMNS).index("metadata")] = dump_json(call.metadata)
        sql = (
            f"INSERT INTO calls ({', '.join(CALL_COLUMNS.values())}) "
            f"VALUES ({', '.join('?' * len(CALL_COLUMNS))})"
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, values)
            except sqlite3.IntegrityError as exc:
                raise DuplicateCall(f"call {call.id!r} already exists") from exc

        await self._run(self._write, insert)

    def _get_sync(self, call_id: str) -> CallRecord | None:
        row = self._c().execute(CALL_SELECT + " WHERE id = ?", (call_id,)).fetchone()
        return None if row is None else call_from_row(row)

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call, or None."""
        return await self._run(self._get_sync, call_id)

    async def list_calls(
        self,
        status: CallStatus | None = None,
        tenant: str | None = None,
        limit: int = 100,
        *,
        from_: str | None = None,
        to: str | None = None,
        created_from: float | None = None,
        created_until: float | None = None,
        offset: int = 0,
    ) -> list[CallRecord]:
        """Calls newest first, optionally filtered by status, tenant, numbers and
        ``created_at`` (inclusive bounds); ``offset`` skips that many first."""
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(CallStatus(status).value)
        for column, value in (("tenant", tenant), ("from_number", from_), ("to_number", to)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if created_from is not None:
            where.append("created_at >= ?")
            args.append(float(created_from))
        if created_until is not None:
            where.append("created_at <= ?")
            args.append(float(created_until))
        sql = CALL_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        args += [max(0, int(limit)), max(0, int(offset))]

        def q() -> list[CallRecord]:
            return [call_from_row(r) for r in self._c().execute(sql, args).fetchall()]

        return await self._run(q)

    async def delete_call(self, call_id: str) -> bool:
        """Remove a call, its events and its slot row; True if it existed."""

        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM call_events WHERE call_id = ?", (call_id,))
            conn.execute("DELETE FROM call_slots WHERE call_id = ? AND released = 1",
                         (call_id,))
            return conn.execute("DELETE FROM calls WHERE id = ?", (call_id,)).rowcount > 0

        return await self._run(self._write, delete)

    async def active_calls(self, node_id: str | None = None) -> list[CallRecord]:
        """Calls in queued / ringing / in-progress, oldest first (of one node if given)."""
        sql = CALL_SELECT + f" WHERE status IN {_ACTIVE_SQL}"
        args: tuple[Any, ...] = _ACTIVE_VALUES
        if node_id is not None:
            sql += " AND node_id = ?"
            args = (*args, node_id)
        sql += " ORDER BY created_at, id"

        def q() -> list[CallRecord]:
            return [call_from_row(r) for r in self._c().execute(sql, args).fetchall()]

        return await self._run(q)

    async def update_call(self, call_id: str, **fields: object) -> CallRecord | None:
        """Set ``UPDATABLE_FIELDS``; returns the updated call, None if unknown."""
        check_update_fields(fields)
        if not fields:
            return await self.get_call(call_id)
        cols = [CALL_COLUMNS[name] for name in fields]
        values = [
            dump_json(cast(dict[str, Any], v)) if name == "metadata" else v
            for name, v in fields.items()
        ]
        sql = f"UPDATE calls SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?"

        def update(conn: sqlite3.Connection) -> CallRecord | None:
            if conn.execute(sql, [*values, call_id]).rowcount == 0:
                return None
            return self._get_sync(call_id)

        return await self._run(self._write, update)

    async def apply_input(
        self,
        call_id: str,
        inp: CallInput,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> CallRecord | None:
        """Run the state machine for ``inp`` at time ``at`` (see ``CallStore``)."""
        change = await self.apply_input_change(call_id, inp, at, detail)
        return None if change is None else change[1]

    async def apply_input_change(
        self,
        call_id: str,
        inp: CallInput,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> tuple[CallRecord, CallRecord] | None:
        """``apply_input`` returning the call before and after, read in its transaction."""
        def apply(conn: sqlite3.Connection) -> tuple[CallRecord, CallRecord] | None:
            call = self._get_sync(call_id)
            if call is None:
                return None
            updated, event = transition(call, inp, at, detail)
            self._append_sync(conn, call_id, "input", at, event)
            if updated != call:
                conn.execute(
                    "UPDATE calls SET status = ?, answered_at = ?, ended_at = ?, duration_s = ?,"
                    " billable_s = ?, hangup_cause = ?, hangup_reason = ? WHERE id = ?",
                    (
                        updated.status.value,
                        updated.answered_at,
                        updated.ended_at,
                        updated.duration_s,
                        updated.billable_s,
                        updated.hangup_cause,
                        updated.hangup_reason,
                        call_id,
                    ),
                )
            if event["changed"] and updated.is_terminal:
                conn.execute("UPDATE call_slots SET released = 1 WHERE call_id = ?", (call_id,))
            return call, updated

        return await self._run(self._write, apply)

    async def touch_alive(self, call_ids: Sequence[str], at: float) -> int:
        """Mark the still-active calls of ``call_ids`` alive at ``at`` (one transaction).

        A heartbeat batch, not a per-frame write: after a crash the calls a previous
        process left open are ended at this time, not at the restart.
        """
        ids = list(dict.fromkeys(call_ids))
        if not ids:
            return 0

        def touch(conn: sqlite3.Connection) -> int:
            n = 0
            for i in range(0, len(ids), 500):  # SQLite's bound-variable limit
                chunk = ids[i:i + 500]
                n += conn.execute(
                    f"UPDATE calls SET last_alive_at = ? WHERE status IN {_ACTIVE_SQL} AND id IN"
                    f" ({', '.join('?' * len(chunk))})",
                    (at, *_ACTIVE_VALUES, *chunk)).rowcount
            return n

        return int(await self._run(self._write, touch))

    # --------------------------------------------------------------------- events

    @staticmethod
    def _append_sync(
        conn: sqlite3.Connection, call_id: str, kind: str, at: float, data: dict[str, Any]
    ) -> int:
        try:
            cur = conn.execute(
                "INSERT INTO call_events (call_id, kind, at, data) VALUES (?, ?, ?, ?)",
                (call_id, kind, float(at), dump_json(data)),
            )
        except sqlite3.IntegrityError as exc:
            raise UnknownCall(f"no call {call_id!r}") from exc
        return int(cast(int, cur.lastrowid))

    async def append_event(
        self, call_id: str, kind: str, at: float, data: dict[str, Any] | None = None
    ) -> int:
        """Append an event; ``UnknownCall`` if the call does not exist."""
        payload = dump_json(data or {})  # fail on bad data before touching the database
        payload_obj: dict[str, Any] = json.loads(payload)
        return await self._run(
            self._write, lambda conn: self._append_sync(conn, call_id, kind, at, payload_obj)
        )

    async def events(self, call_id: str) -> list[CallEvent]:
        """The call's events in append order."""

        def q() -> list[CallEvent]:
            rows = (
                self._c()
                .execute(
                    "SELECT seq, call_id, kind, at, data FROM call_events"
                    " WHERE call_id = ? ORDER BY seq",
                    (call_id,),
                )
                .fetchall()
            )
            return [CallEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

        return await self._run(q)

    # -------------------------------------------------------------------- limiter

    async def try_acquire_slot(self, tenant: str, call_id: str, limit: int) -> bool:
        """Atomically take a slot if ``tenant`` holds fewer than ``limit``."""

        def acquire(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT tenant, released FROM call_slots WHERE call_id = ?", (call_id,)
            ).fetchone()
            if row is not None and not row[1]:
                return True  # already held by this call
            (held,) = conn.execute(
                "SELECT COUNT(*) FROM call_slots WHERE tenant = ? AND released = 0", (tenant,)
            ).fetchone()
            if held >= limit:
                return False
            conn.execute(
                "INSERT INTO call_slots (call_id, tenant, released) VALUES (?, ?, 0)"
                " ON CONFLICT (call_id) DO UPDATE SET tenant = excluded.tenant, released = 0",
                (call_id, tenant),
            )
            return True

        return await self._run(self._write, acquire)

    async def release_slot(self, call_id: str) -> bool:
        """Release ``call_id``'s slot; True if it was held."""

        def release(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE call_slots SET released = 1 WHERE call_id = ? AND released = 0",
                (call_id,),
            )
            return cur.rowcount > 0

        return await self._run(self._write, release)

    async def active_slots(self, tenant: str) -> int:
        """Slots ``tenant`` holds."""

        def q() -> int:
            row = (
                self._c()
                .execute(
                    "SELECT COUNT(*) FROM call_slots WHERE tenant = ? AND released = 0",
                    (tenant,),
                )
                .fetchone()
            )
            return int(row[0])

        return await self._run(q)

    async def reconcile_slots(self, *, release_orphans: bool = True) -> int:
        """Release slots of ended calls (and of never-created calls); returns the count."""
        orphan = " OR c.id IS NULL" if release_orphans else ""
        sql = (
            "UPDATE call_slots SET released = 1 WHERE released = 0 AND call_id IN ("
            " SELECT s.call_id FROM call_slots s LEFT JOIN calls c ON c.id = s.call_id"
            f" WHERE s.released = 0 AND (c.status NOT IN {_ACTIVE_SQL}{orphan}))"
        )

        def reconcile(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, _ACTIVE_VALUES).rowcount)

        return await self._run(self._write, reconcile)

    # ---------------------------------------------------------------- idempotency

    async def claim_idempotency_key(self, tenant: str, key: str, at: float, ttl_s: float,
                                    pending_ttl_s: float = 60.0) -> tuple[bool, str | None]:
        """Claim ``key`` or report its call (see ``CallStore``)."""

        def claim(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (at - ttl_s,))
            conn.execute("DELETE FROM idempotency_keys WHERE call_id IS NULL AND created_at < ?",
                         (at - pending_ttl_s,))
            row = conn.execute("SELECT call_id FROM idempotency_keys WHERE tenant = ? AND key = ?",
                               (tenant, key)).fetchone()
            if row is not None:
                return False, row[0]
            conn.execute("INSERT INTO idempotency_keys (tenant, key, call_id, created_at)"
                         " VALUES (?, ?, NULL, ?)", (tenant, key, at))
            return True, None

        return await self._run(self._write, claim)

    async def complete_idempotency_key(self, tenant: str, key: str, call_id: str) -> None:
        """Record the call placed under ``key``."""
        await self._run(self._write, lambda conn: conn.execute(
            "UPDATE idempotency_keys SET call_id = ? WHERE tenant = ? AND key = ?",
            (call_id, tenant, key)))

    async def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Drop a claim without a call."""
        await self._run(self._write, lambda conn: conn.execute(
            "DELETE FROM idempotency_keys WHERE tenant = ? AND key = ? AND call_id IS NULL",
            (tenant, key)))

    # ------------------------------------------------------------------ call legs

    async def register_leg(self, leg_id: str, call_id: str, metadata: dict[str, str],
                           now: float, expires_at: float) -> None:
        """Expect ``leg_id`` back for ``call_id`` until ``expires_at`` (prunes expired)."""

        def register(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM call_legs WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO call_legs (leg_id, call_id, metadata, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (leg_id) DO UPDATE SET"
                " call_id = excluded.call_id, metadata = excluded.metadata,"
                " expires_at = excluded.expires_at",
                (leg_id, call_id, dump_json(dict(metadata)), expires_at))

        await self._run(self._write, register)

    async def get_leg(self, leg_id: str, now: float) -> tuple[str, dict[str, str]] | None:
        """``(call id, metadata)`` of an unexpired leg, or None."""

        def q() -> tuple[str, dict[str, str]] | None:
            assert self._conn is not None
            row = self._conn.execute(
                "SELECT call_id, metadata FROM call_legs WHERE leg_id = ? AND expires_at >= ?",
                (leg_id, now)).fetchone()
            return None if row is None else (str(row[0]), dict(json.loads(row[1])))

        return await self._run(q)

    async def amend_leg(self, leg_id: str, metadata: dict[str, str]) -> bool:
        """Merge ``metadata`` into the leg's; False if unknown."""

        def amend(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT metadata FROM call_legs WHERE leg_id = ?",
                               (leg_id,)).fetchone()
            if row is None:
                return False
            merged = {**json.loads(row[0]), **metadata}
            conn.execute("UPDATE call_legs SET metadata = ? WHERE leg_id = ?",
                         (dump_json(merged), leg_id))
            return True

        return await self._run(self._write, amend)

    async def discard_leg(self, leg_id: str) -> None:
        """Forget ``leg_id``."""
        await self._run(self._write, lambda conn: conn.execute(
            "DELETE FROM call_legs WHERE leg_id = ?", (leg_id,)))

    # -------------------------------------------------------------------- rollout

    async def rollout_rules(self) -> list[RolloutRule]:
        """Every rollout rule, global first."""

        def q() -> list[RolloutRule]:
            rows = self._c().execute(
                "SELECT scope, target, percent, updated_at, tenant, note FROM rollout_rules"
                " ORDER BY CASE scope WHEN 'global' THEN 0 WHEN 'tenant' THEN 1 ELSE 2 END,"
                " target").fetchall()
            return [RolloutRule(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

        return await self._run(q)

    async def change_rollout(self, upserts: list[RolloutRule],
                             deletes: list[tuple[str, str]]) -> None:
        """Upserts and deletes in one transaction."""
        for rule in upserts:
            if rule.scope not in ("global", "tenant", "did") or not 0 <= rule.percent <= 100:
                raise ValueError(f"bad rollout rule {rule!r}")

        def change(conn: sqlite3.Connection) -> None:
            for scope, target in deletes:
                conn.execute("DELETE FROM rollout_rules WHERE scope = ? AND target = ?",
                             (scope, target))
            for r in upserts:
                conn.execute(
                    "INSERT INTO rollout_rules (scope, target, percent, tenant, updated_at, note)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, target) DO UPDATE SET"
                    " percent = excluded.percent, tenant = excluded.tenant,"
                    " updated_at = excluded.updated_at, note = excluded.note",
                    (r.scope, r.target, r.percent, r.tenant, r.updated_at, r.note))

        await self._run(self._write, change)

    async def log_rollout(self, at: float, tenant: str, did: str, path: str, kind: str,
                          reason: str = "") -> None:
        """Append a decision or failure; prune entries older than two days."""

        def log(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "INSERT INTO rollout_log (at, tenant, did, path, kind, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)", (float(at), tenant, did, path, kind, reason))
            if int(cast(int, cur.lastrowid)) % 1000 == 0:
                conn.execute("DELETE FROM rollout_log WHERE at < ?", (at - 2 * 86400,))

        await self._run(self._write, log)

    async def rollout_stats(self, since: float) -> list[RolloutStat]:
        """Per (tenant, DID, path): decisions and failures since ``since``."""

        def q() -> list[RolloutStat]:
            rows = self._c().execute(
                "SELECT tenant, did, path, SUM(kind = 'call'), SUM(kind = 'failure')"
                " FROM rollout_log WHERE at >= ? GROUP BY tenant, did, path"
                " ORDER BY tenant, did, path", (since,)).fetchall()
            return [RolloutStat(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

        return await self._run(q)
