"""The internal CA's directory on disk: layout, encrypted keys, the passphrase, and the index of serials.

Layout of ``ca_dir`` (0700: only the user certkeeper runs as may list it)::

    root.pem            the root certificate (public; what clients trust)
    root.key            the root's private key, encrypted; absent once exported for an offline root
    intermediate.pem    the issuing CA's certificate
    intermediate.key    its private key, encrypted; the only key day-to-day issuing needs
    index.jsonl         append-only: one JSON object per issued or revoked serial
    crl.pem, crl.der    the latest CRL (DER is what a ``crl_url`` usually serves)
    crlnumber           the last CRL number used (RFC 5280 5.2.3: monotonically increasing)
    archive/            intermediates replaced by a rollover, kept to verify what they signed
    .lock               flock(2) target serializing init, rollover, revoke and CRL writes

Every whole-file write goes to a temporary file beside its target, is fsynced and renamed into place, so a
crash leaves the old or the new file, never half of one.  The index is the exception on purpose: see
:func:`append_record`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from certkeeper import pki
from certkeeper.config import CaIssuerConfig
from certkeeper.config.resolve import secret_mode_problem
from certkeeper.errors import CaError
from certkeeper.permissions import (
    NotRegularFile,
    check_trusted_dir,
    check_trusted_file,
    fstat_regular,
    open_nofollow,
    read_nofollow,
    read_nofollow_status,
)
from certkeeper.store.atomic import fsync_dir, make_dirs, write_atomic
from certkeeper.values import field, frozen, mutable

_json_string = json.encoder.encode_basestring_ascii

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate.key"
INDEX = "index.jsonl"
CRL_PEM = "crl.pem"
CRL_DER = "crl.der"
CRL_NUMBER = "crlnumber"
ARCHIVE = "archive"
LOCK = ".lock"

#: Files whose presence means "a CA lives here": ``ca init`` refuses to replace them without ``--force``.
CA_FILES = (ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY, INDEX)


#: OpenSSL's limit for a PEM passphrase (PEM_BUFSIZE - 1); a longer one cannot encrypt or decrypt a key.
MAX_PASSPHRASE = 1023


def read_passphrase(config: CaIssuerConfig) -> bytes:
    """The passphrase the CA keys are encrypted with, from ``passphrase_file`` or ``passphrase_env``.

    Only a trailing line break is removed (editors add one); other whitespace is part of the passphrase.
    The file gets the checks ``config check`` makes, so what it calls wrong is not used anyway.
    """
    if config.passphrase_file is not None:
        path = config.passphrase_file
        check_trusted_file(path, f"issuers.{config.name}.passphrase_file")
        try:
            text, st = read_nofollow_status(path, at_most=MAX_PASSPHRASE + 3)  # a byte past the limit and CRLF
        except FileNotFoundError:
            raise CaError(config.name, f"passphrase file {path} does not exist; create it "
                          f"(mode 0600) or fix issuers.{config.name}.passphrase_file") from None
        except NotRegularFile as exc:
            raise CaError(config.name, f"passphrase file {path} {exc.strerror}; expected a file holding "
                          f"the passphrase (issuers.{config.name}.passphrase_file)") from None
        except OSError as exc:
            raise CaError(config.name, f"passphrase file {path} cannot be read ({exc.strerror})") from None
        problem = secret_mode_problem(path, st.st_mode)
        if problem:
            found, expected, hint = problem
            raise CaError(config.name, f"passphrase file {path} has {found}, expected {expected}; {hint} "
                          f"(issuers.{config.name}.passphrase_file)")
        source = f"passphrase file {path}"
    elif config.passphrase_env is not None:
        value = os.environ.get(config.passphrase_env)
        if value is None:
            raise CaError(config.name, f"environment variable {config.passphrase_env} (passphrase_env) is not set")
        text = value.encode()
        source = f"environment variable {config.passphrase_env}"
    else:
        raise CaError(config.name, f"no passphrase configured: set issuers.{config.name}.passphrase_file or "
                      "passphrase_env (CA keys are never stored unencrypted)")
    passphrase = text.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise CaError(config.name, f"the {source} is empty")
    if len(passphrase) > MAX_PASSPHRASE:
        raise CaError(config.name, f"the passphrase in the {source} is longer than {MAX_PASSPHRASE} bytes, "
                      "OpenSSL's limit for encrypting a key; choose a shorter one")
    return passphrase


def check_new_ca_dir(issuer: str, ca_dir: Path) -> None:
    """``ca init`` renames a fresh folder onto ``ca_dir``: that needs a folder or nothing there, not a link."""
    try:
        st = ca_dir.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CaError(issuer, f"ca_dir {ca_dir} cannot be examined ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise CaError(issuer, f"ca_dir {ca_dir} is a symbolic link (to {ca_dir.readlink()}); `ca init` would "
                      "replace the link, not fill its target: set ca_dir to the folder itself")
    if not stat.S_ISDIR(st.st_mode):
        raise CaError(issuer, f"ca_dir {ca_dir} is a file, not a folder; move it away or choose another ca_dir")


def create_ca_dir(ca_dir: Path, files: dict[str, tuple[bytes, int]], *, replace_suffix: str | None) -> Path | None:
    """Write ``files`` (name -> content, mode) into a fresh sibling directory, then rename it to ``ca_dir``.

    A failure leaves nothing half made.  With ``replace_suffix`` an existing ``ca_dir`` is first renamed to
    ``<ca_dir>.<suffix>`` and returned: never deleted, its keys signed certificates that may still be in service.
    """
    make_dirs(ca_dir.parent, mode=0o755)
    check_trusted_dir(ca_dir.parent, "ca_dir")
    staging = Path(tempfile.mkdtemp(prefix=f".{ca_dir.name}.new-", dir=ca_dir.parent))  # mkdtemp makes it 0700
    replaced = None
    try:
        for name, (data, mode) in files.items():
            write_atomic(staging / name, data, mode=mode)
        if replace_suffix is not None:
            replaced = ca_dir.with_name(f"{ca_dir.name}.{replace_suffix}")
            ca_dir.rename(replaced)
        elif ca_dir.is_dir():
            ca_dir.rmdir()  # empty: a directory prepared by the administrator or a package
        staging.rename(ca_dir)
        fsync_dir(ca_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replaced


def file_stamp(path: Path) -> tuple[int, int]:
    """(inode, mtime): changes when a file is replaced by rename, as every write here does."""
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


@contextlib.contextmanager
def locked(issuer: str, ca_dir: Path) -> Iterator[None]:
    """Hold the CA directory's lock: two ``ca revoke`` runs must not both pick the same CRL number."""
    check_trusted_dir(ca_dir, "ca_dir")
    try:
        fd = open_nofollow(ca_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except (FileNotFoundError, NotADirectoryError):
        raise _no_ca_dir(issuer, ca_dir) from None
    except OSError as exc:
        raise CaError(issuer, f"the lock {ca_dir / LOCK} cannot be opened ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def require_ca_dir(issuer: str, ca_dir: Path) -> None:
    """Before reading a missing index as "nothing issued yet": the CA directory itself must be there."""
    if not ca_dir.is_dir():
        raise _no_ca_dir(issuer, ca_dir)


def _no_ca_dir(issuer: str, ca_dir: Path) -> CaError:
    return CaError(issuer, f"the CA directory {ca_dir} does not exist (run `certkeeper ca init` if no CA was ever "
                   "created here)")


def read_file(issuer: str, path: Path, what: str) -> bytes:
    check_trusted_dir(path.parent, "ca_dir")
    try:
        return read_nofollow(path)
    except FileNotFoundError:
        raise CaError(issuer, f"{what} {path} is missing; the CA directory is incomplete "
                      "(run `certkeeper ca init` if no CA was ever created here)") from None
    except OSError as exc:
        raise CaError(issuer, f"{what} {path} cannot be read ({exc.strerror})") from None


def load_certificate(issuer: str, path: Path, what: str) -> x509.Certificate:
    try:
        return pki.load_certificates(read_file(issuer, path, what))[0]
    except ValueError as exc:
        raise CaError(issuer, f"{what} {path} is corrupted ({exc}); restore it from a backup") from None


def load_private_key(issuer: str, path: Path, passphrase: bytes, what: str) -> pki.PrivateKey:
    """Decrypt a CA key, telling a damaged file apart from a wrong passphrase (both are ValueError in pki)."""
    pem = read_file(issuer, path, what)
    complete = pem.lstrip().startswith(b"-----BEGIN ") and b"-----END " in pem
    if not complete:
        raise CaError(issuer, f"{what} {path} is corrupted (not a complete PEM private key, truncated?); "
                      "restore it from a backup")
    try:
        return pki.load_key(pem, passphrase)
    except ValueError as exc:
        if b"ENCRYPTED" not in pem:
            raise CaError(issuer, f"{what} {path} is not encrypted ({exc}); refusing to use a CA key stored "
                          "in clear") from None
        raise CaError(issuer, f"cannot decrypt {what} {path}: wrong passphrase, or the file is damaged") from None


@frozen
class IssuedEntry:
    serial: int
    certificate: str
    names: tuple[str, ...]
    not_after: datetime
    issued_at: datetime


@frozen
class RevokedEntry:
    serial: int
    reason: str
    revoked_at: datetime
    certificate: str = ""
    not_after: datetime | None = None


@mutable
class Index:
    """The index replayed: issued serials in issuance order, and revocations by serial."""

    issued: list[IssuedEntry] = field(default_factory=list)
    revoked: dict[int, RevokedEntry] = field(default_factory=dict)

    def find(self, serial: int) -> IssuedEntry | None:
        return next((entry for entry in self.issued if entry.serial == serial), None)

    def latest_for(self, certificate: str) -> IssuedEntry | None:
        return next((entry for entry in reversed(self.issued) if entry.certificate == certificate), None)


def issued_line(entry: IssuedEntry) -> bytes:
    """The index line of an issued certificate: the same JSON ``json.dumps`` would give, three times faster.

    Issuing is the hot path (see tests/bench/bench_internal_ca.py); strings still go through the JSON string
    encoder, so a certificate name with quotes or newlines cannot break the line.
    """
    names = ",".join(map(_json_string, entry.names))
    return (f'{{"event":"issued","serial":"{entry.serial:x}","certificate":{_json_string(entry.certificate)},'
            f'"names":[{names}],"not_after":"{entry.not_after.isoformat()}",'
            f'"issued_at":"{entry.issued_at.isoformat()}"}}\n').encode()


def revoked_record(entry: RevokedEntry) -> dict[str, Any]:
    return {"event": "revoked", "serial": format(entry.serial, "x"), "certificate": entry.certificate,
            "reason": entry.reason, "revoked_at": entry.revoked_at.isoformat(),
            "not_after": entry.not_after.isoformat() if entry.not_after else None}


#: Written after a torn last line (a power cut or a full disk cut a write short) before the next record, so the
#: record gets a line of its own and the reader knows the line above is a fragment, not damage to report.
TORN_MARKER = b'{"event":"torn","note":"the line above was cut short by a crash or a full disk and is ignored"}'


def open_index_for_append(path: Path) -> int:
    """An ``O_APPEND`` descriptor on the index, refusing anything but a regular file (writes to a FIFO would
    block once its buffer is full); a torn last line is ended first with :data:`TORN_MARKER`, because appending
    onto the fragment would glue the new record to it and make the whole index unreadable."""
    fd = open_nofollow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
    try:
        st = fstat_regular(fd, path)
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            os.write(fd, b"\n" + TORN_MARKER + b"\n")
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_record(path: Path, record: dict[str, Any], *, durable: bool) -> None:
    """Append one line with a single ``write(2)`` on an ``O_APPEND`` descriptor.

    One write of a short line to an O_APPEND file lands whole and after every other process's line, so the
    daemon and a ``ca revoke`` can append at once without a lock, and nothing is ever rewritten.  ``durable``
    adds an fsync: revocations get it (rare, and losing one would un-revoke a key).  Issuance records do not:
    an fsync costs more than signing the certificate, the data survives a crash of certkeeper itself (it is in
    the kernel's page cache), and only a power cut within the writeback interval can lose the last lines; the
    certificate itself is kept by the store, and revoking it by certificate works without the index.
    """
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = open_index_for_append(path)
    try:
        os.write(fd, line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


class IndexWriter:
    """An ``O_APPEND`` descriptor on the index kept open between issues: one ``write(2)`` per certificate.

    :meth:`reopen` (called periodically by the issuer) follows a replaced or recreated ``ca_dir``.  Safe to share
    between threads: a reopen never closes the descriptor under an append in another thread (which would then
    write to a closed descriptor, or to whatever file took its number meanwhile: a key being installed).
    """

    def __init__(self, issuer: str, path: Path) -> None:
        self.issuer = issuer
        self.path = path
        self._fd: int | None = None
        self._finalizer: weakref.finalize[[int], IndexWriter] | None = None
        self._mutex = threading.Lock()

    def reopen(self) -> None:
        with self._mutex:
            self._reopen()

    def _reopen(self) -> None:
        self._close()
        try:
            fd = open_index_for_append(self.path)
        except OSError as exc:
            raise CaError(self.issuer, f"index {self.path} cannot be opened for writing ({exc.strerror})") from None
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def append(self, line: bytes) -> None:
        """Not fsynced, for the reasons given at :func:`append_record`."""
        with self._mutex:
            if self._fd is None:
                self._reopen()
            assert self._fd is not None
            if os.write(self._fd, line) < len(line):  # a full disk: end the fragment before the next record
                self._reopen()

    def close(self) -> None:
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._fd = self._finalizer = None


def read_index(issuer: str, path: Path) -> Index:
    """Replay the index.  A last line without its newline is a write cut short by a crash, and is skipped; so is
    such a fragment that the next writer ended with :data:`TORN_MARKER`."""
    index = Index()
    try:
        data = read_nofollow(path, limit=None)  # an index grows with every certificate: no size a CA outgrows
    except FileNotFoundError:
        return index
    except NotRegularFile as exc:
        raise CaError(issuer, f"index {path} {exc.strerror}; expected the CA's index file") from None
    except OSError as exc:
        raise CaError(issuer, f"index {path} cannot be read ({exc.strerror})") from None
    lines = data.split(b"\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line == TORN_MARKER:
            continue
        try:
            record = json.loads(line)
            if record["event"] == "issued":
                index.issued.append(IssuedEntry(
                    serial=int(record["serial"], 16), certificate=record["certificate"],
                    names=tuple(record["names"]), not_after=datetime.fromisoformat(record["not_after"]),
                    issued_at=datetime.fromisoformat(record["issued_at"])))
            elif record["event"] == "revoked":
                not_after = record.get("not_after")
                entry = RevokedEntry(
                    serial=int(record["serial"], 16), reason=record["reason"],
                    revoked_at=datetime.fromisoformat(record["revoked_at"]),
                    certificate=record.get("certificate", ""),
                    not_after=datetime.fromisoformat(not_after) if not_after else None)
                index.revoked.setdefault(entry.serial, entry)
            else:
                msg = f"unknown event {record['event']!r}"
                raise ValueError(msg)  # noqa: TRY301 - reported with the line number like every bad line
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
            if number < len(lines) and lines[number] == TORN_MARKER:
                continue
            raise CaError(issuer, f"index {path} is corrupted at line {number} ({exc}); "
                          "fix or remove that line") from None
    return index


def read_crl_number(issuer: str, path: Path) -> int:
    try:
        return int(read_nofollow_status(path, at_most=64)[0].decode().strip())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise CaError(issuer, f"CRL number file {path} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise CaError(issuer, f"CRL number file {path} is corrupted (not a number)") from None
