"""``CallStore`` on PostgreSQL: one store shared by several gateway nodes and workers.

Selected by ``AIGW_DATABASE_URL=postgresql://...`` (``store.factory``). The driver is
asyncpg (measured against psycopg 3 + psycopg_pool for the call-setup transaction of
the limiter: asyncpg ~650/s, psycopg ~540/s on the 2-core dev machine, both far above
what one Asterisk sets up; asyncpg also brings its own pool, one dependency).

- A bounded pool (``pool_max`` connections, default 10); every acquire waits at most
  ``acquire_timeout_s`` and every statement ``command_timeout_s``: a stalled database
  raises ``StoreError`` instead of piling up coroutines. The audio path never awaits the
  store (status writes go through ``StatusWriter``'s queue).
- Versioned schema (``schema_version`` table, ``MIGRATIONS``); ``open()`` applies the
  missing migrations under a transaction-level advisory lock, so several nodes that
  start together migrate once.
- The limiter is atomic across every node: ``try_acquire_slot`` calls one function
  that takes a per-tenant advisory transaction lock, then counts and inserts (no
  over-admission, no table lock, one round trip).
- ``apply_input`` reads the call ``FOR UPDATE`` and runs ``base.transition`` in the same
  transaction as the event append and the slot release.
- Node leases (``heartbeat``, ``expired_nodes``, ``take_over``): a node that stops
  renewing its lease has its open calls ended by a survivor at their last-alive time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ..callstate import ACTIVE, CallInput, CallStatus
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

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresCallStore"]

T = TypeVar("T")

MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: everything SQLite's schema 4 has: calls (with last_alive_at and node_id), their
    # event log, limiter slots, idempotency keys, the rollout's rules and log.
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
            mos_out_mean DOUBLE PRECISION,
            last_alive_at DOUBLE PRECISION,
            node_id TEXT
        )""",
        "CREATE INDEX calls_status ON calls (status)",
        "CREATE INDEX calls_tenant_created ON calls (tenant, created_at)",
        "CREATE INDEX calls_created ON calls (created_at)",
        "CREATE INDEX calls_node_status ON calls (node_id, status)",
        """CREATE TABLE call_events (
            seq BIGSERIAL PRIMARY KEY,
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
            seq BIGSERIAL PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            tenant TEXT NOT NULL,
            did TEXT NOT NULL,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX rollout_log_at ON rollout_log (at)",
    ),
    # 2: node leases (heartbeat), for the takeover of a dead node's calls; the node
    # that took each limiter slot.
    (
        "ALTER TABLE call_slots ADD COLUMN node_id TEXT",
        "CREATE INDEX call_slots_node ON call_slots (node_id, released)",
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL,
            lease_s DOUBLE PRECISION NOT NULL,
            stopped INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # 3: the limiter's acquire in one round trip. A VOLATILE plpgsql function: each of
    # its statements takes a new snapshot (READ COMMITTED), so the count after the
    # per-tenant advisory lock sees every slot committed before the lock was granted.
    (
        """CREATE FUNCTION aigw_acquire_slot(p_tenant TEXT, p_call_id TEXT, p_limit INTEGER,
                                         p_node TEXT) RETURNS BOOLEAN
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            held_released INTEGER;
            held BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('aigw-slots:' || p_tenant, 0));
            SELECT released INTO held_released FROM call_slots WHERE call_id = p_call_id;
            IF held_released = 0 THEN
                RETURN TRUE;
            END IF;
            SELECT COUNT(*) INTO held FROM call_slots
                WHERE tenant = p_tenant AND released = 0;
            IF held >= p_limit THEN
                RETURN FALSE;
            END IF;
            INSERT INTO call_slots (call_id, tenant, released, node_id)
                VALUES (p_call_id, p_tenant, 0, p_node)
                ON CONFLICT (call_id) DO UPDATE SET tenant = excluded.tenant, released = 0,
                    node_id = excluded.node_id;
            RETURN TRUE;
        END
        $$""",
    ),
    # 4: the recordings queue (``store.pg_recordings``): one row per recording, owned by
    # the node whose disk holds its file, and one per transcription job.
    (
        """CREATE TABLE recordings (
            call_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            agent TEXT NOT NULL,
            source TEXT NOT NULL,
            path TEXT NOT NULL,
            key TEXT NOT NULL,
            recording_sid TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            size BIGINT NOT NULL,
            duration_s DOUBLE PRECISION NOT NULL,
            channels INTEGER NOT NULL,
            captured_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            uploaded_at DOUBLE PRECISION,
            verified_at DOUBLE PRECISION,
            deleted_at DOUBLE PRECISION,
            last_error TEXT,
            callback_url TEXT,
            node_id TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX recordings_due ON recordings (node_id, state, next_attempt_at)",
        "CREATE INDEX recordings_tenant ON recordings (tenant, captured_at)",
        """CREATE TABLE transcripts (
            call_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            done_at DOUBLE PRECISION,
            engine TEXT,
            text TEXT,
            speakers TEXT,
            last_error TEXT
        )""",
        "CREATE INDEX transcripts_due ON transcripts (state, next_attempt_at)",
    ),
    # 5: AudioSocket legs expected back for a call (a Dial's resume leg), so the node
    # the leg reaches (dialplan failover) finds it.
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

_MIGRATE_LOCK = 0x41494757  # "AIGW": one migrating node at a time

_ACTIVE_VALUES = sorted(s.value for s in ACTIVE)


class PostgresCallStore:
    """A ``CallStore`` in a PostgreSQL database (``dsn``: ``postgresql://...``)."""

    def __init__(self, dsn: str, *, node_id: str = "", pool_min: int = 1, pool_max: int = 10,
                 acquire_timeout_s: float = 5.0, command_timeout_s: float = 10.0) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL URL starts with postgresql://")
        self.dsn = dsn
        self.node_id = node_id
        """Stamped on the limiter slots this store takes (freed if the node dies)."""
        self.pool_min = max(1, pool_min)
        self.pool_max = max(self.pool_min, pool_max)
        self.acquire_timeout_s = acquire_timeout_s
        self.command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None

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
        """Create the pool and bring the schema up to date."""
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError("AIGW_DATABASE_URL needs asyncpg: pip install "
                             "'audiosocket-gw[postgres]'") from exc
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=self.pool_min, max_size=self.pool_max,
                command_timeout=self.command_timeout_s, timeout=self.acquire_timeout_s)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from exc
        try:
            async with pool.acquire(timeout=self.acquire_timeout_s) as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool (waits for the connections in use, bounded)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pool.terminate()

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await conn.fetchrow("SELECT version FROM schema_version")
            version = 0 if row is None else int(row[0])
            if row is None:
                await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version} is newer than this gateway "
                    f"({SCHEMA_VERSION}): upgrade the gateway")
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    await conn.execute(statement)
            await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)

    async def _with(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                    tx: bool = False) -> T:
        """``fn(conn)`` on a pooled connection (in a transaction with ``tx``)."""
        import asyncpg

        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        try:
            async with pool.acquire(timeout=self.acquire_timeout_s) as conn:
                if not tx:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except TimeoutError as exc:
            raise StoreError("PostgreSQL: timed out (pool exhausted or slow database)") from exc
        except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.PostgresConnectionError,
                asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(await self._with(lambda c: c.fetchval("SELECT version FROM schema_version")))

    # ---------------------------------------------------------------------- calls

    async def create_call(self, call: CallRecord) -> None:
        """Insert ``call``; ``DuplicateCall`` if its id exists."""
        import asyncpg

        if call.direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be inbound or outbound, got {call.direction!r}")
        values = [getattr(call, name) for name in CALL_COLUMNS]
        values[list(CALL_COLUMNS).index("status")] = CallStatus(call.status).value
        values[list(CALL_COLUMNS).index("metadata")] = dump_json(call.metadata)
        sql = (f"INSERT INTO calls ({', '.join(CALL_COLUMNS.values())}) VALUES "
               f"({', '.join(f'${i + 1}' for i in range(len(CALL_COLUMNS)))})")

        async def insert(conn: asyncpg.Connection) -> None:
            try:
                await conn.execute(sql, *values)
            except asyncpg.UniqueViolationError as exc:
                raise DuplicateCall(f"call {call.id!r} already exists") from exc

        await self._with(insert)

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call, or None."""
        row = await self._with(lambda c: c.fetchrow(CALL_SELECT + " WHERE id = $1", call_id))
        return None if row is None else call_from_row(row)

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
        """Calls newest first, optionally filtered (see ``CallStore``)."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if status is not None:
            where.append(f"status = {arg(CallStatus(status).value)}")
        for column, value in (("tenant", tenant), ("from_number", from_), ("to_number", to)):
            if value is not None:
                where.append(f"{column} = {arg(value)}")
        if created_from is not None:
            where.append(f"created_at >= {arg(float(created_from))}")
        if created_until is not None:
            where.append(f"created_at <= {arg(float(created_until))}")
        sql = CALL_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += (f" ORDER BY created_at DESC, id LIMIT {arg(max(0, int(limit)))}"
                f" OFFSET {arg(max(0, int(offset)))}")
        rows = await self._with(lambda c: c.fetch(sql, *args))
        return [call_from_row(r) for r in rows]

    async def delete_call(self, call_id: str) -> bool:
        """Remove a call, its events and its released slot row; True if it existed."""

        async def delete(conn: asyncpg.Connection) -> bool:
            await conn.execute("DELETE FROM call_events WHERE call_id = $1", call_id)
            await conn.execute("DELETE FROM call_slots WHERE call_id = $1 AND released = 1",
                               call_id)
            return str(await conn.execute("DELETE FROM calls WHERE id = $1", call_id)) != "DELETE 0"

        return await self._with(delete, tx=True)

    async def active_calls(self, node_id: str | None = None) -> list[CallRecord]:
        """Calls in queued / ringing / in-progress, oldest first (of one node if given)."""
        if node_id is None:
            rows = await self._with(lambda c: c.fetch(
                CALL_SELECT + " WHERE status = ANY($1::text[]) ORDER BY created_at, id",
                _ACTIVE_VALUES))
        else:
            rows = await self._with(lambda c: c.fetch(
                CALL_SELECT + " WHERE status = ANY($1::text[]) AND node_id = $2"
                " ORDER BY created_at, id", _ACTIVE_VALUES, node_id))
        return [call_from_row(r) for r in rows]

    async def update_call(self, call_id: str, **fields: object) -> CallRecord | None:
        """Set ``UPDATABLE_FIELDS``; returns the updated call, None if unknown."""
        check_update_fields(fields)
        if not fields:
            return await self.get_call(call_id)
        values = [
            dump_json(cast(dict[str, Any], v)) if name == "metadata"
            else float(v) if name.startswith("mos_") and isinstance(v, int) else v
            for name, v in fields.items()
        ]
        sets = ", ".join(f"{CALL_COLUMNS[name]} = ${i + 1}" for i, name in enumerate(fields))
        sql = (f"UPDATE calls SET {sets} WHERE id = ${len(values) + 1} RETURNING "
               + ", ".join(CALL_COLUMNS.values()))
        row = await self._with(lambda c: c.fetchrow(sql, *values, call_id), tx=True)
        return None if row is None else call_from_row(row)

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
        """``apply_input`` returning the call before and after, read in its transaction
        (under the row lock: of two nodes applying the same input, one sees the change)."""

        async def apply(conn: asyncpg.Connection) -> tuple[CallRecord, CallRecord] | None:
            row = await conn.fetchrow(CALL_SELECT + " WHERE id = $1 FOR UPDATE", call_id)
            if row is None:
                return None
            call = call_from_row(row)
            updated, event = transition(call, inp, at, detail)
            await self._append(conn, call_id, "input", at, dump_json(event))
            if updated != call:
                await conn.execute(
                    "UPDATE calls SET status = $1, answered_at = $2, ended_at = $3,"
                    " duration_s = $4, billable_s = $5, hangup_cause = $6, hangup_reason = $7"
                    " WHERE id = $8",
                    updated.status.value, updated.answered_at, updated.ended_at,
                    updated.duration_s, updated.billable_s, updated.hangup_cause,
                    updated.hangup_reason, call_id)
            if event["changed"] and updated.is_terminal:
                await conn.execute("UPDATE call_slots SET released = 1 WHERE call_id = $1",
                                   call_id)
            return call, updated

        return await self._with(apply, tx=True)

    async def touch_alive(self, call_ids: Sequence[str], at: float) -> int:
        """Mark the still-active calls of ``call_ids`` alive at ``at`` (one statement)."""
        ids = list(dict.fromkeys(call_ids))
        if not ids:
            return 0
        status = await self._with(lambda c: c.execute(
            "UPDATE calls SET last_alive_at = $1 WHERE status = ANY($2::text[])"
            " AND id = ANY($3::text[])", float(at), _ACTIVE_VALUES, ids))
        return int(str(status).rsplit(" ", 1)[-1])

    # --------------------------------------------------------------------- events

    @staticmethod
    async def _append(conn: asyncpg.Connection, call_id: str, kind: str, at: float,
                      payload: str) -> int:
        import asyncpg

        try:
            seq = await conn.fetchval(
                "INSERT INTO call_events (call_id, kind, at, data) VALUES ($1, $2, $3, $4)"
                " RETURNING seq", call_id, kind, float(at), payload)
        except asyncpg.ForeignKeyViolationError as exc:
            raise UnknownCall(f"no call {call_id!r}") from exc
        return int(seq)

    async def append_event(
        self, call_id: str, kind: str, at: float, data: dict[str, Any] | None = None
    ) -> int:
        """Append an event; ``UnknownCall`` if the call does not exist."""
        payload = dump_json(data or {})  # fail on bad data before touching the database
        return await self._with(lambda c: self._append(c, call_id, kind, at, payload))

    async def events(self, call_id: str) -> list[CallEvent]:
        """The call's events in append order."""
        rows = await self._with(lambda c: c.fetch(
            "SELECT seq, call_id, kind, at, data FROM call_events WHERE call_id = $1"
            " ORDER BY seq", call_id))
        return [CallEvent(int(r[0]), r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # -------------------------------------------------------------------- limiter

    async def try_acquire_slot(self, tenant: str, call_id: str, limit: int) -> bool:
        """Atomically take a slot if ``tenant`` holds fewer than ``limit`` (all nodes)."""

        # One round trip: the per-tenant advisory transaction lock, the count and the
        # insert run in ``aigw_acquire_slot`` (migration 3), one transaction.
        return bool(await self._with(lambda c: c.fetchval(
            "SELECT aigw_acquire_slot($1, $2, $3, $4)", tenant, call_id, int(limit),
            self.node_id or None)))

    async def release_slot(self, call_id: str) -> bool:
        """Release ``call_id``'s slot; True if it was held."""
        status = await self._with(lambda c: c.execute(
            "UPDATE call_slots SET released = 1 WHERE call_id = $1 AND released = 0", call_id))
        return str(status) != "UPDATE 0"

    async def active_slots(self, tenant: str) -> int:
        """Slots ``tenant`` holds."""
        return int(await self._with(lambda c: c.fetchval(
            "SELECT COUNT(*) FROM call_slots WHERE tenant = $1 AND released = 0", tenant)))

    async def reconcile_slots(self, *, release_orphans: bool = True) -> int:
        """Release slots of ended calls (and of never-created calls); returns the count.

        With several nodes, call it without ``release_orphans`` (another node may be
        between its acquire and its create).
        """
        orphan = " OR c.id IS NULL" if release_orphans else ""
        sql = (
            "UPDATE call_slots SET released = 1 WHERE released = 0 AND call_id IN ("
            " SELECT s.call_id FROM call_slots s LEFT JOIN calls c ON c.id = s.call_id"
            f" WHERE s.released = 0 AND (c.status <> ALL($1::text[]){orphan}))"
        )
        status = await self._with(lambda c: c.execute(sql, _ACTIVE_VALUES))
        return int(str(status).rsplit(" ", 1)[-1])

    # ---------------------------------------------------------------- idempotency

    async def claim_idempotency_key(self, tenant: str, key: str, at: float, ttl_s: float,
                                    pending_ttl_s: float = 60.0) -> tuple[bool, str | None]:
        """Claim ``key`` or report its call (see ``CallStore``)."""

        async def claim(conn: asyncpg.Connection) -> tuple[bool, str | None]:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND"
                " (created_at < $3 OR (call_id IS NULL AND created_at < $4))",
                tenant, key, at - ttl_s, at - pending_ttl_s)
            inserted = await conn.fetchval(
                "INSERT INTO idempotency_keys (tenant, key, call_id, created_at)"
                " VALUES ($1, $2, NULL, $3) ON CONFLICT DO NOTHING RETURNING 1",
                tenant, key, float(at))
            if inserted is not None:
                return True, None
            row = await conn.fetchrow(
                "SELECT call_id FROM idempotency_keys WHERE tenant = $1 AND key = $2",
                tenant, key)
            return False, (None if row is None else row[0])

        result = await self._with(claim, tx=True)
        # Expired keys of other tenants: pruned outside the claim's transaction.
        await self._with(lambda c: c.execute(
            "DELETE FROM idempotency_keys WHERE created_at < $1", at - ttl_s))
        return result

    async def complete_idempotency_key(self, tenant: str, key: str, call_id: str) -> None:
        """Record the call placed under ``key``."""
        await self._with(lambda c: c.execute(
            "UPDATE idempotency_keys SET call_id = $1 WHERE tenant = $2 AND key = $3",
            call_id, tenant, key))

    async def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Drop a claim without a call."""
        await self._with(lambda c: c.execute(
            "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND call_id IS NULL",
            tenant, key))

    # ------------------------------------------------------------------ call legs

    async def register_leg(self, leg_id: str, call_id: str, metadata: dict[str, str],
                           now: float, expires_at: float) -> None:
        """Expect ``leg_id`` back for ``call_id`` until ``expires_at`` (prunes expired)."""

        async def register(c: asyncpg.Connection) -> None:
            await c.execute("DELETE FROM call_legs WHERE expires_at < $1", now)
            await c.execute(
                "INSERT INTO call_legs (leg_id, call_id, metadata, expires_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (leg_id) DO UPDATE SET"
                " call_id = excluded.call_id, metadata = excluded.metadata,"
                " expires_at = excluded.expires_at",
                leg_id, call_id, dump_json(dict(metadata)), expires_at)

        await self._with(register, tx=True)

    async def get_leg(self, leg_id: str, now: float) -> tuple[str, dict[str, str]] | None:
        """``(call id, metadata)`` of an unexpired leg, or None."""
        row = await self._with(lambda c: c.fetchrow(
            "SELECT call_id, metadata FROM call_legs WHERE leg_id = $1 AND expires_at >= $2",
            leg_id, now))
        return None if row is None else (str(row[0]), dict(json.loads(row[1])))

    async def amend_leg(self, leg_id: str, metadata: dict[str, str]) -> bool:
        """Merge ``metadata`` into the leg's (one statement: jsonb concatenation)."""
        status = await self._with(lambda c: c.execute(
            "UPDATE call_legs SET metadata = (metadata::jsonb || $2::jsonb)::text"
            " WHERE leg_id = $1", leg_id, dump_json(dict(metadata))))
        return str(status).endswith(" 1")

    async def discard_leg(self, leg_id: str) -> None:
        """Forget ``leg_id``."""
        await self._with(lambda c: c.execute("DELETE FROM call_legs WHERE leg_id = $1", leg_id))

    # -------------------------------------------------------------------- rollout

    async def rollout_rules(self) -> list[RolloutRule]:
        """Every rollout rule, global first."""
        rows = await self._with(lambda c: c.fetch(
            "SELECT scope, target, percent, updated_at, tenant, note FROM rollout_rules"
            " ORDER BY CASE scope WHEN 'global' THEN 0 WHEN 'tenant' THEN 1 ELSE 2 END,"
            " target"))
        return [RolloutRule(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    async def change_rollout(self, upserts: list[RolloutRule],
                             deletes: list[tuple[str, str]]) -> None:
        """Upserts and deletes in one transaction."""
        for rule in upserts:
            if rule.scope not in ("global", "tenant", "did") or not 0 <= rule.percent <= 100:
                raise ValueError(f"bad rollout rule {rule!r}")

        async def change(conn: asyncpg.Connection) -> None:
            for scope, target in deletes:
                await conn.execute("DELETE FROM rollout_rules WHERE scope = $1 AND target = $2",
                                   scope, target)
            for r in upserts:
                await conn.execute(
                    "INSERT INTO rollout_rules (scope, target, percent, tenant, updated_at, note)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, target) DO UPDATE SET"
                    " percent = excluded.percent, tenant = excluded.tenant,"
                    " updated_at = excluded.updated_at, note = excluded.note",
                    r.scope, r.target, r.percent, r.tenant, float(r.updated_at), r.note)

        await self._with(change, tx=True)

    async def log_rollout(self, at: float, tenant: str, did: str, path: str, kind: str,
                          reason: str = "") -> None:
        """Append a decision or failure; prune entries older than two days."""

        async def log(conn: asyncpg.Connection) -> None:
            seq = await conn.fetchval(
                "INSERT INTO rollout_log (at, tenant, did, path, kind, reason)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                float(at), tenant, did, path, kind, reason)
            if int(seq) % 1000 == 0:
                await conn.execute("DELETE FROM rollout_log WHERE at < $1", at - 2 * 86400)

        await self._with(log)

    async def rollout_stats(self, since: float) -> list[RolloutStat]:
        """Per (tenant, DID, path): decisions and failures since ``since``."""
        rows = await self._with(lambda c: c.fetch(
            "SELECT tenant, did, path, SUM(CASE WHEN kind = 'call' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN kind = 'failure' THEN 1 ELSE 0 END)"
            " FROM rollout_log WHERE at >= $1 GROUP BY tenant, did, path"
            " ORDER BY tenant, did, path", float(since)))
        return [RolloutStat(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    # ----------------------------------------------------------------- node leases

    async def node_heartbeat(self, node_id: str, lease_s: float) -> None:
        """Register or renew ``node_id``'s lease, by the database's clock (no skew
        between nodes). A node restarted under the same id is live again."""
        await self._with(lambda c: c.execute(
            "INSERT INTO nodes (node_id, started_at, heartbeat_at, lease_s, stopped)"
            " VALUES ($1, extract(epoch FROM clock_timestamp()),"
            " extract(epoch FROM clock_timestamp()), $2, 0)"
            " ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
            " lease_s = excluded.lease_s, stopped = 0", node_id, float(lease_s)))

    async def node_stopped(self, node_id: str) -> None:
        """A clean stop: the node's lease ends now (nobody takes it over)."""
        await self._with(lambda c: c.execute(
            "UPDATE nodes SET stopped = 1 WHERE node_id = $1", node_id))

    async def claim_expired_nodes(self, survivor: str) -> list[str]:
        """Nodes whose lease ran out, each claimed by exactly one survivor (this call
        marks them stopped atomically: another survivor's claim returns nothing)."""
        rows = await self._with(lambda c: c.fetch(
            "UPDATE nodes SET stopped = 1 WHERE stopped = 0 AND node_id <> $1"
            " AND heartbeat_at + lease_s < extract(epoch FROM clock_timestamp())"
            " RETURNING node_id", survivor))
        return sorted(r[0] for r in rows)

    async def live_nodes(self) -> list[str]:
        """Nodes holding an unexpired lease."""
        rows = await self._with(lambda c: c.fetch(
            "SELECT node_id FROM nodes WHERE stopped = 0"
            " AND heartbeat_at + lease_s >= extract(epoch FROM clock_timestamp())"
            " ORDER BY node_id"))
        return [r[0] for r in rows]

    async def release_node_slots(self, node_id: str) -> int:
        """Release the slots ``node_id`` still holds but no live call needs (after its
        calls were closed or adopted: acquires whose call was never created)."""
        status = await self._with(lambda c: c.execute(
            "UPDATE call_slots SET released = 1 WHERE node_id = $1 AND released = 0"
            " AND call_id NOT IN (SELECT id FROM calls WHERE status = ANY($2::text[]))",
            node_id, _ACTIVE_VALUES))
        return int(str(status).rsplit(" ", 1)[-1])
