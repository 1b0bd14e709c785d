"""Files that hold phone numbers or call audio: owner-only, whatever the umask.

Recordings, debug dumps and both SQLite databases are created 0600 and the
directories the gateway creates for them 0700 (the systemd unit also sets
``UMask=0027``). Directories that already exist are left alone: the data dir may be
a directory the operator chose (even the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700

__all__ = ["DIR_MODE", "FILE_MODE", "create_private", "open_private_text", "private_dir",
           "secure_sqlite"]


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents 0700 (existing ones are not changed)."""
    p = Path(path)
    missing: list[Path] = []
    cur = p
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask
    return p


def create_private(path: str | os.PathLike[str], *, truncate: bool = True) -> None:
    """Create (or truncate) ``path`` as an empty 0600 file; an existing file becomes 0600.

    Open it afterwards with any library (libsndfile...): the mode stays.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def open_private_text(path: str | os.PathLike[str]) -> IO[str]:
    """``open(path, "w", encoding="utf-8")``, but the file is 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "w", encoding="utf-8")


def secure_sqlite(path: str | os.PathLike[str]) -> None:
    """Before ``sqlite3.connect``: the parent dir exists (0700 if created here) and the
    database is 0600. SQLite gives its ``-wal`` and ``-shm`` files the database's mode;
    ones left by an older version are tightened too."""
    p = Path(path)
    private_dir(p.parent)
    create_private(p, truncate=False)
    for suffix in ("-wal", "-shm", "-journal"):
        side = p.with_name(p.name + suffix)
        if side.exists():
            os.chmod(side, FILE_MODE)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``:
    a reader polling for ``path`` never sees it half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
