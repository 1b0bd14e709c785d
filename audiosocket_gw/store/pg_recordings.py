"""The recordings queue (``recordings.queue.RecordingJobs``) in the shared PostgreSQL store.

Tables ``recordings`` and ``transcripts`` come with the call store's migrations
(``postgres.MIGRATIONS`` 4) and use its bounded pool and timeouts, so a gateway holds
one pool. Every node shares the queue; what keeps an upload to exactly one node:

- each row carries ``node_id``, the node whose disk holds the file; ``claim_upload``
  takes only this node's rows, one ``UPDATE ... WHERE call_id = (SELECT ... FOR UPDATE
  SKIP LOCKED) RETURNING`` (two workers of one node never take the same row either);
- every later state change is guarded by ``node_id = <this node>``: a node that was
  frozen past its lease and whose rows a survivor adopted writes nothing over them;
- ``orphans`` are rows of nodes with no live lease (the ``nodes`` table of
  ``cluster.py``, by the database's clock); ``adopt`` and ``strand`` are compare-and-set
  on (owner, state) and recheck that the owner still has no live lease (a node that
  restarted under the same id since ``orphans`` keeps its row): of several survivors,
  one moves the row.

Times are the caller's epoch floats, as in the SQLite queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..recordings.queue import (
    REC_COLUMNS,
    TAKEOVER_STATES,
    TR_COLUMNS,
    JobState,
    RecordingRow,
    RecState,
    TranscriptRow,
    recording_from_row,
    transcript_from_row,
    update_columns,
)

if TYPE_CHECKING:
    import asyncpg

    from .postgres import PostgresCallStore

__all__ = ["PostgresRecordingQueue"]

_REC_SELECT = ", ".join(REC_COLUMNS)
_TR_SELECT = ", ".join(TR_COLUMNS)
_TAKEOVER = list(TAKEOVER_STATES)
_NOT_LIVE = ("NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.node_id AND n.stopped = 0"
             " AND n.heartbeat_at + n.lease_s >= extract(epoch FROM clock_timestamp()))")


def _count(status: str) -> int:
    return int(str(status).rsplit(" ", 1)[-1])


class PostgresRecordingQueue:
    """``RecordingJobs`` on ``store``'s pool, as node ``node_id``."""

    def __init__(self, store: PostgresCallStore, node_id: str) -> None:
        if not node_id:
            raise ValueError("a shared recordings queue needs the node id")
        self.store = store
        self.node_id = node_id

    @property
    def shared(self) -> bool:
        return True

    async def open(self) -> None:
        """Nothing of its own: the call store (opened first) holds the pool and schema."""

    async def close(self) -> None:
        """The pool is the call store's, closed with it."""

    async def recover(self) -> tuple[int, int]:
        async def fix(c: asyncpg.Connection) -> tuple[int, int]:
            a = await c.execute(
                "UPDATE recordings SET state = 'pending', next_attempt_at = 0"
                " WHERE node_id = $1 AND state IN ('uploading', 'uploaded', 'stranded')",
                self.node_id)
            b = await c.execute(
                "UPDATE transcripts SET state = 'pending', next_attempt_at = 0"
                " WHERE state = 'running'"
                " AND call_id IN (SELECT call_id FROM recordings WHERE node_id = $1)",
                self.node_id)
            return _count(a), _count(b)

        return await self.store._with(fix, tx=True)

    async def add(self, row: RecordingRow) -> bool:
        values = [self.node_id if c == "node_id" else getattr(row, c) for c in REC_COLUMNS]
        marks = ", ".join(f"${i}" for i in range(1, len(REC_COLUMNS) + 1))
        status = await self.store._with(lambda c: c.execute(
            f"INSERT INTO recordings ({_REC_SELECT}) VALUES ({marks})"
            " ON CONFLICT (call_id) DO NOTHING", *values))
        return _count(status) == 1

    async def get(self, call_id: str) -> RecordingRow | None:
        return recording_from_row(await self.store._with(lambda c: c.fetchrow(
            f"SELECT {_REC_SELECT} FROM recordings WHERE call_id = $1"
            " AND state <> 'erasing'", call_id)))

    async def all(self) -> list[RecordingRow]:
        rows = await self.store._with(lambda c: c.fetch(
            f"SELECT {_REC_SELECT} FROM recordings ORDER BY captured_at, call_id"))
        return [RecordingRow(*tuple(r)) for r in rows]

    async def page(self, *, tenant: str | None = None, call_id: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[RecordingRow]:
        where: list[str] = ["state <> 'erasing'"]
        args: list[Any] = []
        for column, value in (("tenant", tenant), ("call_id", call_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        sql = f"SELECT {_REC_SELECT} FROM recordings WHERE " + " AND ".join(where)
        args += [max(0, int(limit)), max(0, int(offset))]
        sql += f" ORDER BY captured_at DESC, call_id LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        rows = await self.store._with(lambda c: c.fetch(sql, *args))
        return [RecordingRow(*tuple(r)) for r in rows]

    async def remove(self, call_id: str) -> bool:
        async def delete(c: asyncpg.Connection) -> bool:
            await c.execute("DELETE FROM transcripts WHERE call_id = $1", call_id)
            return _count(await c.execute(
                "DELETE FROM recordings WHERE call_id = $1", call_id)) > 0

        return await self.store._with(delete, tx=True)

    async def claim_upload(self, now: float) -> RecordingRow | None:
        return recording_from_row(await self.store._with(lambda c: c.fetchrow(
            "UPDATE recordings SET state = 'uploading', attempts = attempts + 1"
            " WHERE call_id = (SELECT call_id FROM recordings WHERE node_id = $1"
            " AND state = 'pending' AND next_attempt_at <= $2"
            " ORDER BY next_attempt_at, captured_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" AND state = 'pending' RETURNING {_REC_SELECT}", self.node_id, now)))

    async def next_due(self) -> float | None:
        v = await self.store._with(lambda c: c.fetchval(
            "SELECT MIN(next_attempt_at) FROM recordings WHERE node_id = $1"
            " AND state = 'pending'", self.node_id))
        return None if v is None else float(v)

    async def set_state(self, call_id: str, state: RecState, **values: Any) -> bool:
        cols = update_columns("recording", values)
        sets = ["state = $1", *(f"{name} = ${i}" for i, (name, _) in enumerate(cols, 2))]
        args: list[Any] = [state.value, *(v for _, v in cols), call_id, self.node_id]
        status = await self.store._with(lambda c: c.execute(
            f"UPDATE recordings SET {', '.join(sets)} WHERE call_id = ${len(args) - 1}"
            f" AND node_id = ${len(args)} AND state <> 'erasing'", *args))
        return _count(status) > 0

    async def due_for_deletion(self, now: float, retention_s: float) -> list[RecordingRow]:
        cols = ", ".join("r." + c for c in REC_COLUMNS)
        rows = await self.store._with(lambda c: c.fetch(
            f"SELECT {cols} FROM recordings r LEFT JOIN transcripts t ON t.call_id = r.call_id"
            " WHERE r.node_id = $1 AND r.state = 'verified' AND r.verified_at + $2 <= $3"
            " AND (t.state IS NULL OR t.state IN ('done', 'failed'))",
            self.node_id, retention_s, now))
        return [RecordingRow(*tuple(r)) for r in rows]

    async def depth(self) -> tuple[int, int]:
        async def count(c: asyncpg.Connection) -> tuple[int, int]:
            up = await c.fetchval(
                "SELECT COUNT(*) FROM recordings WHERE node_id = $1"
                " AND state IN ('pending', 'uploading', 'uploaded')", self.node_id)
            jobs = await c.fetchval(
                "SELECT COUNT(*) FROM transcripts t JOIN recordings r USING (call_id)"
                " WHERE r.node_id = $1 AND t.state IN ('pending', 'running')", self.node_id)
            return int(up), int(jobs)

        return await self.store._with(count)

    async def add_job(self, call_id: str, now: float) -> bool:
        status = await self.store._with(lambda c: c.execute(
            "INSERT INTO transcripts (call_id, state, attempts, next_attempt_at, created_at)"
            " VALUES ($1, 'pending', 0, $2, $2) ON CONFLICT (call_id) DO NOTHING",
            call_id, now))
        return _count(status) == 1

    async def get_job(self, call_id: str) -> TranscriptRow | None:
        return transcript_from_row(await self.store._with(lambda c: c.fetchrow(
            f"SELECT {_TR_SELECT} FROM transcripts WHERE call_id = $1", call_id)))

    async def claim_job(self, now: float) -> TranscriptRow | None:
        """This node's due job (the transcriber reads the recording's local file)."""
        return transcript_from_row(await self.store._with(lambda c: c.fetchrow(
            "UPDATE transcripts SET state = 'running', attempts = attempts + 1"
            " WHERE call_id = (SELECT t.call_id FROM transcripts t JOIN recordings r"
            " USING (call_id) WHERE r.node_id = $1 AND t.state = 'pending'"
            " AND t.next_attempt_at <= $2 ORDER BY t.next_attempt_at LIMIT 1"
            " FOR UPDATE OF t SKIP LOCKED)"
            f" AND state = 'pending' RETURNING {_TR_SELECT}", self.node_id, now)))

    async def next_job_due(self) -> float | None:
        v = await self.store._with(lambda c: c.fetchval(
            "SELECT MIN(t.next_attempt_at) FROM transcripts t JOIN recordings r"
            " USING (call_id) WHERE r.node_id = $1 AND t.state = 'pending'", self.node_id))
        return None if v is None else float(v)

    async def set_job(self, call_id: str, state: JobState, **values: Any) -> None:
        cols = update_columns("transcript", values)
        sets = ["state = $1", *(f"{name} = ${i}" for i, (name, _) in enumerate(cols, 2))]
        args: list[Any] = [state.value, *(v for _, v in cols), call_id]
        await self.store._with(lambda c: c.execute(
            f"UPDATE transcripts SET {', '.join(sets)} WHERE call_id = ${len(args)}", *args))

    async def orphans(self, limit: int = 100) -> list[RecordingRow]:
        cols = ", ".join("r." + c for c in REC_COLUMNS)
        rows = await self.store._with(lambda c: c.fetch(
            f"SELECT {cols} FROM recordings r WHERE r.state = ANY($1::text[])"
            f" AND r.node_id <> $2 AND {_NOT_LIVE}"
            " ORDER BY (r.state = 'stranded'), r.captured_at LIMIT $3",
            _TAKEOVER, self.node_id, max(1, int(limit))))
        return [RecordingRow(*tuple(r)) for r in rows]

    async def adopt(self, row: RecordingRow, now: float) -> bool:
        async def take(c: asyncpg.Connection) -> bool:
            status = await c.execute(
                "UPDATE recordings r SET node_id = $1, next_attempt_at = $2, last_error = $3,"
                " state = CASE WHEN r.state = 'verified' THEN 'verified' ELSE 'pending' END"
                " WHERE r.call_id = $4 AND r.node_id = $5 AND r.state = $6"
                f" AND {_NOT_LIVE}",
                self.node_id, now, f"node {row.node_id} lost: taken over by {self.node_id}",
                row.call_id, row.node_id, row.state)
            if _count(status) != 1:
                return False
            await c.execute(  # the lost node's attempt did not finish (as in recover)
                "UPDATE transcripts SET state = 'pending', next_attempt_at = $2"
                " WHERE call_id = $1 AND state = 'running'", row.call_id, now)
            return True

        return await self.store._with(take, tx=True)

    async def strand(self, row: RecordingRow, reason: str) -> bool:
        if row.state == RecState.STRANDED.value:
            return False

        async def move(c: asyncpg.Connection) -> bool:
            status = await c.execute(
                "UPDATE recordings r SET last_error = $1,"
                " state = CASE WHEN r.state = 'verified' THEN 'deleted' ELSE 'stranded' END"
                f" WHERE r.call_id = $2 AND r.node_id = $3 AND r.state = $4 AND {_NOT_LIVE}",
                reason[:500], row.call_id, row.node_id, row.state)
            if _count(status) != 1:
                return False
            if row.state == RecState.VERIFIED.value:  # its file is not readable here
                await c.execute(
                    "UPDATE transcripts SET state = 'failed', last_error = $2"
                    " WHERE call_id = $1 AND state IN ('pending', 'running')",
                    row.call_id, reason[:500])
            return True

        return await self.store._with(move, tx=True)

    async def request_erase(self, call_id: str) -> bool:
        async def mark(c: asyncpg.Connection) -> bool:
            status = await c.execute(
                "UPDATE recordings SET state = 'erasing' WHERE call_id = $1"
                " AND state <> 'erasing'", call_id)
            if _count(status) != 1:
                return False
            await c.execute("DELETE FROM transcripts WHERE call_id = $1", call_id)
            return True

        return await self.store._with(mark, tx=True)

    async def to_erase(self) -> list[RecordingRow]:
        cols = ", ".join("r." + c for c in REC_COLUMNS)
        rows = await self.store._with(lambda c: c.fetch(
            f"SELECT {cols} FROM recordings r WHERE r.state = 'erasing'"
            f" AND (r.node_id = $1 OR {_NOT_LIVE}) ORDER BY r.captured_at", self.node_id))
        return [RecordingRow(*tuple(r)) for r in rows]
