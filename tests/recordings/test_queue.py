"""The recordings queue (``RecordingJobs``) on both stores: the embedded SQLite file and
the shared PostgreSQL database (a real one per test, see ``tests/pgtest.py``)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from audiosocket_gw.recordings.pipeline import RecordingPipeline
from audiosocket_gw.recordings.queue import (
    MIGRATIONS,
    JobState,
    RecordingDB,
    RecordingJobs,
    RecordingRow,
    RecState,
)
from audiosocket_gw.recordings.settings import RecordingSettings
from audiosocket_gw.store.factory import build_recording_queue
from audiosocket_gw.store.pg_recordings import PostgresRecordingQueue
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.store.sqlite import SqliteCallStore
from tests.helpers import MS, until
from tests.pgtest import temp_database


def row(call_id: str, path: str = "/nowhere.wav", size: int = 1, **kw: object) -> RecordingRow:
    base = RecordingRow(call_id, "acme", "support", "gateway", path, f"rec/{call_id}.wav",
                        "RE" + "0" * 32, "pending", 0, "sha", size, 1.0, 2, time.time(), 0.0)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordingJobs]:
    if request.param == "sqlite":
        async with SqliteCallStore(tmp_path / "aigw.sqlite") as store:
            q = build_recording_queue(store, tmp_path, node_id="n1")
            await q.open()
            try:
                yield q
            finally:
                await q.close()
    else:
        async with temp_database() as url, PostgresCallStore(url, node_id="n1") as pg:
            await pg.node_heartbeat("n1", 30.0)
            q = build_recording_queue(pg, tmp_path, node_id="n1")
            await q.open()
            yield q


async def test_one_row_per_call_claim_recover_and_ownership(queue: RecordingJobs) -> None:
    assert isinstance(queue, RecordingJobs)
    r = row("c1", node_id="someone-else")
    assert await queue.add(r) and not await queue.add(r)
    stored = await queue.get("c1")
    assert stored is not None and stored.node_id == "n1"  # the adding node owns the file
    claimed = await queue.claim_upload(time.time())
    assert claimed is not None and claimed.state == "uploading" and claimed.attempts == 1
    assert await queue.claim_upload(time.time()) is None
    assert await queue.depth() == (1, 0)
    assert await queue.recover() == (1, 0)  # "after a crash": the attempt did not finish
    again = await queue.claim_upload(time.time())
    assert again is not None and again.attempts == 2
    assert await queue.set_state("c1", RecState.VERIFIED, verified_at=10.0)
    assert await queue.depth() == (0, 0)
    assert [x.call_id for x in await queue.due_for_deletion(20.0, 5.0)] == ["c1"]
    assert await queue.add_job("c1", 1.0) and not await queue.add_job("c1", 1.0)
    assert await queue.due_for_deletion(20.0, 5.0) == []  # its transcription is due
    job = await queue.claim_job(2.0)
    assert job is not None and job.state == "running" and await queue.claim_job(2.0) is None
    await queue.set_job("c1", JobState.DONE, text="hi", speakers={"caller": "hi"})
    done = await queue.get_job("c1")
    assert done is not None and done.speakers == {"caller": "hi"}
    assert [x.call_id for x in await queue.page(tenant="acme")] == ["c1"]
    assert await queue.remove("c1") and await queue.get_job("c1") is None
    with pytest.raises(TypeError):
        await queue.set_state("c1", RecState.FAILED, bogus=1)


async def test_concurrent_claims_hand_out_each_row_once(queue: RecordingJobs) -> None:
    for i in range(30):
        assert await queue.add(row(f"c{i:02d}"))
    now = time.time()

    async def worker() -> list[str]:
        got = []
        while (r := await queue.claim_upload(now)) is not None:
            got.append(r.call_id)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(worker() for _ in range(6)))
    claimed = [c for got in results for c in got]
    assert sorted(claimed) == sorted(f"c{i:02d}" for i in range(30))  # each exactly once


async def test_two_nodes_upload_only_their_own_and_survivors_take_over_once(
        tmp_path: Path) -> None:
    here = tmp_path / "spool" / "a.wav"
    here.parent.mkdir()
    here.write_bytes(b"x" * 100)
    async with temp_database() as url, PostgresCallStore(url, node_id="a") as pg_a, \
            PostgresCallStore(url, node_id="b") as pg_b, PostgresCallStore(url) as pg_c:
        a = PostgresRecordingQueue(pg_a, "a")
        b = PostgresRecordingQueue(pg_b, "b")
        c = PostgresRecordingQueue(pg_c, "c")
        for node, store in (("a", pg_a), ("b", pg_b), ("c", pg_c)):
            await store.node_heartbeat(node, 30.0)
        assert await a.add(row("r1", str(here), 100))
        assert await a.add(row("r2", str(tmp_path / "only-on-a.wav"), 100))
        assert await b.claim_upload(time.time()) is None  # a's file, a's job
        assert await b.orphans() == []  # a is alive
        claimed = await a.claim_upload(time.time())
        assert claimed is not None
        assert not await b.set_state(claimed.call_id, RecState.VERIFIED)  # not b's row
        # a dies (its lease ends): b and c both see its rows
        await pg_a.node_stopped("a")
        seen_b, seen_c = await b.orphans(), await c.orphans()
        assert {r.call_id for r in seen_b} == {r.call_id for r in seen_c} == {"r1", "r2"}
        r1_b = next(r for r in seen_b if r.call_id == "r1")
        r1_c = next(r for r in seen_c if r.call_id == "r1")
        won = await asyncio.gather(b.adopt(r1_b, 5.0), c.adopt(r1_c, 5.0))
        assert sorted(won) == [False, True]  # exactly one survivor takes it
        winner = b if won[0] else c
        adopted = await winner.get("r1")
        assert adopted is not None and adopted.node_id == winner.node_id
        assert adopted.state == "pending" and "node a lost" in (adopted.last_error or "")
        # a, frozen and back, cannot write over its former row
        assert not await a.set_state("r1", RecState.VERIFIED)
        # r2's file is not readable anywhere but a: stranded, with the reason
        r2 = next(r for r in seen_b if r.call_id == "r2")
        assert await b.strand(r2, "node a lost; not readable from b")
        assert not await c.strand(r2, "again")  # compare-and-set: already moved
        stranded = await b.get("r2")
        assert stranded is not None and stranded.state == "stranded"
        assert stranded.node_id == "a" and "not readable" in (stranded.last_error or "")
        assert [r.call_id for r in await c.orphans()] == ["r2"]  # still visible to others
        # a restarted under the same AIGW_NODE_ID resumes it
        await pg_a.node_heartbeat("a", 30.0)
        assert await a.recover() == (1, 0)
        resumed = await a.get("r2")
        assert resumed is not None and resumed.state == "pending"


def spool_file(tmp_path: Path, name: str) -> Path:
    """A 10-byte recording in ``tmp_path/spool``: readable by the survivor."""
    path = tmp_path / "spool" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"x" * 10)
    return path


async def survivor(pg_b: PostgresCallStore, tmp_path: Path
                   ) -> tuple[PostgresRecordingQueue, RecordingPipeline]:
    """Node ``b`` alive (a lease) with its queue and the pipeline that takes over."""
    await pg_b.node_heartbeat("b", 30.0)
    b = PostgresRecordingQueue(pg_b, "b")
    return b, RecordingPipeline(RecordingSettings.from_env(env={}), tmp_path, queue=b)


async def test_stranded_rows_do_not_hide_a_newer_readable_orphan(tmp_path: Path) -> None:
    """``orphans()`` returns at most 100 rows and ``strand()`` skips stranded ones: with
    the oldest 100 rows stranded, a newer row whose file is readable here must still be
    adopted in one takeover pass (it was listed after them, past the limit)."""
    readable = spool_file(tmp_path, "new.wav")
    async with temp_database() as url, PostgresCallStore(url, node_id="dead") as pg_dead, \
            PostgresCallStore(url, node_id="b") as pg_b:
        dead = PostgresRecordingQueue(pg_dead, "dead")  # never holds a lease
        for i in range(100):
            assert await dead.add(row(f"s{i:03d}", state="stranded", captured_at=1000.0 + i))
        assert await dead.add(row("fresh", str(readable), 10, captured_at=5000.0))
        b, pipeline = await survivor(pg_b, tmp_path)
        assert await pipeline.take_over_orphans() == (1, 0)
        adopted = await b.get("fresh")
        assert adopted is not None and adopted.node_id == "b" and adopted.state == "pending"


async def test_adopt_and_strand_leave_a_row_whose_node_has_a_live_lease(
        tmp_path: Path) -> None:
    """Between ``orphans()`` and ``adopt()``/``strand()`` the owner may come back under
    the same node id (lease renewed): it keeps its row, whatever the survivor listed."""
    async with temp_database() as url, PostgresCallStore(url, node_id="a") as pg_a, \
            PostgresCallStore(url, node_id="b") as pg_b:
        a = PostgresRecordingQueue(pg_a, "a")
        b = PostgresRecordingQueue(pg_b, "b")
        await pg_b.node_heartbeat("b", 30.0)
        assert await a.add(row("r1")) and await a.add(row("r2"))
        listed = {r.call_id: r for r in await b.orphans()}  # a holds no lease yet
        assert set(listed) == {"r1", "r2"}
        await pg_a.node_heartbeat("a", 30.0)  # a restarted under the same id
        assert not await b.adopt(listed["r1"], 5.0)
        assert not await b.strand(listed["r2"], "not readable from b")
        for cid in ("r1", "r2"):
            kept = await a.get(cid)
            assert kept is not None and kept.node_id == "a" and kept.state == "pending"
        await pg_a.node_stopped("a")
        assert await b.adopt(listed["r1"], 5.0)  # gone again: now it is taken over


async def test_a_lost_nodes_verified_rows_are_adopted_verified_or_closed(
        tmp_path: Path) -> None:
    """A node gone (e.g. restarted as another ``hostname:pid``) leaves verified rows that
    only its own retention sweep and transcriber would handle. A survivor that can read
    the file adopts the row still ``verified`` (no second upload) and takes over the
    sweep and the interrupted transcription; one that cannot marks it ``deleted`` with
    the reason (the S3 copy stays) and fails its transcription job: it is not listed
    again."""
    readable = spool_file(tmp_path, "shared.wav")
    async with temp_database() as url, PostgresCallStore(url, node_id="gone") as pg_gone, \
            PostgresCallStore(url, node_id="b") as pg_b:
        gone = PostgresRecordingQueue(pg_gone, "gone")  # holds no lease
        assert await gone.add(row("shared", str(readable), 10, state="verified",
                                  attempts=1, verified_at=100.0))
        assert await gone.add(row("lost", str(tmp_path / "only-on-gone.wav"), 10,
                                  state="verified", attempts=1, verified_at=100.0))
        for cid in ("shared", "lost"):
            assert await gone.add_job(cid, 100.0)
            assert await gone.claim_job(200.0) is not None  # running when the node died
        b, pipeline = await survivor(pg_b, tmp_path)
        assert await pipeline.take_over_orphans() == (1, 0)
        shared = await b.get("shared")
        assert shared is not None and shared.node_id == "b" and shared.state == "verified"
        assert shared.attempts == 1 and shared.verified_at == 100.0  # never re-uploaded
        job = await b.claim_job(time.time())  # b's transcriber resumes it
        assert job is not None and job.call_id == "shared" and job.attempts == 2
        await b.set_job("shared", JobState.DONE, text="")
        assert [r.call_id for r in await b.due_for_deletion(time.time(), 60.0)] == ["shared"]
        lost = await b.get("lost")
        assert lost is not None and lost.state == "deleted" and lost.node_id == "gone"
        assert "not deleted here" in (lost.last_error or "") and lost.deleted_at is None
        lost_job = await b.get_job("lost")
        assert lost_job is not None and lost_job.state == "failed"
        assert await b.orphans() == []  # handled once
        assert await pipeline.take_over_orphans() == (0, 0)


async def test_sqlite_queue_migrates_a_file_from_before_versioning(tmp_path: Path) -> None:
    path = tmp_path / "recordings.sqlite"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:  # the old schema, user_version 0
        conn.execute(statement)
    conn.execute("INSERT INTO recordings VALUES ('old', 't', 'a', 'gateway', '/x', 'k', 'RE',"
                 " 'pending', 0, 's', 1, 1.0, 2, 1.0, 0.0, NULL, NULL, NULL, NULL, NULL)")
    conn.commit()
    conn.close()
    db = RecordingDB(path)
    try:
        assert db.schema_version() == len(MIGRATIONS)
        old = db.get("old")
        assert old is not None and old.node_id == "" and old.state == "pending"
    finally:
        db.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        RecordingDB(path)


def _open_at_once(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        RecordingDB(path).close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_fresh_queue_together_all_succeed(tmp_path: Path) -> None:
    """Two ``serve --workers`` children opening one new file at the same instant: SQLite
    refused the second switch to WAL with "database is locked" (no busy handler there),
    ~1 round in 10 here before ``enable_wal`` retried it."""
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for i in range(40):
        path = str(tmp_path / f"r{i}" / "recordings.sqlite")
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, errors))
                 for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []


def test_update_columns_are_checked_the_same_for_both_stores() -> None:
    from audiosocket_gw.recordings.queue import update_columns

    assert update_columns("transcript", {"speakers": {"b": "2", "a": "1"}}) == [
        ("speakers", '{"a": "1", "b": "2"}')]
    assert update_columns("recording", {"attempts": 2}) == [("attempts", 2)]
    for kind, col in (("recording", "node_id"), ("recording", "call_id"),
                      ("transcript", "call_id"), ("recording", "bogus; DROP")):
        with pytest.raises(TypeError, match=f"unknown {kind} column"):
            update_columns(kind, {col: "x"})


async def test_a_recording_deleted_through_another_node_is_erased_by_its_own(
        tmp_path: Path) -> None:
    """REST ``DELETE`` is served by whichever node the request reaches; the file is on
    the disk of the node that recorded it. The serving node hides the recording at once
    (no API lists or fetches it again) and the owner erases the file and the row; an
    upload the owner finishes meanwhile does not bring the row back, and its
    transcription job is dropped."""
    wav = spool_file(tmp_path, "a-disk.wav")
    async with temp_database() as url, PostgresCallStore(url, node_id="a") as pg_a, \
            PostgresCallStore(url, node_id="b") as pg_b:
        for node, pg in (("a", pg_a), ("b", pg_b)):
            await pg.node_heartbeat(node, 30.0)  # both alive
        a = PostgresRecordingQueue(pg_a, "a")
        b = PostgresRecordingQueue(pg_b, "b")
        on_a = RecordingPipeline(RecordingSettings.from_env(env={}), tmp_path / "a", queue=a)
        on_b = RecordingPipeline(RecordingSettings.from_env(env={}), tmp_path / "b", queue=b)
        assert await a.add(row("c1", str(wav), 10, state="uploading"))
        assert await a.add_job("c1", 0.0)
        assert await a.add(row("c2", str(wav) + ".other", 10))
        listed = await on_b.get("c1")
        assert listed is not None and listed.node_id == "a"
        assert await on_b.delete(listed)
        assert not await on_b.delete(listed)  # asked once
        # gone from every listing at once, on both nodes; the file is still a's
        for q in (a, b):
            assert await q.get("c1") is None
            assert [r.call_id for r in await q.page()] == ["c2"]
        assert await a.get_job("c1") is None
        assert wav.exists()
        # a's upload finishes after the delete: the row stays deleted
        assert not await a.set_state("c1", RecState.UPLOADED, uploaded_at=1.0)
        assert await on_b.erase_requested() == 0  # not b's file
        assert await on_a.erase_requested() == 1
        assert not wav.exists()
        assert [r.call_id for r in await a.all()] == ["c2"]
        assert await on_a.erase_requested() == 0


async def test_erase_requests_are_carried_out_by_the_owners_running_pipeline(
        tmp_path: Path) -> None:
    """The owner's pipeline, once started, erases within ``takeover_s`` on its own."""
    wav = spool_file(tmp_path, "owned.wav")
    async with temp_database() as url, PostgresCallStore(url, node_id="a") as pg_a, \
            PostgresCallStore(url, node_id="b") as pg_b:
        a = PostgresRecordingQueue(pg_a, "a")
        b = PostgresRecordingQueue(pg_b, "b")
        for node, pg in (("a", pg_a), ("b", pg_b)):
            await pg.node_heartbeat(node, 30.0)
        settings = RecordingSettings.from_env(env={})
        on_a = RecordingPipeline(settings, tmp_path / "a", queue=a, takeover_s=0.05)
        on_b = RecordingPipeline(settings, tmp_path / "b", queue=b)
        assert await a.add(row("c1", str(wav), 10, state="local"))
        await on_a.start()
        try:
            listed = await on_b.get("c1")
            assert listed is not None and await on_b.delete(listed)
            await until(lambda: not wav.exists(), within=5.0, step=20 * MS)
            assert await a.all() == []
        finally:
            await on_a.stop()


async def test_a_lost_nodes_erase_requests_are_done_by_a_survivor_that_reads_the_file(
        tmp_path: Path) -> None:
    """The node that recorded the call is gone (no live lease): a survivor that can read
    the file (a shared spool) erases it; one that cannot leaves the request for the
    lost node, which erases it when it is back."""
    shared = spool_file(tmp_path, "shared.wav")
    async with temp_database() as url, PostgresCallStore(url, node_id="gone") as pg_gone, \
            PostgresCallStore(url, node_id="b") as pg_b:
        gone = PostgresRecordingQueue(pg_gone, "gone")  # holds no lease
        assert await gone.add(row("c1", str(shared), 10, state="verified"))
        assert await gone.add(row("c2", str(tmp_path / "gone-disk.wav"), 10, state="local"))
        b, on_b = await survivor(pg_b, tmp_path)
        for cid in ("c1", "c2"):
            listed = await on_b.get(cid)
            assert listed is not None and await on_b.delete(listed)
        assert await on_b.erase_requested() == 1
        assert not shared.exists()
        assert [(r.call_id, r.state) for r in await gone.all()] == [("c2", "erasing")]
        await pg_b.node_heartbeat("gone", 30.0)  # back (a lease): only it erases c2 now
        assert await b.to_erase() == []
        on_gone = RecordingPipeline(RecordingSettings.from_env(env={}), tmp_path, queue=gone)
        assert await on_gone.erase_requested() == 1
        assert await gone.all() == []
