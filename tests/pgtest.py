"""A throwaway PostgreSQL database per test (PostgreSQL on 127.0.0.1:5432, trust auth).

``AIGW_TEST_PG_URL`` overrides the server (a URL of an existing database to connect to
for CREATE/DROP DATABASE). No PostgreSQL is an error, not a skip: ``.ci/run`` starts it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

ADMIN_URL = os.environ.get("AIGW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _url(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@asynccontextmanager
async def temp_database() -> AsyncIterator[str]:
    """Create a database with a unique name; yield its URL; drop it (connections too)."""
    import asyncpg

    name = f"aigw_test_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _url(name)
    finally:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
