"""``<Record>`` recordings as REST ``Recording`` resources: the adapter.

The recordings pipeline (``audiosocket_gw.recordings``) keeps one whole-call recording
per call, keyed by call id (``Record=true``, MixMonitor). ``<Record>`` makes any
number per call: ``twiml_exec`` writes each one as
``<data dir>/recordings/twiml/{RecordingSid}.wav`` (``record_verb_path``); this module
writes, next to it, what the REST API needs to serve it as a ``Recording``:

* ``{RecordingSid}.json``: ``{"call_sid", "duration_s", "started_at"}`` (mode 0600);
* ``calls/{CallSid}.txt``: the call's ``<Record>`` SIDs, one a line (the per-call
  index behind ``Calls/{Sid}/Recordings.json`` and ``Recordings.json?CallSid=``).

``twilio/rest.py`` merges them with the pipeline's rows (fetch, list for a call,
``.wav``/``.mp3``, delete). Every path comes from a checked SID (``is_sid``), never
from a client's text. Pure file I/O: call these in a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .ids import CALL_PREFIX, RECORDING_PREFIX, is_sid

__all__ = ["MAX_PER_CALL", "VerbRecording", "delete", "for_call", "load", "note"]

MAX_PER_CALL: Final = 1000
"""Most ``<Record>`` recordings listed for one call."""
_MAX_META: Final = 4096


@dataclass(frozen=True)
class VerbRecording:
    sid: str
    call_sid: str
    duration_s: float
    started_at: float
    path: Path


def _meta_path(folder: Path, sid: str) -> Path | None:
    return folder / f"{sid}.json" if is_sid(RECORDING_PREFIX, sid) else None


def _index_path(folder: Path, call_sid: str) -> Path | None:
    return folder / "calls" / f"{call_sid}.txt" if is_sid(CALL_PREFIX, call_sid) else None


def _write_private(path: Path, data: bytes, *, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "ab" if append else "wb") as f:
        f.write(data)


def note(folder: Path, sid: str, call_sid: str, duration_s: float, started_at: float) -> None:
    """Record that ``{sid}.wav`` (already written) belongs to call ``call_sid``."""
    meta, index = _meta_path(folder, sid), _index_path(folder, call_sid)
    if meta is None or index is None:
        raise ValueError("a RecordingSid and a CallSid are required")
    body = json.dumps({"call_sid": call_sid, "duration_s": duration_s,
                       "started_at": started_at}).encode()
    tmp = meta.with_name(f".{meta.name}.part")
    _write_private(tmp, body)
    os.replace(tmp, meta)
    _write_private(index, sid.encode() + b"\n", append=True)


def load(folder: Path, sid: str) -> VerbRecording | None:
    """The ``<Record>`` recording ``sid`` (None: not one, or its WAV is gone)."""
    meta = _meta_path(folder, sid)
    if meta is None:
        return None
    wav = folder / f"{sid}.wav"
    try:
        with open(meta, "rb") as f:
            raw = f.read(_MAX_META + 1)
        if len(raw) > _MAX_META or not wav.is_file():
            return None
        data = json.loads(raw)
        call_sid = str(data["call_sid"])
        duration, started = float(data["duration_s"]), float(data["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not is_sid(CALL_PREFIX, call_sid):
        return None
    return VerbRecording(sid, call_sid, duration, started, wav)


def for_call(folder: Path, call_sid: str) -> list[VerbRecording]:
    """Call ``call_sid``'s ``<Record>`` recordings still there, oldest first."""
    index = _index_path(folder, call_sid)
    if index is None:
        return []
    try:
        with open(index, "rb") as f:
            lines = f.read(MAX_PER_CALL * 40).decode("ascii", "replace").split()
    except OSError:
        return []
    out: list[VerbRecording] = []
    for sid in dict.fromkeys(lines):  # unique, in order
        rec = load(folder, sid)
        if rec is not None and rec.call_sid == call_sid:
            out.append(rec)
    return out[:MAX_PER_CALL]


def delete(folder: Path, sid: str) -> bool:
    """Remove recording ``sid`` (its WAV and its metadata); False if it was not there."""
    meta = _meta_path(folder, sid)
    if meta is None:
        return False
    found = False
    for path in (folder / f"{sid}.wav", meta):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            found = True
    return found
