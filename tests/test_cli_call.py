"""The ``call`` CLI against a real gateway + AMI simulator (bulk CSV, mixed outcomes)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from audiosocket_gw import cli_call
from audiosocket_gw.progress import Reporter
from tests.ami.test_tracker import stack
from tests.helpers import MS


async def test_bulk_csv_mixed_outcomes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = {"+15550000001": "answered", "+15550000002": "busy",
                "+15550000003": "no-answer", "+15550000004": "failed"}
    async with stack(monkeypatch, limit=2, outcomes=outcomes, ring_s=20 * MS,
                     talk_s=40 * MS) as (gw, _sim):
        csv_path = tmp_path / "calls.csv"
        csv_path.write_text("to\n" + "\n".join(outcomes) + "\nnot-a-number\n")
        parser = argparse.ArgumentParser()
        cli_call.add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["call", "--csv", str(csv_path), "--rate", "200",
                                  "--tenant", "acme", "--from", "+15559990000",
                                  "--api", f"http://127.0.0.1:{gw.http_address[1]}",
                                  "--wait", "5", "--place-timeout", "5"])
        code = await cli_call._run(args)
    out = capsys.readouterr().out
    lines = dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)
    assert lines == {"+15550000001": "completed", "+15550000002": "busy",
                     "+15550000003": "no-answer", "+15550000004": "failed",
                     "not-a-number": "not-placed"}
    assert code == 1  # one number could not be placed
    assert "5 calls:" in out


def call_args(csv_path: Path, port: int, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_call.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["call", "--csv", str(csv_path), "--rate", "200",
                              "--tenant", "acme", "--from", "+15559990000",
                              "--api", f"http://127.0.0.1:{port}", "--wait", "5",
                              "--place-timeout", "5", "--progress-every", "0", *extra])


def originated(sim: object) -> list[str]:
    return [str(a.get("Channel")) for a in sim.actions  # type: ignore[attr-defined]
            if a.get("Action") == "Originate"]


async def test_bulk_progress_summary_table_and_resume(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = {"+15550000001": "answered", "+15550000002": "busy",
                "+15550000003": "answered"}
    async with stack(monkeypatch, limit=3, outcomes=outcomes, ring_s=20 * MS,
                     talk_s=40 * MS) as (gw, sim):
        csv_path = tmp_path / "calls.csv"
        csv_path.write_text("to\n" + "\n".join(outcomes) + "\n")
        port = gw.http_address[1]
        assert await cli_call._run(call_args(csv_path, port)) == 0
        first = capsys.readouterr()
        assert len(originated(sim)) == 3
        # Progress on stderr (not a terminal: plain lines), results on stdout.
        progress = [x for x in first.err.splitlines() if x.startswith("calls: ")]
        assert progress[-1].startswith("calls: 3/3 done (busy 1, completed 2)")
        assert any(x.startswith("calls: 1/3 done") for x in progress)
        assert "calls by final status" in first.out
        table = [x for x in first.out.splitlines() if "completed" in x and "|" in x]
        assert table and "2" in table[0] and "67%" in table[0]
        state = [json.loads(x) for x in (tmp_path / "calls.csv.state.jsonl")
                 .read_text().splitlines()]
        assert sorted((s["to"], s["status"]) for s in state) == [
            ("+15550000001", "completed"), ("+15550000002", "busy"),
            ("+15550000003", "completed")]
        # --resume calls only the number that did not complete.
        assert await cli_call._run(call_args(csv_path, port, "--resume")) == 0
        again = capsys.readouterr()
        assert "resume: skipping 2 number(s) already completed" in again.out
        assert len(originated(sim)) == 4 and "15550000002" in originated(sim)[-1]
        lines = dict(x.split("\t")[:2] for x in again.out.splitlines() if "\t" in x)
        assert lines == {"+15550000002": "busy"}
        assert "skipped (resume)" in again.out
        # Without --resume the state starts afresh: every number is called again.
        state_lines = (tmp_path / "calls.csv.state.jsonl").read_text().splitlines()
        assert len(state_lines) == 4
        assert await cli_call._run(call_args(csv_path, port)) == 0
        capsys.readouterr()
        assert len(originated(sim)) == 7
        assert len((tmp_path / "calls.csv.state.jsonl").read_text().splitlines()) == 3


def test_progress_bar_on_a_terminal() -> None:
    buf = io.StringIO()
    with Reporter(3, "calls", stream=buf, tty=True) as rep:
        for _ in range(3):
            rep.advance(note="completed")
    assert "3/3" in buf.getvalue() and "calls" in buf.getvalue()
    plain = io.StringIO()
    t = [0.0]
    with Reporter(4, "calls", stream=plain, tty=False, every_s=10, clock=lambda: t[0]) as rep:
        for _ in range(4):
            t[0] += 4
            rep.advance()
    # one line per 10 s of work, then the final one
    assert plain.getvalue().splitlines() == ["calls: 3/4 done, 12 s", "calls: 4/4 done, 16 s"]
