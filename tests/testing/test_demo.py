"""``make demo`` is the README's first command: it must work and say what it measured."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end_and_reports() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "audiosocket_gw", "demo", "--calls", "2", "--seconds", "7"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "AIGW_STATUS=ok agent=assistant" in out
    assert "AIGW_STATUS=ok agent=line-check" in out
    assert "calls: 2  ok: 2" in out
    assert out.count(" completed ") >= 2  # call records from the API
    assert "time to greeting" in out and "MOS estimate" in out
    assert "tool call opening_hours: ok" in out and "signature verified" in out
    # ... and one attended transfer through the AMI simulator
    assert "AMI Redirect" in out and "-> [aigw-hold]" in out and "AMI Bridge" in out
    assert "transfer -> manager: attended completed" in out
    assert "call record: completed, hangup reason transferred" in out
    assert out.rstrip().endswith("demo: OK")
