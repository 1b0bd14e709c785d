"""``audiosocket-gw bench --workers 1 2`` at a tiny size, so the mode cannot rot: real
``serve --workers N`` processes on a PostgreSQL database the bench creates and drops,
the PBX simulator's echo calls over real sockets, figures merged into results.json."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import asyncpg
import pytest

from audiosocket_gw.testing.bench.workers import run_workers_bench, workers_table
from tests.pgtest import ADMIN_URL


async def _bench_databases() -> set[str]:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database "
                                "WHERE datname LIKE 'aigw_bench_%'")
    finally:
        await conn.close()
    return {r["datname"] for r in rows}


async def test_workers_bench_reports_calls_per_host_cpu_and_scaling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIGW_BENCH_PG_URL", ADMIN_URL)
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"levels": [{"calls": 50}], "barge_in": {}}))
    before = await _bench_databases()
    code = await run_workers_bench(workers=[1, 2], levels=[3], seconds=2.0, out=str(out))
    assert await _bench_databases() <= before  # its database is dropped
    doc = json.loads(out.read_text())
    assert doc["levels"] == [{"calls": 50}] and "barge_in" in doc  # make bench's figures kept
    runs = doc["workers"]["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for r in runs:
        level = r["levels"][0]
        assert level["calls"] == 3 and level["ok_calls"] == 3
        assert len(level["worker_cpu_percent"]) == r["workers"]  # one figure per worker
        assert all(c >= 0 for c in level["worker_cpu_percent"])
        assert r["calls_real_time"] in (0, 3)
    assert runs[0]["scaling"] in (None, 1.0)
    # Exit 0 whenever the bench ran: on a machine shared with other load even 3 calls
    # can miss one 20 ms tick; that is a figure in the table, said in a line, not an error.
    assert code == 0
    printed = capsys.readouterr().out
    assert workers_table(runs) in printed and "calls/host at real time" in printed
    for r in runs:
        said = f"{r['workers']} worker(s) carried no level in real time" in printed
        assert said == (r["calls_real_time"] == 0)


async def test_workers_bench_skips_clearly_without_postgresql(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIGW_BENCH_PG_URL", f"postgresql://postgres@127.0.0.1:{port}/postgres")
    out = tmp_path / "results.json"
    assert await run_workers_bench(workers=[1, 2], levels=[3], seconds=2.0, out=str(out)) == 0
    assert "bench --workers: skipped: PostgreSQL unreachable" in capsys.readouterr().out
    assert not out.exists()
