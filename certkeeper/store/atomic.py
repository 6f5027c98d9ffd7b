"""Files that change as a whole: written beside their final name, fsynced, renamed into place.

Used for every file certkeeper writes that a daemon or a later run reads (installed pairs, copies, CA keys and
CRLs, ACME account keys, metrics): a reader sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int, gid: int = -1, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode`` (and group ``gid`` when not -1).

    The temporary file gets its final mode before any byte is written, so a key is never readable by others,
    even for an instant.  ``exclusive`` keeps an existing file (for a first-use key two processes may race to
    create): returns False when ``path`` was already there and was left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".certkeeper-tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if gid >= 0:
            os.fchown(fd, -1, gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        else:
            Path(temporary).replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(temporary).unlink()
    fsync_dir(path.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry, not only the file's bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
