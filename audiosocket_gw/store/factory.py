"""Build the one call store of a gateway process from its settings.

``AIGW_DATABASE_URL`` set: ``PostgresCallStore`` (shared by every node and worker);
unset: the embedded ``SqliteCallStore`` under ``AIGW_DATA_DIR``. asyncpg is imported
only when a PostgreSQL store connects. The recordings queue follows the store: in the
same PostgreSQL database (on the store's pool), else ``recordings.sqlite``.
"""

from __future__ import annotations

from pathlib import Path

from ..recordings.queue import RecordingJobs, SqliteRecordingQueue
from .base import CallStore
from .sqlite import SqliteCallStore

__all__ = ["build_recording_queue", "build_store"]


def build_store(database_url: str, data_path: Path, *, node_id: str = "",
                pool_max: int = 10) -> CallStore:
    """The store ``database_url`` names, or the SQLite file in ``data_path``."""
    if database_url:
        from .postgres import PostgresCallStore

        return PostgresCallStore(database_url, node_id=node_id, pool_max=pool_max)
    return SqliteCallStore(data_path / "aigw.sqlite")


def build_recording_queue(store: CallStore | None, data_path: Path, *,
                          node_id: str = "") -> RecordingJobs:
    """The recordings queue beside ``store``: shared in PostgreSQL, else the SQLite file
    ``recordings.sqlite`` in ``data_path`` (one process)."""
    from .postgres import PostgresCallStore

    if isinstance(store, PostgresCallStore):
        from .pg_recordings import PostgresRecordingQueue

        return PostgresRecordingQueue(store, node_id or store.node_id)
    return SqliteRecordingQueue(data_path / "recordings.sqlite", node_id=node_id)
