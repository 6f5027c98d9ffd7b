"""Who may change a path certkeeper trusts: the state directory, ``copy_to`` folders, hooks, secret files.

certkeeper runs as root (or its own service user) and writes keys, follows locks and runs programs.  If anyone
else can write to a folder on the way to one of those paths, they can swap a file for a symbolic link and make
root truncate ``/etc/shadow``, or replace a hook with their own program.  So before using such a path:

- the path and every folder above it must belong to root or to the user certkeeper runs as;
- none of them may be writable by group or others, except a parent with the sticky bit (``/tmp``), in which
  nobody can rename or remove an entry they do not own;
- files inside the state directory are opened with ``O_NOFOLLOW``: a symbolic link where a lock or a key should
  be is refused, never followed (belt and braces behind the folder checks).

The same rule as OpenSSH's ``safe_path`` for ``AuthorizedKeysCommand`` and sudo's checks of its plugins.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from certkeeper.errors import UnsafePath

_TRUSTED_GROUP = 0  # gid 0: only root's group may share write access to a trusted folder


def trusted_owners() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def check_trusted_dir(path: Path, what: str) -> None:
    """``path`` (a folder) and every folder above it may be changed only by root or the service user."""
    absolute = path.absolute()
    _check_chain(absolute, what, leaf_is_dir=True)
    real = absolute.resolve()
    if real != absolute:
        _check_chain(real, what, leaf_is_dir=True)


def check_trusted_file(path: Path, what: str, *, secret: bool = False) -> None:
    """``path`` (a file: a hook, a secret) and its folders may be changed only by root or the service user.

    With ``secret`` the file must also be unreadable by others (group read stays allowed: 0640 root:certkeeper).
    A missing file is left to the caller, which reports it in its own words.
    """
    absolute = path.absolute()
    real = absolute.resolve()
    for candidate in dict.fromkeys((absolute, real)):
        try:
            st = candidate.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            _check_owner(candidate, st, what)
            _check_chain(candidate.parent, what, leaf_is_dir=False)
            continue
        _check_chain(candidate.parent, what, leaf_is_dir=False)
        _check_owner(candidate, st, what)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not _shared_with_root_group(st):
            raise UnsafePath(what, candidate, _owner_name(st.st_uid), st.st_mode,
                             "is writable by others than root and the service user",
                             f"chmod go-w {candidate}")
        if secret and st.st_mode & stat.S_IRWXO:
            raise UnsafePath(what, candidate, _owner_name(st.st_uid), st.st_mode,
                             "is readable by every user of this host", f"chmod 0600 {candidate}")


def open_nofollow(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link as the last component, with a message naming the path."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            what, link = "state file", Path(path)
            raise UnsafePath(what, link, _owner_of(link), _mode_of(link),
                             "is a symbolic link, which certkeeper never follows inside its state directory",
                             f"remove it (rm {link}) and find out who created it") from None
        raise


READ_LIMIT = 64 << 20  # more than any key, certificate, version.json or CA file certkeeper writes


class NotRegularFile(OSError):
    """A file certkeeper reads that is a named pipe, a device or a folder: reading it could block forever or never
    end.  Its ``strerror`` says what it is ("is a named pipe, not a file")."""


def read_nofollow(path: Path | str, *, limit: int | None = READ_LIMIT) -> bytes:
    """The content of ``path``, refusing a symbolic link (see :func:`open_nofollow`), anything but a regular file
    (:class:`NotRegularFile`) and more than ``limit`` bytes, as :class:`OSError` naming ``path``: a named pipe in
    its place would block the pass forever (opened without waiting for a writer, then refused), a device or a
    huge file exhaust memory."""
    return read_nofollow_status(path, limit=limit)[0]


def read_nofollow_status(path: Path | str, *, limit: int | None = READ_LIMIT,
                         at_most: int | None = None) -> tuple[bytes, os.stat_result]:
    """:func:`read_nofollow`, with the file's ``fstat`` (its mode, as it was opened); ``at_most``: only that many
    bytes are read, the rest left for the caller to call too long (a passphrase)."""
    return _read_regular(open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK), path, limit, at_most)


def read_regular(path: Path | str, *, limit: int = READ_LIMIT) -> bytes:
    """:func:`read_nofollow` for files outside certkeeper's own folders (a mail daemon's certificate and key,
    which may well be links): links followed, the rest refused alike."""
    return _read_regular(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), path, limit, None)[0]


def fstat_regular(fd: int, path: Path | str) -> os.stat_result:
    """``fstat(fd)``, refusing anything but a regular file (:class:`NotRegularFile`)."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise NotRegularFile(errno.EINVAL, f"is {file_kind(status.st_mode)}, not a file", str(path))
    return status


def _read_regular(fd: int, path: Path | str, limit: int | None,
                  at_most: int | None) -> tuple[bytes, os.stat_result]:
    try:  # os.read on the descriptor: open, read, read, close (a file object would add two fstats, 1,000 a pass)
        status = fstat_regular(fd, path)
        chunks, size = [], 0
        while (at_most is None or size < at_most) and (chunk := os.read(fd, 1 << 16)):
            size += len(chunk)
            if limit is not None and size > limit:
                raise OSError(errno.EFBIG, f"is larger than {limit >> 20} MiB, which no key, certificate or "
                              "state file is", str(path))
            chunks.append(chunk)
        data = b"".join(chunks)
        return (data if at_most is None else data[:at_most]), status
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words: "a folder", "a character device" and so on."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _check_chain(leaf: Path, what: str, *, leaf_is_dir: bool) -> None:
    """Every existing folder from ``leaf`` up to ``/``: trusted owner, no foreign write access."""
    for index, folder in enumerate((leaf, *leaf.parents)):
        try:
            st = folder.lstat()
        except FileNotFoundError:
            continue  # created later by certkeeper itself, with its own modes
        if stat.S_ISLNK(st.st_mode):
            _check_owner(folder, st, what)
            continue  # the link's target is checked through the resolved path
        _check_owner(folder, st, what)
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not _shared_with_root_group(st)
        # A sticky parent (/tmp) is fine: others may not rename or remove the entry we own inside it.  The
        # folder itself (the state directory) must not be, or others could plant entries in it.
        sticky_parent = bool(st.st_mode & stat.S_ISVTX) and not (index == 0 and leaf_is_dir)
        if writable and not sticky_parent:
            raise UnsafePath(what, folder, _owner_name(st.st_uid), st.st_mode,
                             "is writable by others than root and the service user",
                             f"chmod go-w {folder}, or choose a folder only root can change")


def _check_owner(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid not in trusted_owners():
        raise UnsafePath(what, path, _owner_name(st.st_uid), st.st_mode,
                         "belongs to a user other than root and the service user",
                         f"chown root {path} (after checking what is in it)")


def _shared_with_root_group(st: os.stat_result) -> bool:
    return st.st_gid == _TRUSTED_GROUP and not st.st_mode & stat.S_IWOTH


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner_of(path: Path) -> str:
    try:
        return _owner_name(path.lstat().st_uid)
    except OSError:
        return "unknown"


def _mode_of(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except OSError:
        return 0
