"""Sans-I/O parts: completion rule, backoff, queue recovery, recorder bounds, settings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from audiosocket_gw.config import ConfigError
from audiosocket_gw.recordings.mixmonitor import CompletionDetector, Verdict
from audiosocket_gw.recordings.queue import RecordingDB, RecordingRow
from audiosocket_gw.recordings.recorder import CapturedFile, StereoRecorder, WavWriterThread
from audiosocket_gw.recordings.settings import RecordingSettings, backoff_delay


def test_detector_never_completes_before_hangup_nor_while_growing() -> None:
    d = CompletionDetector(stable_s=2.0, missing_s=10.0)
    assert d.observe(0.0, (100, 1)) is Verdict.WAIT
    assert d.observe(50.0, (100, 1)) is Verdict.WAIT  # stable for ages, but the call is up
    d.ended(60.0)
    assert d.observe(61.0, (100, 1)) is Verdict.WAIT  # stability counts from the hangup
    assert d.observe(61.5, (200, 2)) is Verdict.WAIT  # still being written
    assert d.observe(63.0, (200, 2)) is Verdict.WAIT
    assert d.observe(63.5, (200, 2)) is Verdict.COMPLETE


def test_detector_reports_a_missing_file_only_after_the_timeout() -> None:
    d = CompletionDetector(stable_s=1.0, missing_s=5.0)
    d.ended(0.0)
    assert d.observe(4.9, None) is Verdict.WAIT
    assert d.observe(5.0, None) is Verdict.MISSING


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_delay(n, 2.0, 10.0) for n in (1, 2, 3, 4, 99)] == [2, 4, 8, 10, 10]


def test_settings_from_env_and_validation() -> None:
    s = RecordingSettings.from_env(env={"AIGW_S3_BUCKET": "b", "AIGW_RECORDING_RETENTION_S": "5",
                                        "AIGW_TRANSCRIBE_KEY": "sk-secret"})
    assert s.s3_bucket == "b" and s.retention_s == 5.0 and not s.local_only
    assert "sk-secret" not in repr(s)
    assert RecordingSettings.from_env(env={}).local_only
    with pytest.raises(ConfigError):
        RecordingSettings.from_env(env={"AIGW_RECORDING_RETENTION_S": "soon"})
    with pytest.raises(ConfigError):
        RecordingSettings.from_env(env={"AIGW_S3_MULTIPART_CHUNK": "1024"})


def test_queue_recover_and_one_row_per_call(tmp_path: Path) -> None:
    db = RecordingDB(tmp_path / "q.sqlite")
    row = RecordingRow("c1", "t", "a", "gateway", "/x", "k", "RE", "pending", 0, "s", 1, 1.0, 2,
                       time.time(), 0.0)
    assert db.add(row) and not db.add(row)
    claimed = db.claim_upload(time.time())
    assert claimed is not None and claimed.state == "uploading" and claimed.attempts == 1
    assert db.claim_upload(time.time()) is None
    db.close()
    db = RecordingDB(tmp_path / "q.sqlite")  # "after a crash"
    assert db.recover() == (1, 0)
    again = db.claim_upload(time.time())
    assert again is not None and again.attempts == 2
    db.close()


def test_recorder_bounds_the_caller_backlog_and_writes_stereo(tmp_path: Path) -> None:
    writer = WavWriterThread()
    writer.start()
    done: list[CapturedFile] = []
    rec = StereoRecorder(writer, tmp_path / "r.wav", tmp_path / ".part" / "r.part", done.append)
    rec.caller(b"\x01\x00" * 8000)  # a 1 s burst: one frame played, the rest cut to 500 ms
    rec.bot(b"\x02\x00" * 160)
    assert rec.trimmed_bytes == 16000 - 320 - 8000
    for _ in range(59):
        rec.bot(b"\x02\x00" * 160)
    rec.close()
    writer.stop()
    (f,) = done
    assert f.error is None and f.frames == 60 * 160
    import soundfile as sf

    data, _ = sf.read(f.path, dtype="int16")
    assert data.shape == (9600, 2)
    assert (data[:4160, 0] == 1).all() and (data[4160:, 0] == 0).all()
    assert (data[:, 1] == 2).all()
    assert not (tmp_path / ".part" / "r.part").exists()
    assert np.count_nonzero(data) > 0
