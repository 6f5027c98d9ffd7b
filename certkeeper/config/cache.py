"""The configuration file's TOML, kept read: a ``renew`` from cron reads the same file every run, and tomllib (pure
Python) took a sixth of a ``renew`` of 1,000 certificates with nothing due just to read its 1,000 tables again.

What is kept is tomllib's answer for the file's exact bytes, nothing certkeeper made of it: every run still
checks every key and value (:func:`certkeeper.config.load.parse_config`), so a mistake is reported as before.
A file that is not valid TOML is never kept, and one byte changed in the file is a new file.

Where
    ``$CERTKEEPER_CACHE_DIR`` when set (empty: no cache), else ``/var/cache/certkeeper`` for root and
    ``$XDG_CACHE_HOME/certkeeper`` (``~/.cache/certkeeper``) for anyone else; one file per configuration path,
    ``toml-<hash of the path>``, rewritten when the file changes.

Trust
    The folder is used only when it is a real folder (not a link) owned by the user running certkeeper that
    no one else may write, and an entry only when it is a regular file of that user, opened without following
    links, that names the SHA-256 of the configuration's bytes and of its own content.  Anything else (a
    missing, foreign or damaged entry, a full disk, a read-only file system) is a miss: the file is read with
    tomllib as if there were no cache, and nothing is said.  Values tomllib gives that :mod:`marshal` cannot
    hold (TOML dates and times) leave that configuration uncached.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat
import sys
from pathlib import Path

from certkeeper.permissions import fstat_regular

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CACHE_ENV = "CERTKEEPER_CACHE_DIR"
_MAGIC = b"certkeeper toml cache 1\n"
# marshal's format belongs to the interpreter: an entry written by another Python is another entry.
_FORMAT = f"{sys.implementation.cache_tag}/{marshal.version}".encode()
_DIGEST = 32


def cache_dir() -> Path | None:
    """The folder entries live in, or None for no cache."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    if os.geteuid() == 0:
        return Path("/var/cache/certkeeper")
    base = Path(os.environ.get("XDG_CACHE_HOME", ""))
    if not base.is_absolute():  # unset, or relative, which the XDG specification says to ignore
        base = Path("~/.cache").expanduser()
    return base / "certkeeper" if base.is_absolute() else None


def cached_toml(path: Path, raw: bytes, parse: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    """``parse(raw)``, or what it gave for these same bytes of the file at ``path`` in an earlier run.

    Errors of ``parse`` are raised as they come; the cache itself never fails a run."""
    folder = cache_dir()
    if folder is None:
        return parse(raw)
    key = hashlib.sha256(_FORMAT + b"\0" + raw).digest()
    name = "toml-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    folder_fd = _open_folder(folder)
    try:
        data = _read(folder_fd, name, key) if folder_fd is not None else None
        if data is None:
            data = parse(raw)
            if folder_fd is not None:
                _write(folder_fd, name, key, data)
        return data
    finally:
        if folder_fd is not None:
            os.close(folder_fd)


def _open_folder(folder: Path) -> int | None:
    for attempt in (1, 2):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if attempt == 2 or not _make_folder(folder):
                return None
            continue
        except OSError:  # a link, a file, no permission
            return None
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return fd
        os.close(fd)
        return None
    return None


def _make_folder(folder: Path) -> bool:
    try:
        folder.mkdir(0o700)
    except FileExistsError:
        return True
    except OSError:  # no parent, read-only, no permission: no cache
        return False
    return True


def _read(folder_fd: int, name: str, key: bytes) -> dict[str, Any] | None:
    try:  # O_NONBLOCK: a named pipe in the entry's place is opened without waiting for a writer, then refused
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return None
    try:
        info = fstat_regular(fd, name)
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_size > 8 << 20:
            return None
        blob = os.read(fd, info.st_size + 1)
    except OSError:  # not a regular file (NotRegularFile), or unreadable
        return None
    finally:
        os.close(fd)
    head = len(_MAGIC) + 2 * _DIGEST
    if blob[:len(_MAGIC)] != _MAGIC or blob[len(_MAGIC):len(_MAGIC) + _DIGEST] != key:
        return None  # another file's, or this file before it changed
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC) + _DIGEST:head]:
        return None  # torn or damaged
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _write(folder_fd: int, name: str, key: bytes, data: dict[str, Any]) -> None:
    try:
        payload = marshal.dumps(data)
    except ValueError:  # a TOML date or time: not something marshal holds
        return
    temporary = f".{name}.{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(temporary, flags, 0o600, dir_fd=folder_fd)
        except FileExistsError:  # left by a killed process that had this pid
            os.unlink(temporary, dir_fd=folder_fd)
            fd = os.open(temporary, flags, 0o600, dir_fd=folder_fd)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_MAGIC + key + hashlib.sha256(payload).digest() + payload)
        os.rename(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder_fd)
