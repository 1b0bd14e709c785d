"""Schema 3: idempotency keys of POST /v1/calls and the rollout rules and log."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audiosocket_gw.store import SqliteCallStore
from audiosocket_gw.store.base import RolloutRule, RolloutStat
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from tests.pgtest import temp_database

T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres"])
async def s(request: pytest.FixtureRequest,
            tmp_path: Path) -> AsyncIterator[SqliteCallStore | PostgresCallStore]:
    if request.param == "sqlite":
        async with SqliteCallStore(tmp_path / "s.db") as store:
            yield store
    else:
        async with temp_database() as url, PostgresCallStore(url) as pg:
            yield pg


async def test_an_idempotency_key_is_claimed_once(
        s: SqliteCallStore | PostgresCallStore) -> None:
    assert await s.claim_idempotency_key("acme", "k", T0, DAY) == (True, None)
    assert await s.claim_idempotency_key("acme", "k", T0 + 1, DAY) == (False, None)
    assert await s.claim_idempotency_key("beta", "k", T0 + 1, DAY) == (True, None)
    await s.complete_idempotency_key("acme", "k", "call-1")
    assert await s.claim_idempotency_key("acme", "k", T0 + 2, DAY) == (False, "call-1")
    await s.release_idempotency_key("acme", "k")  # a completed key is kept
    assert await s.claim_idempotency_key("acme", "k", T0 + 3, DAY) == (False, "call-1")
    # an abandoned claim frees after pending_ttl_s; a released one at once
    assert await s.claim_idempotency_key("beta", "k", T0 + 30, DAY) == (False, None)
    assert await s.claim_idempotency_key("beta", "k", T0 + 62, DAY) == (True, None)
    await s.release_idempotency_key("beta", "k")
    assert await s.claim_idempotency_key("beta", "k", T0 + 63, DAY) == (True, None)
    # a day later the key is free again
    assert await s.claim_idempotency_key("acme", "k", T0 + DAY + 1, DAY) == (True, None)


async def test_rollout_rules_and_stats(s: SqliteCallStore | PostgresCallStore) -> None:
    await s.change_rollout([RolloutRule("did", "+15551230000", 100, T0, "acme"),
                            RolloutRule("tenant", "acme", 50, T0),
                            RolloutRule("global", "", 25, T0, note="step 1")], [])
    assert [r.scope for r in await s.rollout_rules()] == ["global", "tenant", "did"]
    await s.change_rollout([RolloutRule("global", "", 0, T0 + 1)],
                           [("tenant", "acme"), ("did", "+15551230000")])
    assert await s.rollout_rules() == [RolloutRule("global", "", 0, T0 + 1)]
    with pytest.raises(ValueError):
        await s.change_rollout([RolloutRule("global", "", 101, T0)], [])
    for i in range(5):
        await s.log_rollout(T0 + i, "acme", "+1555", "asterisk" if i < 2 else "twilio",
                            "call", "rollout")
    await s.log_rollout(T0 + 5, "acme", "+1555", "asterisk", "failure", "dial_failed")
    assert await s.rollout_stats(T0 + 1) == [
        RolloutStat("acme", "+1555", "asterisk", 1, 1),
        RolloutStat("acme", "+1555", "twilio", 3, 0)]


async def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.commit()
    conn.close()
    async with SqliteCallStore(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION == 5
        assert await s.claim_idempotency_key("acme", "k", T0, DAY) == (True, None)
