"""The CallStore contract against both backends (a real SQLite file, a real PostgreSQL
database): CRUD, state machine, limiter; plus SQLite's own pragmas and crash safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audiosocket_gw.callstate import CallInput, CallStatus
from audiosocket_gw.store import (
    CallRecord,
    CallStore,
    DuplicateCall,
    SqliteCallStore,
    StoreError,
    UnknownCall,
)
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.store.sqlite import SCHEMA_VERSION
from tests.helpers import MS
from tests.pgtest import temp_database

AnyStore = SqliteCallStore | PostgresCallStore

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def rec(call_id: str, *, tenant: str = "acme", at: float = T0, **kw: object) -> CallRecord:
    base: dict[str, object] = {
        "id": call_id,
        "tenant": tenant,
        "agent": "support",
        "direction": "inbound",
        "from_": "+15550001111",
        "to": "+15551230000",
        "created_at": at,
    }
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnyStore]:
    if request.param == "sqlite":
        async with SqliteCallStore(tmp_path / "calls.db") as s:
            yield s
    else:
        async with temp_database() as url, PostgresCallStore(url) as p:
            yield p


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteCallStore]:
    async with SqliteCallStore(tmp_path / "calls.db") as s:
        yield s


async def test_is_a_call_store(store: AnyStore) -> None:
    assert isinstance(store, CallStore)


async def test_pragmas_and_schema(sqlite_store: SqliteCallStore, tmp_path: Path) -> None:
    store = sqlite_store
    assert await store.pragma("journal_mode") == "wal"
    assert await store.pragma("synchronous") == 1  # NORMAL
    assert await store.pragma("foreign_keys") == 1
    assert await store.pragma("busy_timeout") == 10_000
    assert await store.schema_version() == SCHEMA_VERSION
    with pytest.raises(ValueError):
        await store.pragma("journal_mode; DROP TABLE calls")
    # WAL is persistent: visible from an independent connection too.
    conn = sqlite3.connect(tmp_path / "calls.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_worker_is_one_dedicated_thread(sqlite_store: SqliteCallStore) -> None:
    store = sqlite_store
    names = set()
    for _ in range(5):
        names.add(await store._run(lambda: threading.current_thread().name))
    assert len(names) == 1
    assert names.pop().startswith("aigw-sqlite")
    assert threading.current_thread().name not in names


async def test_reopen_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calls.db"
    async with SqliteCallStore(path) as s:
        await s.create_call(rec("c1"))
    async with SqliteCallStore(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION
        got = await s.get_call("c1")
        assert got is not None and got.id == "c1"


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    async with SqliteCallStore(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    s = SqliteCallStore(path)
    with pytest.raises(StoreError, match="newer"):
        await s.open()
    await s.close()  # nothing open: no-op


async def test_not_open() -> None:
    s = SqliteCallStore(":memory:")
    with pytest.raises(StoreError, match="not open"):
        await s.get_call("x")
    await s.close()


async def test_crud(store: AnyStore) -> None:
    call = rec("c1", metadata={"campaign": "x", "n": [1, 2]}, direction="outbound")
    await store.create_call(call)
    assert await store.get_call("c1") == call
    assert await store.get_call("nope") is None
    with pytest.raises(DuplicateCall):
        await store.create_call(rec("c1"))

    updated = await store.update_call(
        "c1",
        answered_by="human",
        recording_ref="s3://b/c1.wav",
        transcript_ref="t/c1.json",
        metadata={"campaign": "y"},
        mos_in_min=3.9,
        mos_in_mean=4.2,
        mos_out_min=4,
        mos_out_mean=None,
        hangup_reason="bot said bye",
    )
    assert updated is not None
    assert updated.answered_by == "human"
    assert updated.recording_ref == "s3://b/c1.wav"
    assert updated.metadata == {"campaign": "y"}
    assert updated.mos_in_min == 3.9 and updated.mos_out_min == 4.0
    assert await store.get_call("c1") == updated
    assert await store.update_call("nope", answered_by="human") is None
    assert await store.update_call("c1") == updated

    with pytest.raises(TypeError, match="not an updatable field"):
        await store.update_call("c1", status="completed")
    with pytest.raises(TypeError, match="not an updatable field"):
        await store.update_call("c1", ended_at=1.0)
    with pytest.raises(TypeError, match="must be"):
        await store.update_call("c1", hangup_cause="16")
    with pytest.raises(TypeError, match="must be"):
        await store.update_call("c1", hangup_cause=True)
    with pytest.raises(ValueError):
        await store.create_call(rec("bad", direction="sideways"))


async def test_list_calls_filters_and_order(store: AnyStore) -> None:
    for i in range(5):
        await store.create_call(rec(f"a{i}", tenant="acme", at=T0 + i))
    for i in range(3):
        await store.create_call(rec(f"b{i}", tenant="beta", at=T0 + 10 + i))
    await store.apply_input("a1", CallInput.ANSWERED, T0 + 20)
    await store.apply_input("b0", CallInput.ANSWERED, T0 + 20)

    all_ = await store.list_calls()
    assert [c.id for c in all_] == ["b2", "b1", "b0", "a4", "a3", "a2", "a1", "a0"]
    assert [c.id for c in await store.list_calls(tenant="acme", limit=2)] == ["a4", "a3"]
    in_progress = await store.list_calls(status=CallStatus.IN_PROGRESS)
    assert {c.id for c in in_progress} == {"a1", "b0"}
    assert [c.id for c in await store.list_calls(status=CallStatus.IN_PROGRESS, tenant="beta")] == [
        "b0"
    ]
    assert await store.list_calls(limit=0) == []


async def test_inbound_answered_then_completed(store: AnyStore) -> None:
    await store.create_call(rec("c1"))
    r = await store.apply_input("c1", CallInput.ROUTED_INBOUND, T0 + 0.1, {"did": "+15551230000"})
    assert r is not None and r.status is CallStatus.RINGING and r.answered_at is None
    r = await store.apply_input("c1", CallInput.ANSWERED, T0 + 2.0, {"source": "audiosocket"})
    assert r is not None and r.status is CallStatus.IN_PROGRESS and r.answered_at == T0 + 2.0
    r = await store.apply_input("c1", CallInput.AUDIOSOCKET_EOF, T0 + 62.5)
    assert r is not None and r.status is CallStatus.COMPLETED
    assert r.ended_at == T0 + 62.5
    assert r.duration_s == pytest.approx(62.5)
    assert r.billable_s == 61.0  # ceil(60.5)
    assert r.hangup_cause is None
    # The AMI Hangup arrives after the EOF: absorbed, but its cause is recorded.
    r2 = await store.apply_input("c1", CallInput.HANGUP, T0 + 62.6, {"cause": 0})
    assert r2 is not None
    assert r2.status is CallStatus.COMPLETED and r2.ended_at == T0 + 62.5
    assert r2.hangup_cause == 0 and r2.hangup_reason is not None
    assert "not a failure" in r2.hangup_reason
    # A third end changes nothing, not even the cause.
    r3 = await store.apply_input("c1", CallInput.HANGUP, T0 + 70, {"cause": 16})
    assert r3 == r2
    assert await store.get_call("c1") == r2

    evs = await store.events("c1")
    assert [e.kind for e in evs] == ["input"] * 5
    assert [e.data["input"] for e in evs] == [
        "routed_inbound",
        "answered",
        "audiosocket_eof",
        "hangup",
        "hangup",
    ]
    assert [e.data["changed"] for e in evs] == [True, True, True, False, False]
    assert evs[0].data["from"] == "queued" and evs[0].data["to"] == "ringing"
    assert evs[0].data["detail"] == {"did": "+15551230000"}
    assert [e.at for e in evs] == [T0 + 0.1, T0 + 2.0, T0 + 62.5, T0 + 62.6, T0 + 70]
    assert all(e.call_id == "c1" for e in evs)
    assert [e.seq for e in evs] == sorted(e.seq for e in evs)


@pytest.mark.parametrize(
    ("inputs", "status", "cause", "reason_part"),
    [
        ([(CallInput.ORIGINATE_FAILED_BUSY, {"reason": 5})], CallStatus.BUSY, None, None),
        ([(CallInput.HANGUP, {"cause": 17})], CallStatus.BUSY, 17, "busy"),
        ([(CallInput.ORIGINATE_NO_ANSWER, {})], CallStatus.NO_ANSWER, None, None),
        (
            [(CallInput.HANGUP, {"cause": 19, "reason": "ring timeout"})],
            CallStatus.NO_ANSWER,
            19,
            "ring timeout",
        ),
        (
            [(CallInput.ORIGINATE_FAILED, {}), (CallInput.HANGUP, {"cause": 34})],
            CallStatus.FAILED,
            34,
            "congestion",
        ),
        ([(CallInput.CANCELED, {})], CallStatus.CANCELED, None, None),
    ],
)
async def test_outbound_failures(
    store: AnyStore,
    inputs: list[tuple[CallInput, dict[str, object]]],
    status: CallStatus,
    cause: int | None,
    reason_part: str | None,
) -> None:
    await store.create_call(rec("o1", direction="outbound"))
    assert await store.try_acquire_slot("acme", "o1", 5)
    await store.apply_input("o1", CallInput.ORIGINATE_QUEUED, T0)
    await store.apply_input("o1", CallInput.RINGING, T0 + 1)
    r = None
    for n, (inp, detail) in enumerate(inputs):
        r = await store.apply_input("o1", inp, T0 + 30 + n, detail)
    assert r is not None
    assert r.status is status
    assert r.answered_at is None and r.billable_s == 0.0
    assert r.ended_at == T0 + 30 and r.duration_s == 30.0
    assert r.hangup_cause == cause
    if reason_part is None:
        assert r.hangup_reason is None
    else:
        assert r.hangup_reason is not None and reason_part in r.hangup_reason.lower()
    # Ending the call released its slot, atomically with the status change.
    assert await store.active_slots("acme") == 0
    assert await store.active_calls() == []


async def test_outbound_answered(store: AnyStore) -> None:
    await store.create_call(rec("o1", direction="outbound"))
    await store.apply_input("o1", CallInput.ORIGINATE_QUEUED, T0)
    r = await store.apply_input("o1", CallInput.ANSWERED, T0 + 5, {"reason": 4})
    assert r is not None and r.status is CallStatus.IN_PROGRESS and r.answered_at == T0 + 5
    # Newstate Up after OriginateResponse: absorbed, answered_at kept.
    r = await store.apply_input("o1", CallInput.ANSWERED, T0 + 6)
    assert r is not None and r.answered_at == T0 + 5
    r = await store.apply_input("o1", CallInput.GATEWAY_HANGUP, T0 + 15, {"reason": "bot ended"})
    assert r is not None and r.status is CallStatus.COMPLETED
    assert r.billable_s == 10.0 and r.hangup_reason == "bot ended"


async def test_vanished_at_resync(store: AnyStore) -> None:
    await store.create_call(rec("up"))
    await store.create_call(rec("ring", at=T0 + 1))
    await store.create_call(rec("done", at=T0 + 2))
    await store.apply_input("up", CallInput.ANSWERED, T0 + 1)
    await store.apply_input("ring", CallInput.RINGING, T0 + 1)
    await store.apply_input("done", CallInput.ANSWERED, T0 + 3)
    await store.apply_input("done", CallInput.HANGUP, T0 + 4, {"cause": 16})
    active = await store.active_calls()
    assert [c.id for c in active] == ["up", "ring"]
    for c in active:
        await store.apply_input(c.id, CallInput.VANISHED, T0 + 100, {"resync": True})
    up, ring = await store.get_call("up"), await store.get_call("ring")
    assert up is not None and up.status is CallStatus.COMPLETED
    assert ring is not None and ring.status is CallStatus.FAILED
    assert await store.active_calls() == []


async def test_apply_input_unknown_call(store: AnyStore) -> None:
    assert await store.apply_input("nope", CallInput.HANGUP, T0) is None
    assert await store.events("nope") == []


async def test_append_event(store: AnyStore) -> None:
    await store.create_call(rec("c1"))
    s1 = await store.append_event("c1", "dtmf", T0 + 1, {"digit": "5"})
    s2 = await store.append_event("c1", "talk_start", T0 + 2)
    assert s2 > s1
    evs = await store.events("c1")
    assert [(e.kind, e.at, e.data) for e in evs] == [
        ("dtmf", T0 + 1, {"digit": "5"}),
        ("talk_start", T0 + 2, {}),
    ]
    with pytest.raises(UnknownCall):
        await store.append_event("nope", "x", T0)
    with pytest.raises(TypeError):
        await store.append_event("c1", "x", T0, {"bad": object()})
    assert len(await store.events("c1")) == 2  # failed appends left nothing behind


async def test_limiter_200_concurrent_acquires(store: AnyStore) -> None:
    results = await asyncio.gather(
        *(store.try_acquire_slot("acme", f"c{i}", 10) for i in range(200))
    )
    assert sum(results) == 10
    assert await store.active_slots("acme") == 10
    assert await store.active_slots("beta") == 0
    # Other tenants are independent.
    assert await store.try_acquire_slot("beta", "b0", 10)
    winners = [f"c{i}" for i, ok in enumerate(results) if ok]
    # Re-acquiring a held slot is idempotent, not a second slot.
    assert await store.try_acquire_slot("acme", winners[0], 10)
    assert await store.active_slots("acme") == 10
    # Release, idempotently; the freed slot can be taken by someone else.
    assert await store.release_slot(winners[0]) is True
    assert await store.release_slot(winners[0]) is False
    assert await store.release_slot("never-held") is False
    assert await store.active_slots("acme") == 9
    again = await asyncio.gather(*(store.try_acquire_slot("acme", f"d{i}", 10) for i in range(50)))
    assert sum(again) == 1
    assert await store.active_slots("acme") == 10
    assert not await store.try_acquire_slot("acme", "x", 0)


async def test_limiter_across_independent_connections(tmp_path: Path) -> None:
    """Four stores (four connections, four threads) on one file: still exactly the limit."""
    path = tmp_path / "calls.db"
    stores = [SqliteCallStore(path) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(
            *(stores[i % 4].try_acquire_slot("acme", f"c{i}", 10) for i in range(200))
        )
        assert sum(results) == 10
        assert await stores[0].active_slots("acme") == 10
    finally:
        for s in stores:
            await s.close()


async def test_postgres_limiter_across_independent_pools() -> None:
    """Four stores (four pools, as four nodes would have) on one database: exactly the
    limit, then every freed slot is taken again exactly once."""
    async with temp_database() as url:
        stores = [PostgresCallStore(url, pool_max=5) for _ in range(4)]
        for s in stores:
            await s.open()
        try:
            results = await asyncio.gather(
                *(stores[i % 4].try_acquire_slot("acme", f"c{i}", 10) for i in range(200)))
            assert sum(results) == 10
            winners = [f"c{i}" for i, ok in enumerate(results) if ok]
            await asyncio.gather(*(stores[i % 4].release_slot(w) for i, w in enumerate(winners)))
            again = await asyncio.gather(
                *(stores[i % 4].try_acquire_slot("acme", f"d{i}", 10) for i in range(200)))
            assert sum(again) == 10
            assert await stores[3].active_slots("acme") == 10
        finally:
            for s in stores:
                await s.close()


async def test_postgres_schema_versions() -> None:
    from audiosocket_gw.store import postgres

    async with temp_database() as url:
        # Two nodes starting together migrate once.
        a, b = PostgresCallStore(url), PostgresCallStore(url)
        await asyncio.gather(a.open(), b.open())
        assert await a.schema_version() == postgres.SCHEMA_VERSION
        await b.close()
        await a._with(lambda c: c.execute("UPDATE schema_version SET version = 99"))
        await a.close()
        with pytest.raises(StoreError, match="newer"):
            await PostgresCallStore(url).open()
    with pytest.raises(StoreError, match="not open"):
        await PostgresCallStore(url).get_call("x")
    with pytest.raises(StoreError, match="cannot connect"):
        await PostgresCallStore("postgresql://postgres@127.0.0.1:1/x",
                                acquire_timeout_s=2).open()


async def test_reconcile_slots(store: AnyStore) -> None:
    for i in range(4):
        await store.create_call(rec(f"c{i}"))
        assert await store.try_acquire_slot("acme", f"c{i}", 10)
    assert await store.try_acquire_slot("acme", "orphan", 10)  # never created
    # c0 ended while its slot was (say) re-taken by a crashed process: simulate a
    # leaked slot by re-acquiring after the end.
    await store.apply_input("c0", CallInput.ANSWERED, T0 + 1)
    await store.apply_input("c0", CallInput.HANGUP, T0 + 2, {"cause": 16})
    assert await store.active_slots("acme") == 4
    assert await store.try_acquire_slot("acme", "c0", 10)  # leaked
    await store.apply_input("c1", CallInput.RINGING, T0 + 1)
    assert await store.active_slots("acme") == 5

    assert await store.reconcile_slots(release_orphans=False) == 1  # c0
    assert await store.active_slots("acme") == 4
    assert await store.reconcile_slots() == 1  # orphan
    assert await store.active_slots("acme") == 3  # c1, c2, c3 are still live
    assert await store.reconcile_slots() == 0
    # No leak: ending every live call frees every slot.
    for i in (1, 2, 3):
        await store.apply_input(f"c{i}", CallInput.HANGUP, T0 + 5, {"cause": 16})
    assert await store.active_slots("acme") == 0
    assert await store.reconcile_slots() == 0


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from audiosocket_gw.callstate import CallInput
    from audiosocket_gw.store import CallRecord, SqliteCallStore

    async def main():
        store = SqliteCallStore(sys.argv[1])
        await store.open()
        i = 0
        while True:
            cid = f"call-{i:06d}"
            await store.create_call(CallRecord(
                id=cid, tenant="acme", agent="a", direction="inbound",
                from_="+15550001111", to="+15551230000", created_at=float(i),
                metadata={"pad": "x" * 2000},
            ))
            await store.try_acquire_slot("acme", cid, 1_000_000)
            await store.apply_input(cid, CallInput.ANSWERED, i + 0.5)
            await store.append_event(cid, "note", i + 0.6, {"i": i})
            print(cid, flush=True)
            i += 1

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_crash_safety_sigkill_mid_writes(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    committed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while len(committed) < 150:
                line = await proc.stdout.readline()
                if not line:
                    err = await proc.stderr.read()
                    pytest.fail(f"child exited early: {err.decode()}")
                committed.append(line.decode().strip())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)  # while it is still writing
        await proc.wait()
        # Lines still in the pipe were printed after their commits too.
        committed += (await proc.stdout.read()).decode().split()
        await proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) == len(set(committed)) >= 150

    # The WAL is not checkpointed after a SIGKILL: the file must still be consistent.
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()

    async with SqliteCallStore(path) as s:
        for cid in committed:
            call = await s.get_call(cid)
            assert call is not None, cid
            assert call.status is CallStatus.IN_PROGRESS
            assert call.metadata == {"pad": "x" * 2000}
            kinds = [e.kind for e in await s.events(cid)]
            assert kinds == ["input", "note"], (cid, kinds)
        # Whatever the child did after its last report is all-or-nothing per
        # transaction: every stored call is readable and at most one step ahead.
        stored = await s.list_calls(limit=1_000_000)
        assert len(stored) >= len(committed)
        assert len(stored) <= len(committed) + 1
        assert await s.active_slots("acme") >= len(committed)
        # Still writable after the crash.
        await s.create_call(rec("after-crash"))
        assert await s.get_call("after-crash") is not None


@pytest.mark.parametrize("ami_first", [True, False])
@pytest.mark.parametrize("cause", [0, 16])
async def test_hangup_reason_does_not_depend_on_which_end_arrives_first(
        store: AnyStore, ami_first: bool, cause: int) -> None:
    """The callee's BYE reaches us twice (AMI Hangup with a cause, AudioSocket EOF with
    our reason); the record must say the same whatever the order (a real PBX gave
    'caller-hangup' in one run and the cause text in another)."""
    await store.create_call(rec("b1", direction="outbound"))
    await store.apply_input("b1", CallInput.ORIGINATE_QUEUED, T0)
    await store.apply_input("b1", CallInput.ANSWERED, T0 + 1)
    ami = (CallInput.HANGUP, {"source": "ami", "cause": cause})
    eof = (CallInput.AUDIOSOCKET_EOF, {"reason": "caller-hangup"})
    for inp, detail in ([ami, eof] if ami_first else [eof, ami]):
        r = await store.apply_input("b1", inp, T0 + 9, detail)
    assert r is not None and r.status is CallStatus.COMPLETED
    assert r.hangup_reason == "caller-hangup" and r.hangup_cause == cause


async def test_a_cause_alone_still_explains_the_end(store: AnyStore) -> None:
    await store.create_call(rec("b2", direction="outbound"))
    await store.apply_input("b2", CallInput.ORIGINATE_QUEUED, T0)
    r = await store.apply_input("b2", CallInput.HANGUP, T0 + 3, {"cause": 17})
    assert r is not None and r.status is CallStatus.BUSY and r.hangup_reason == "User busy"
    # a later explicit reason overrides the cause text, a second one does not
    r = await store.apply_input("b2", CallInput.GATEWAY_HANGUP, T0 + 4, {"reason": "api-hangup"})
    r = await store.apply_input("b2", CallInput.GATEWAY_HANGUP, T0 + 5, {"reason": "shutdown"})
    assert r is not None and r.hangup_reason == "api-hangup"


async def test_postgres_node_leases_are_claimed_once() -> None:
    async with temp_database() as url:
        a = PostgresCallStore(url, node_id="a")
        b = PostgresCallStore(url, node_id="b")
        c = PostgresCallStore(url, node_id="c")
        for s in (a, b, c):
            await s.open()
        try:
            lease = 1000 * MS  # longer than the round trips below on a loaded machine
            await a.node_heartbeat("a", lease)
            await b.node_heartbeat("b", 60)
            await c.node_heartbeat("c", 60)
            assert await b.live_nodes() == ["a", "b", "c"]
            # a admits three calls; one ends, one stays live (to be adopted), one
            # slot's call was never created.
            for cid in ("a1", "a2"):
                await a.create_call(rec(cid, node_id="a"))
                assert await a.try_acquire_slot("acme", cid, 10)
            assert await a.try_acquire_slot("acme", "a-orphan", 10)
            assert await b.claim_expired_nodes("b") == []  # a's lease still runs
            await asyncio.sleep(lease + 300 * MS)
            claims = await asyncio.gather(b.claim_expired_nodes("b"),
                                          c.claim_expired_nodes("c"))
            assert sorted(claims) == [[], ["a"]]  # exactly one survivor gets it
            assert await b.live_nodes() == ["b", "c"]
            assert [r.id for r in await b.active_calls("a")] == ["a1", "a2"]
            await b.apply_input("a1", CallInput.VANISHED, T0 + 5, {"reason": "node-lost"})
            await b.update_call("a2", node_id="b")  # adopted: still live in Asterisk
            assert await b.release_node_slots("a") == 1  # the orphan only
            assert await b.active_slots("acme") == 1  # a2's
            assert [r.id for r in await b.active_calls("b")] == ["a2"]
            # A node back under the same id is live again; a clean stop ends the lease.
            await a.node_heartbeat("a", 60)
            assert await b.live_nodes() == ["a", "b", "c"]
            await a.node_stopped("a")
            assert await b.live_nodes() == ["b", "c"]
            assert await c.claim_expired_nodes("c") == []
        finally:
            for s in (a, b, c):
                await s.close()


async def test_postgres_an_input_changes_a_call_once_across_nodes() -> None:
    """Two nodes apply the same Hangup at once (each hears it on AMI): exactly one sees
    the change (so one status callback), both get the same final record."""
    async with temp_database() as url:
        a, b = PostgresCallStore(url), PostgresCallStore(url)
        await a.open()
        await b.open()
        try:
            for i in range(20):
                cid = f"c{i}"
                await a.create_call(rec(cid))
                await a.apply_input(cid, CallInput.ANSWERED, T0 + 1)
                got = await asyncio.gather(
                    a.apply_input_change(cid, CallInput.HANGUP, T0 + 9, {"cause": 16}),
                    b.apply_input_change(cid, CallInput.HANGUP, T0 + 9, {"cause": 16}))
                changes = [g for g in got if g is not None and g[0].status is not g[1].status]
                assert len(changes) == 1
                assert got[0] is not None and got[1] is not None
                assert got[0][1] == got[1][1]
                assert got[0][1].status is CallStatus.COMPLETED
        finally:
            await a.close()
            await b.close()


async def test_resume_legs_are_shared_amended_and_expire(store: AnyStore) -> None:
    meta = {"parent_call_id": "c1", "action": "https://app/after"}
    await store.register_leg("leg-1", "c1", meta, T0, T0 + 60)
    assert await store.get_leg("leg-1", T0 + 1) == ("c1", meta)
    assert await store.amend_leg("leg-1", {"dial_status": "completed"})
    assert not await store.amend_leg("nope", {"dial_status": "busy"})
    got = await store.get_leg("leg-1", T0 + 2)
    assert got == ("c1", {**meta, "dial_status": "completed"})
    assert await store.get_leg("leg-1", T0 + 61) is None  # expired
    await store.register_leg("leg-2", "c2", {}, T0 + 100, T0 + 160)  # prunes leg-1
    assert not await store.amend_leg("leg-1", {"x": "y"})
    await store.discard_leg("leg-2")
    await store.discard_leg("leg-2")  # idempotent
    assert await store.get_leg("leg-2", T0 + 101) is None
