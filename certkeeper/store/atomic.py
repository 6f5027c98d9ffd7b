"""Files that change as a whole: written beside their final name, fsynced, renamed into place.

Used for every file certkeeper writes that a daemon or a later run reads (installed pairs, copies, CA keys and
CRLs, ACME account keys, metrics): a reader sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from certkeeper.permissions import file_kind


def write_atomic(path: Path, data: bytes, *, mode: int, gid: int = -1, exclusive: bool = False,
                 dir_mode: int = 0o755) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode`` (and group ``gid`` when not -1).

    The temporary file gets its final mode before any byte is written, so a key is never readable by others,
    even for an instant.  ``exclusive`` keeps an existing file (for a first-use key two processes may race to
    create): returns False when ``path`` was already there and was left alone.  Missing folders above it are
    made with ``dir_mode``, whatever the umask.
    """
    import tempfile  # here: it loads shutil (and zlib, bz2, lzma) and random, which a pass writing nothing never needs

    refuse_special(path)
    make_dirs(path.parent, mode=dir_mode)
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
    fsync_dir(path.parent, follow=True)  # the folder mkstemp and the rename went to: /etc/ssl/private as a link too
    return True


def refuse_special(path: Path) -> None:
    """Refuse to replace anything but a file: a ``copy_to`` of ``/dev/null`` or ``metrics -o /dev/stdout`` would
    rename a key over the device node (or the link to it), which every program on the host writes to."""
    try:
        status = path.stat()  # through a link: /dev/stdout is one, to a terminal or a pipe
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(status.st_mode):
        raise FileExistsError(errno.EEXIST, f"is {file_kind(status.st_mode)}, which certkeeper never replaces "
                              "(name a file)", str(path))


def write_new_files(files: Sequence[tuple[str, bytes, int, int]]) -> None:
    """Create each ``(path, data, mode, gid)`` (none may exist), write it and fsync it; the caller fsyncs the
    folder once.

    For the files of a folder that is itself renamed into place when complete (a version folder): nobody reads
    them before that rename, so each needs no temporary name, no rename and no fsync of the folder of its own.
    Like :func:`write_atomic`, each file has its final mode before any byte is written (``gid``: -1 keeps the
    group).  Every file is fsynced, as one at a time would be; but the writeback of all of them is started
    before the first fsync (:func:`start_writeback`), so that a journalling file system commits them together:
    on ext4 the first fsync's journal commit carries every file's blocks and the fsyncs after it find nothing
    left to do, where six files written and fsynced one by one cost six commits.
    """
    descriptors: list[int] = []
    try:
        for path, data, mode, gid in files:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            descriptors.append(fd)
            os.fchmod(fd, mode)
            if gid >= 0:
                os.fchown(fd, -1, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            start_writeback(fd)
        for fd in descriptors:
            os.fsync(fd)
    finally:
        for fd in descriptors:
            os.close(fd)


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting (Linux's ``sync_file_range``
    with ``SYNC_FILE_RANGE_WRITE``, as PostgreSQL does before its fsyncs).  Advice only: it makes nothing
    durable, the fsync that follows does; where the call is missing it is skipped."""
    call = _sync_file_range()
    if call is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or None (not Linux).  ctypes is loaded only by a pass that writes a version."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def make_dirs(path: Path | str, *, mode: int, gid: int = -1) -> bool:
    """Create ``path`` and missing folders above it with exactly ``mode`` (and group ``gid``), whatever the umask;
    True when ``path`` itself was made here (and so has them).

    ``mkdir(mode=...)`` is masked by the umask: under systemd's ``UMask=0077`` a 0750 folder would come out 0700
    and a group-readable key behind it unreadable by that group; under umask 000 a 0755 one would be 0777.
    Existing folders are left as they are.  Made with ``mode`` (never wider than asked), then given it exactly;
    asked of the kernel first, so a folder that exists costs one ``mkdir`` and a new one two calls.
    """
    try:
        os.mkdir(path, mode)  # noqa: PTH102 (a str or a Path: a version folder's are str, 1,000 a pass)
    except FileExistsError:  # there already, or another process made it first
        return False
    except FileNotFoundError:  # a folder above is missing: made first, with the same mode
        make_dirs(Path(path).parent, mode=mode, gid=gid)
        try:
            os.mkdir(path, mode)  # noqa: PTH102
        except FileExistsError:
            return False
    os.chmod(path, mode)  # noqa: PTH101
    if gid >= 0:
        os.chown(path, -1, gid)
    return True


def set_dir_mode(path: Path | str, *, mode: int, gid: int = -1) -> None:
    """Give an existing folder exactly ``mode`` (and group ``gid``).

    Changed only where it differs: a chmod that changes nothing still dirties the inode (its ctime), which the
    next fsync in that file system then writes to the journal (once per installed version, 1,000 a pass).
    """
    status = os.stat(path)  # noqa: PTH116 (a str or a Path, as for make_dirs)
    if not stat.S_ISDIR(status.st_mode):  # a file where the folder belongs: left as it is, and said
        raise NotADirectoryError(errno.ENOTDIR, "something other than a folder is in the way (move it aside)",
                                 str(path))
    if stat.S_IMODE(status.st_mode) != mode:
        os.chmod(path, mode)  # noqa: PTH101
    if gid >= 0 and status.st_gid != gid:
        os.chown(path, -1, gid)


def fsync_dir(path: Path | str, *, follow: bool = False) -> None:
    """Make a rename in ``path`` durable (the directory entry, not only the file's bytes); ``path`` itself a
    symbolic link is refused unless ``follow`` (a folder the rename already went through)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
