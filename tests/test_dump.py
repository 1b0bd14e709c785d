"""CallDump: stereo WAV aligned on the pacer clock, bounded JSON event log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from audiosocket_gw.dump import CallDump

FRAME = 320


def _frame(click: bool = False) -> bytes:
    pcm = np.zeros(160, dtype="<i2")
    if click:
        pcm[37] = 30000
    return pcm.tobytes()


def _click_positions(path: Path) -> tuple[int, int]:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000 and data.shape[1] == 2
    return int(np.argmax(np.abs(data[:, 0]))), int(np.argmax(np.abs(data[:, 1])))


def test_click_on_both_legs_lines_up_within_one_frame(tmp_path: Path) -> None:
    # Caller frames arrive with jitter around the pacer's ticks (sometimes two between
    # ticks, sometimes none): a click sent on both legs at tick 40 lines up.
    dump = CallDump(tmp_path, "call-1", block_ticks=7)
    rng = np.random.default_rng(1)
    arrivals = sorted(k + rng.uniform(-0.6, 0.6) for k in range(100))  # in tick units
    pending = list(enumerate(arrivals))
    for tick in range(100):
        while pending and pending[0][1] < tick:
            k, _ = pending.pop(0)
            dump.caller(_frame(click=k == 40))
        dump.bot(_frame(click=True) if tick == 40 else None)
    dump.close()
    left, right = _click_positions(tmp_path / "call-1.wav")
    assert right == 40 * 160 + 37
    assert abs(left - right) <= 160
    assert sf.info(str(tmp_path / "call-1.wav")).frames == 100 * 160


def test_missing_caller_audio_is_padded_and_a_backlog_bounded(tmp_path: Path) -> None:
    dump = CallDump(tmp_path, "c2", max_lag_frames=2)
    for _ in range(5):
        dump.bot(None)  # no caller audio at all: padded
    assert dump.caller_padded == 5
    for _ in range(10):
        dump.caller(_frame())  # a burst of 10 frames before one tick
    dump.bot(None)
    assert dump.caller_dropped_bytes == 7 * FRAME
    dump.close()
    dump.close()  # idempotent
    dump.bot(None)  # ignored after close
    assert sf.info(str(tmp_path / "c2.wav")).frames == 6 * 160


def test_event_log_is_bounded_and_timestamped(tmp_path: Path) -> None:
    now = [100.0]
    dump = CallDump(tmp_path, "../weird id", max_events=3, clock=lambda: now[0])
    assert dump.events_path.parent == tmp_path
    for i in range(5):
        now[0] += 0.5
        dump.event("transcript", role="caller", text=f"line {i}")
    dump.close()
    lines = [json.loads(x) for x in dump.events_path.read_text().splitlines()]
    assert [x["t"] for x in lines[:3]] == [0.5, 1.0, 1.5]
    assert [x["text"] for x in lines[:3]] == ["line 0", "line 1", "line 2"]
    assert lines[3] == {"t": 2.5, "type": "dump.truncated", "dropped": 2}
