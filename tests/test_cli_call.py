"""The ``call`` CLI against a real gateway + AMI simulator (bulk CSV, mixed outcomes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from audiosocket_gw import cli_call
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
