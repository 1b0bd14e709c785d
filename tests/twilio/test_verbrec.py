"""twilio/verbrec.py: the files behind ``<Record>`` recordings as REST resources."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from audiosocket_gw.twilio import verbrec
from audiosocket_gw.twilio.ids import call_sid_for, recording_sid_for

CALL = "5f0c6d3e-8f53-4a8e-9d7e-0a4c2b9e1f00"


def test_note_load_list_delete(tmp_path: Path) -> None:
    call_sid = call_sid_for(CALL)
    sids = [recording_sid_for(CALL, i) for i in (1, 2)]
    for n, sid in enumerate(sids):
        (tmp_path / f"{sid}.wav").write_bytes(b"RIFF")
        verbrec.note(tmp_path, sid, call_sid, 2.0 + n, 1000.0 + n)
    meta = tmp_path / f"{sids[0]}.json"
    assert stat.S_IMODE(meta.stat().st_mode) == 0o600
    one = verbrec.load(tmp_path, sids[0])
    assert one is not None and (one.call_sid, one.duration_s) == (call_sid, 2.0)
    assert [r.sid for r in verbrec.for_call(tmp_path, call_sid)] == sids
    assert verbrec.delete(tmp_path, sids[0]) is True
    assert verbrec.load(tmp_path, sids[0]) is None
    assert [r.sid for r in verbrec.for_call(tmp_path, call_sid)] == sids[1:]
    assert verbrec.delete(tmp_path, sids[0]) is False


@pytest.mark.parametrize("sid", ["../../etc/passwd", "RE" + "g" * 32, "CA" + "0" * 32, ""])
def test_only_recording_sids_name_files(tmp_path: Path, sid: str) -> None:
    assert verbrec.load(tmp_path, sid) is None
    assert verbrec.delete(tmp_path, sid) is False
    assert verbrec.for_call(tmp_path, "../x") == []
    with pytest.raises(ValueError):
        verbrec.note(tmp_path, sid, call_sid_for(CALL), 1.0, 0.0)


def test_a_wav_without_metadata_or_garbage_metadata_is_not_listed(tmp_path: Path) -> None:
    sid = recording_sid_for(CALL, 1)
    (tmp_path / f"{sid}.wav").write_bytes(b"RIFF")
    assert verbrec.load(tmp_path, sid) is None
    (tmp_path / f"{sid}.json").write_text("{not json")
    assert verbrec.load(tmp_path, sid) is None
