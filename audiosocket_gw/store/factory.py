"""Build the one call store of a gateway process from its settings.

``AIGW_DATABASE_URL`` set: ``PostgresCallStore`` (shared by every node and worker);
unset: the embedded ``SqliteCallStore`` under ``AIGW_DATA_DIR``. The PostgreSQL module
(and asyncpg) is imported only when selected.
"""

from __future__ import annotations

from pathlib import Path

from .base import CallStore
from .sqlite import SqliteCallStore

__all__ = ["build_store"]


def build_store(database_url: str, data_path: Path, *, node_id: str = "",
                pool_max: int = 10) -> CallStore:
    """The store ``database_url`` names, or the SQLite file in ``data_path``."""
    if database_url:
        from .postgres import PostgresCallStore

        return PostgresCallStore(database_url, node_id=node_id, pool_max=pool_max)
    return SqliteCallStore(data_path / "aigw.sqlite")
