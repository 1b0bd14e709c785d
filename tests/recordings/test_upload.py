"""The durable upload pipeline against moto's S3 server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audiosocket_gw.recordings.pipeline import RecordingPipeline
from audiosocket_gw.recordings.queue import RecordingDB, RecordingRow
from audiosocket_gw.recordings.s3 import S3Uploader, UploadError, file_sha256
from audiosocket_gw.recordings.settings import MIB, RecordingSettings
from audiosocket_gw.recordings.urls import object_key

from ..helpers import MS
from .conftest import s3_client


def settings(endpoint: str, bucket: str, **kw: Any) -> RecordingSettings:
    base: dict[str, Any] = dict(s3_endpoint=endpoint, s3_bucket=bucket, s3_prefix="rec/",
                                backoff_s=0.05, backoff_max_s=0.2, retention_s=3600.0,
                                sweep_s=0.05)
    base.update(kw)
    return RecordingSettings.from_env(env={}, **base)


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def wait_state(p: RecordingPipeline, call_id: str, states: set[str],
                     within: float = 10.0) -> RecordingRow:
    deadline = time.monotonic() + within
    while True:
        row = await p.get(call_id)
        if row is not None and row.state in states:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{call_id}: still {row}")
        await asyncio.sleep(20 * MS)


async def add(p: RecordingPipeline, call_id: str, path: Path) -> RecordingRow:
    row = await p.add_capture(call_id=call_id, tenant="acme", agent="support", source="gateway",
                              path=str(path), channels=2, duration_s=1.0)
    assert row is not None
    return row


async def test_multipart_upload_is_verified_then_presigned_url_serves_same_bytes(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    s = settings(moto_url, bucket, multipart_threshold=1 * MIB, multipart_chunk=5 * MIB,
                 retention_s=0.0)
    p = RecordingPipeline(s, tmp_path)
    await p.start()
    try:
        f = tmp_path / "a.wav"
        data = make_file(f, 11 * MIB)
        await add(p, "call-a", f)
        row = await wait_state(p, "call-a", {"verified", "deleted"}, within=30)
        head = s3_client(moto_url).head_object(Bucket=bucket, Key=row.key)
        assert head["ETag"].strip('"').endswith("-3")  # three parts: multipart was used
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest() == row.sha256
        assert row.key == object_key("rec/", "acme", "call-a") and row.attempts == 1
        assert p.uploader is not None
        url = p.uploader.presigned_url(row.key, 60)
        assert "X-Amz-Expires=60" in url
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        # retention 0: the local file goes only once verified
        row = await wait_state(p, "call-a", {"deleted"})
        assert not f.exists() and row.verified_at is not None
        counts = [x.value for x in p.metrics.upload_seconds.collect()[0].samples
                  if x.name.endswith("_count")]
        assert counts == [1]
    finally:
        await p.stop()


async def test_a_cut_connection_is_retried_with_backoff_then_succeeds(
    tmp_path: Path, bucket: str, proxy_to: Any, moto_url: str
) -> None:
    proxy = await proxy_to(cut_connections=1, cut_after=64 * 1024)
    p = RecordingPipeline(settings(proxy.url, bucket), tmp_path)
    await p.start()
    try:
        f = tmp_path / "b.wav"
        data = make_file(f, 300 * 1024)
        await add(p, "call-b", f)
        row = await wait_state(p, "call-b", {"verified", "failed"})
        assert row.state == "verified", row.last_error
        assert row.attempts == 2 and proxy.cuts == 1
        assert p.metrics.failures.labels("upload", "network")._value.get() == 1
        assert f.exists()  # retention not reached: kept
        body = s3_client(moto_url).get_object(Bucket=bucket, Key=row.key)["Body"].read()
        assert body == data
    finally:
        await p.stop()


async def test_gives_up_after_max_attempts_and_says_why(tmp_path: Path, aws_env: None) -> None:
    # a port nothing listens on
    import socket

    s_ = socket.socket()
    s_.bind(("127.0.0.1", 0))
    port = s_.getsockname()[1]
    s_.close()
    p = RecordingPipeline(settings(f"http://127.0.0.1:{port}", "nobucket", max_attempts=2),
                          tmp_path)
    await p.start()
    try:
        f = tmp_path / "c.wav"
        make_file(f, 1000)
        await add(p, "call-c", f)
        row = await wait_state(p, "call-c", {"failed"})
        assert row.attempts == 2 and row.last_error and "Connect" in row.last_error
        assert f.exists()  # never deleted without a verified copy
    finally:
        await p.stop()


def test_verification_catches_a_different_object(tmp_path: Path, moto_url: str,
                                                 bucket: str) -> None:
    f = tmp_path / "d.wav"
    make_file(f, 4096)
    sha, size = file_sha256(str(f))
    up = S3Uploader(settings(moto_url, bucket))
    up.upload(str(f), "k/d.wav", sha, size)
    # someone overwrites the object with other bytes but the same metadata and size
    s3_client(moto_url).put_object(Bucket=bucket, Key="k/d.wav", Body=os.urandom(4096),
                                   Metadata={"sha256": sha})
    with pytest.raises(UploadError) as exc:
        up.verify("k/d.wav", sha, size)
    assert exc.value.reason == "checksum"


def _db_states(db_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        return dict(conn.execute("SELECT call_id, state FROM recordings").fetchall())
    finally:
        conn.close()


async def test_kill_9_mid_queue_resumes_with_nothing_lost_or_duplicated(
    tmp_path: Path, bucket: str, proxy_to: Any, moto_url: str
) -> None:
    n = 10
    db = RecordingDB(tmp_path / "recordings.sqlite")
    expected: dict[str, str] = {}
    for i in range(n):
        f = tmp_path / "rec" / f"{i}.wav"
        make_file(f, 512 * 1024)
        sha, size = file_sha256(str(f))
        cid = f"call-{i:02d}"
        expected[cid] = sha
        db.add(RecordingRow(cid, "acme", "support", "gateway", str(f),
                            object_key("rec/", "acme", cid), "RE" + "1" * 32, "pending", 0,
                            sha, size, 1.0, 2, time.time(), 0.0))
    db.close()
    proxy = await proxy_to(delay_s=0.02)  # ~0.2 s per file: slow enough to be caught mid-way
    env = dict(os.environ, AIGW_S3_ENDPOINT=proxy.url, AIGW_S3_BUCKET=bucket,
               AIGW_S3_PREFIX="rec/", AIGW_RECORDING_BACKOFF_S="0.05",
               AIGW_RECORDING_UPLOAD_CONCURRENCY="2")
    cmd = [sys.executable, "-m", "audiosocket_gw.recordings.worker", "--data-dir", str(tmp_path),
           "--log-level", "warning"]
    child = await asyncio.create_subprocess_exec(*cmd, env=env)
    db_path = tmp_path / "recordings.sqlite"
    deadline = time.monotonic() + 20
    while True:
        states = await asyncio.to_thread(_db_states, db_path)
        done = sum(s == "verified" for s in states.values())
        if done >= 2 and "uploading" in states.values():
            break
        assert done < n, "the child finished before it could be killed"
        assert time.monotonic() < deadline, states
        await asyncio.sleep(5 * MS)
    child.send_signal(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL
    interrupted = {c for c, s in states.items() if s == "uploading"}
    assert interrupted

    proxy.delay_s = 0.0
    child = await asyncio.create_subprocess_exec(*cmd, "--exit-when-idle", env=env)
    assert await asyncio.wait_for(child.wait(), 30) == 0
    db = RecordingDB(db_path)
    try:
        rows = {r.call_id: r for r in db.all()}
    finally:
        db.close()
    assert set(rows) == set(expected)
    assert all(r.state == "verified" for r in rows.values()), rows
    client = s3_client(moto_url)
    listing = client.list_objects_v2(Bucket=bucket, Prefix="rec/")["Contents"]
    assert sorted(o["Key"] for o in listing) == sorted(r.key for r in rows.values())
    for cid, r in rows.items():
        body = client.get_object(Bucket=bucket, Key=r.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == expected[cid]
    assert all(rows[c].attempts == 2 for c in interrupted)


async def test_an_upload_that_ends_after_its_recording_was_deleted_leaves_no_object(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    """The REST ``DELETE`` comes while the recording is being uploaded: the row goes at
    once, there is no object to remove yet, and the upload then stores one. The upload
    finds its row gone and removes that object: nothing of the call stays in the bucket."""
    p = RecordingPipeline(settings(moto_url, bucket), tmp_path)
    await p.queue.open()  # no upload workers: this test plays the one in flight
    try:
        f = tmp_path / "d.wav"
        make_file(f, 64 * 1024)
        await add(p, "call-d", f)
        claimed = await p.queue.claim_upload(time.time() + 1)
        assert claimed is not None and claimed.state == "uploading"
        assert await p.delete(claimed)  # mid-upload: nothing stored yet
        assert not f.exists()
        make_file(f, 64 * 1024)  # the upload had the file open: its bytes still go out
        await p._upload_one(claimed)
        listed = s3_client(moto_url).list_objects_v2(Bucket=bucket, Prefix="rec/")
        assert listed.get("KeyCount", 0) == 0
    finally:
        await p.queue.close()
