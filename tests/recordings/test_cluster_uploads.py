"""Recording uploads across two gateway nodes on one PostgreSQL database (issue 14).

Real gateway processes, a real database, moto's S3 over loopback HTTP (each node
through its own ``FaultProxy``, so the test sees which node talked to S3 and can make
one node's uploads fail): a recording is uploaded once, by the node that holds its
file; when that node is killed with SIGKILL, the survivor takes over the recording whose
file it can read (both nodes share this host's disk, like a MixMonitor spool mounted on
every node) and marks the one whose file is gone ``stranded``, with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.recordings.queue import RecordingRow
from audiosocket_gw.store.pg_recordings import PostgresRecordingQueue
from audiosocket_gw.store.postgres import PostgresCallStore
from audiosocket_gw.testing.proc import GatewayProcess
from audiosocket_gw.twilio.ids import recording_sid_for
from tests.helpers import MS, RawPeer, until
from tests.pgtest import temp_database

from .conftest import s3_client

TOML = """
[tenants.acme]
max_concurrent_calls = 10

[agents.bot]
tenant = "acme"
backend = "echo"
record = true

[numbers."+15551230000"]
agent = "bot"
"""

LEASE_S = 3.0


async def call(gw: GatewayProcess, caller: str) -> str:
    """One recorded call on ``gw``: routed, 0.3 s of audio, caller hangs up."""
    body = {"did": "+15551230000", "caller": caller, "uniqueid": caller, "channel": "PJSIP/x"}
    async with aiohttp.ClientSession() as s, \
            s.post(f"http://127.0.0.1:{gw.http[1]}/v1/route", json=body) as r:
        assert r.status == 200, await r.text()
        variables = (await r.json())["variables"]
    assert variables["AIGW_STATUS"] == "ok", variables
    cid = str(variables["AIGW_CALL_ID"])
    peer = await RawPeer.connect(gw.audiosocket)
    peer.send_uuid(cid)
    for _ in range(15):
        peer.send(asp.encode_audio(os.urandom(320)))
        await asyncio.sleep(20 * MS)
    peer.send(asp.HANGUP_FRAME)
    await peer.read_until_closed(10_000 * MS)
    return cid


async def wait_row(q: PostgresRecordingQueue, cid: str,
                   ok: Callable[[RecordingRow], bool], within: float) -> RecordingRow:
    last: RecordingRow | None = None

    async def check() -> bool:
        nonlocal last
        last = await q.get(cid)
        return last is not None and ok(last)

    try:
        await until(check, within=within / (MS * 1000), step=50 * MS)
    except TimeoutError:
        raise AssertionError(f"{cid}: {last}") from None
    assert last is not None
    return last


async def start_nodes(stack: AsyncExitStack, tmp_path: Path, db_url: str, bucket: str,
                      s3_urls: list[str], **env: str) -> list[GatewayProcess]:
    """One gateway node per S3 endpoint (``node-<i>``, its own data directory and log),
    on the database ``db_url`` and the agents of ``tmp_path/t.toml``; ``env`` added."""
    nodes = []
    for i, s3_url in enumerate(s3_urls):
        node_env = dict(os.environ, AIGW_DATABASE_URL=db_url, AIGW_NODE_ID=f"node-{i}",
                        AIGW_NODE_LEASE_S=str(LEASE_S), AIGW_CONFIG=str(tmp_path / "t.toml"),
                        AIGW_DATA_DIR=str(tmp_path / f"data{i}"), AIGW_S3_ENDPOINT=s3_url,
                        AIGW_S3_BUCKET=bucket, AIGW_S3_PREFIX="rec/",
                        AIGW_RECORDING_RETENTION_S="3600", **env)
        node_env.pop("AIGW_AMI_HOST", None)
        gw = GatewayProcess("--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
                            env=node_env, log_path=str(tmp_path / f"node{i}.log"))
        nodes.append(await stack.enter_async_context(gw))
    return nodes


@pytest.fixture
async def db_url() -> AsyncIterator[str]:
    async with temp_database() as url:
        yield url


async def test_two_nodes_upload_once_and_a_killed_nodes_recording_is_taken_over(
        tmp_path: Path, bucket: str, moto_url: str, proxy_to: Any, db_url: str) -> None:
    (tmp_path / "t.toml").write_text(TOML)
    proxies = [await proxy_to(), await proxy_to()]
    async with AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, db_url, bucket, [p.url for p in proxies],
                                  AIGW_RECORDING_BACKOFF_S="60")
        store = await stack.enter_async_context(PostgresCallStore(db_url))
        q = PostgresRecordingQueue(store, "observer")
        node1_s3 = proxies[1].connections

        # 1. A recording on node-0 is uploaded once, by node-0; node-1 never touches S3.
        first = await call(nodes[0], "+15550000001")
        row = await wait_row(q, first, lambda r: r.state == "verified", 20_000 * MS)
        assert row.node_id == "node-0" and row.attempts == 1
        assert proxies[1].connections == node1_s3

        # 2. node-0 cannot reach S3 any more: its next two recordings wait (one attempt
        # each, backoff 60 s), then node-0 is killed.
        proxies[0].cut_connections, proxies[0].cut_after = 10**6, 0
        second = await call(nodes[0], "+15550000002")
        third = await call(nodes[0], "+15550000003")
        for cid in (second, third):
            await wait_row(q, cid, lambda r: r.state == "pending" and r.attempts == 1,
                           20_000 * MS)
        lost = await q.get(third)
        assert lost is not None
        nodes[0].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        await nodes[0].proc.wait()  # type: ignore[union-attr]
        os.remove(lost.path)  # its file was on node-0's own disk only
        killed_at = time.monotonic()

        # 3. node-1 takes over the recording it can read, once the lease has run out.
        done = await wait_row(q, second, lambda r: r.state == "verified",
                              (LEASE_S * 1000 + 20_000) * MS)
        assert time.monotonic() - killed_at >= LEASE_S / 2  # not before the lease ends
        assert done.node_id == "node-1" and done.attempts == 2
        stranded = await wait_row(q, third, lambda r: r.state == "stranded", 10_000 * MS)
        assert stranded.node_id == "node-0"
        assert "node node-0 lost" in (stranded.last_error or "")
        assert "not readable from node-1" in (stranded.last_error or "")

        # Every verified recording is in the bucket once, with the file's bytes.
        client = s3_client(moto_url)
        keys = sorted(o["Key"] for o in client.list_objects_v2(
            Bucket=bucket, Prefix="rec/")["Contents"])
        rows = {r.call_id: r for r in await q.all()}
        assert keys == sorted(rows[c].key for c in (first, second))
        for cid in (first, second):
            body = client.get_object(Bucket=bucket, Key=rows[cid].key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == rows[cid].sha256
        # The survivor's API serves the stranded recording's state and reason.
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{nodes[1].http[1]}/v1/calls/{third}/recording") as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "stranded"
            assert "not readable" in body["last_error"]


ACCOUNT = "AC" + "7" * 32
TOKEN = "tok-" + "9" * 28


async def test_a_recording_deleted_through_the_other_node_leaves_no_file_no_object(
        tmp_path: Path, bucket: str, moto_url: str, proxy_to: Any, db_url: str) -> None:
    """The Twilio SDK deletes a recording through the node that did not record it: 204,
    then neither node fetches it, and the recording node erases its file, the stored
    object and the row."""
    (tmp_path / "t.toml").write_text(TOML.replace(
        "max_concurrent_calls = 10",
        f'max_concurrent_calls = 10\ntwilio_account_sid = "{ACCOUNT}"\n'
        'twilio_auth_token_env = "ACME_TWILIO_TOKEN"'))
    proxy = await proxy_to()
    async with AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, db_url, bucket, [proxy.url, proxy.url],
                                  ACME_TWILIO_TOKEN=TOKEN)
        store = await stack.enter_async_context(PostgresCallStore(db_url))
        q = PostgresRecordingQueue(store, "observer")
        cid = await call(nodes[0], "+15550000009")
        row = await wait_row(q, cid, lambda r: r.state == "verified", 20_000 * MS)
        assert row.node_id == "node-0" and await asyncio.to_thread(os.path.isfile, row.path)
        client = s3_client(moto_url)
        assert client.head_object(Bucket=bucket, Key=row.key)["ContentLength"] == row.size

        def sdk(node: GatewayProcess) -> Client:
            c = Client(ACCOUNT, TOKEN)
            c.api.base_url = f"http://127.0.0.1:{node.http[1]}"
            return c

        sid = recording_sid_for(cid)
        assert (await asyncio.to_thread(sdk(nodes[1]).recordings(sid).fetch)).sid == sid
        assert await asyncio.to_thread(sdk(nodes[1]).recordings(sid).delete) is True
        for node in nodes:  # gone from both nodes' APIs at once
            with pytest.raises(TwilioRestException) as err:
                await asyncio.to_thread(sdk(node).recordings(sid).fetch)
            assert err.value.status == 404
        # node-0 erases its file and the row (within lease/3), and the object is gone
        await until(lambda: not os.path.exists(row.path), within=10.0, step=50 * MS)

        async def no_rows() -> bool:
            return await q.all() == []

        await until(no_rows, within=10.0, step=50 * MS)
        # by node-0 (this host's disk is both nodes', so node-1 could have reached it)
        log0 = await asyncio.to_thread((tmp_path / "node0.log").read_text)
        assert f"recording {sid}: erased (deleted through another node)" in log0
        listed = client.list_objects_v2(Bucket=bucket, Prefix="rec/")
        assert listed.get("KeyCount", 0) == 0
