"""Fetching report mails over IMAPS (RFC 8460 section 5.3).  The only module that imports imaplib.

IMAPS only (implicit TLS, RFC 8314), with the server's certificate verified against the system trust or the
configured ``ca_file`` before the password is sent.  Each unseen mail is read with ``BODY.PEEK[]`` (which does not
set ``\\Seen``), handed to ``handle`` and only then flagged ``\\Seen``: a crash in between means the mail is read
again on the next pass, and the store drops the report as a duplicate of its ``report-id``.  A mail is deleted
only with ``delete_after_import`` and only when every report in it was imported; a refused mail stays, seen, for
a person to look at.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from certkeeper import tls
from certkeeper.config import ImapMailbox
from certkeeper.deadline import Deadline
from certkeeper.errors import ReportSourceFailed, StoreError
from certkeeper.tlsrpt.intake import MAX_MAIL_BYTES
from certkeeper.values import frozen

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("certkeeper.tlsrpt")

TIMEOUT = 30.0
MAX_MAILS_PER_FETCH = 500  # a backlog drains over several passes instead of holding one for hours
MAX_RESPONSE_BYTES = MAX_MAIL_BYTES + 1024 * 1024  # one command's whole answer: one mail and its framing
MAX_LINE_BYTES = 1_000_000  # imaplib's own cap on one line
_COMMANDS = frozenset({b"CAPABILITY", b"LOGIN", b"SELECT", b"UID SEARCH", b"UID FETCH", b"UID STORE", b"EXPUNGE",
                       b"LOGOUT", b"NOOP"})  # named in messages; what follows the name (a password) never is


@frozen
class Fetched:
    """What one fetch did: mails read, marked seen, deleted."""

    read: int = 0
    seen: int = 0
    deleted: int = 0


# handle(where, mail bytes or None when too big to fetch, size) -> True when every report in it was imported
MailHandler = Callable[[str, bytes | None, int], bool]


def fetch_reports(mailbox: ImapMailbox, password_file: Path, handle: MailHandler, *,
                  ca_file: Path | None = None, delete_after_import: bool = False,
                  timeout: float = TIMEOUT) -> Fetched:
    """Read every unseen mail in ``mailbox`` once, hand it to ``handle``, then flag it."""
    password = _read_password(mailbox, password_file)
    context = tls.client_context(ca_file)  # verified, host name checked: the password follows the handshake
    try:
        client = _BoundedIMAP4(mailbox.url, mailbox.host, mailbox.port, ssl_context=context, timeout=timeout)
    except tls.CertificateVerifyFailed as exc:
        raise ReportSourceFailed(mailbox.url, f"the server's certificate does not verify ({exc.verify_message}); "
                                 "the password was not sent") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ReportSourceFailed(mailbox.url, f"cannot connect: {exc}") from None
    try:
        return _fetch(client, mailbox, password, handle, delete_after_import)
    except imaplib.IMAP4.error as exc:
        raise ReportSourceFailed(mailbox.url, f"the IMAP server said: {_text(exc)}") from None
    except (TimeoutError, OSError) as exc:
        raise ReportSourceFailed(mailbox.url, f"connection lost: {exc}") from None
    finally:
        if not client.broken:
            with contextlib.suppress(OSError, imaplib.IMAP4.error, ReportSourceFailed):
                client.logout()


class _BoundedIMAP4(imaplib.IMAP4_SSL):
    """imaplib with a size cap on literals and on each answer, and a deadline for each command.

    imaplib reads a literal (``{N}``) whole before certkeeper sees it, keeps every untagged line, and its timeout
    is per socket read: a server announcing ``RFC822.SIZE 100`` and then sending 400 MB, or dripping a byte at a
    time, would hold the fetch and its memory without bound.  A literal over :data:`MAX_MAIL_BYTES` is refused
    as it is announced, and a command (the greeting, too) has ``timeout`` for its whole answer.
    """

    def __init__(self, source: str, host: str, port: int, *, ssl_context: tls.Context, timeout: float) -> None:
        self._source = source
        self._limit = timeout
        self._deadline = Deadline(timeout)
        self._stage = "the greeting"
        self._received = 0
        self._buffer = b""
        self.broken = False  # an answer was cut off unread: nothing the server says next can be parsed
        super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:  # noqa: ARG002 - imaplib's signature
        raw = socket.create_connection((self.host, self.port), self._deadline.remaining(self._late))
        try:
            self._deadline.arm(raw, self._late)  # the handshake waits on it: what is left after connecting
            secure: socket.socket = self.ssl_context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        return secure

    def send(self, data: ReadableBuffer) -> None:
        """A new command: a fresh deadline and byte count for its answer."""
        words = bytes(data).split(b" ", 3)
        name = b" ".join(words[1:3]) if len(words) > 2 and words[1].upper() == b"UID" else b"".join(words[1:2])
        name = name.strip().upper()
        if name in _COMMANDS:
            self._stage = name.decode()
        self._deadline = Deadline(self._limit)
        self._received = 0
        self._deadline.arm(self.sock, self._late)
        super().send(data)

    def readline(self) -> bytes:
        while (end := self._buffer.find(b"\n") + 1) == 0:
            if len(self._buffer) > MAX_LINE_BYTES:
                msg = f"got more than {MAX_LINE_BYTES} bytes"
                raise self.error(msg)
            if not self._receive():
                end = len(self._buffer)
                break
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def read(self, size: int) -> bytes:
        if size > MAX_MAIL_BYTES:
            msg = (f"the server announced a literal of {size} bytes in its answer to {self._stage}, more than the "
                   f"{MAX_MAIL_BYTES} a report mail may have; not read")
            raise self._fail(msg)
        while len(self._buffer) < size and self._receive():
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _receive(self) -> bool:
        """Append what the socket has to the buffer; False at the end of the stream."""
        self._deadline.arm(self.sock, self._late)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise self._late() from None
        self._received += len(chunk)
        if self._received > MAX_RESPONSE_BYTES:
            msg = f"the answer to {self._stage} went on past {MAX_RESPONSE_BYTES} bytes; not read further"
            raise self._fail(msg)
        self._buffer += chunk
        return bool(chunk)

    def _late(self) -> ReportSourceFailed:
        return self._fail(f"no complete answer to {self._stage} within {self._limit:g} s")

    def _fail(self, detail: str) -> ReportSourceFailed:
        self.broken = True
        with contextlib.suppress(OSError, AttributeError):
            self.shutdown()
        return ReportSourceFailed(self._source, detail)


def _fetch(client: imaplib.IMAP4_SSL, mailbox: ImapMailbox, password: str, handle: MailHandler,
           delete_after_import: bool) -> Fetched:
    try:
        client.login(mailbox.user, password)
    except imaplib.IMAP4.error as exc:
        raise ReportSourceFailed(mailbox.url, f"login refused: {_text(exc)}") from None
    status, data = client.select(_quote(mailbox.mailbox))
    if status != "OK":
        raise ReportSourceFailed(mailbox.url, f"cannot open mailbox {mailbox.mailbox!r}: {_text(data)}")
    status, data = client.uid("SEARCH", "UNSEEN")
    uids = [u.decode() for u in data[0].split()] if status == "OK" and data and isinstance(data[0], bytes) else []
    read = seen = deleted = 0
    for uid in uids[:MAX_MAILS_PER_FETCH]:
        where = f"{mailbox.url} UID {uid}"
        size = _size(client, uid)
        body = _body(client, uid) if size <= MAX_MAIL_BYTES else None
        read += 1
        try:
            imported = handle(where, body, size)
        except StoreError:
            raise  # not flagged: the mail is read again once the store is back
        except Exception:  # a bug meeting one hostile mail must not block the mailbox: kept, seen, logged
            log.exception("%s: importing this mail failed; it stays in the mailbox, marked seen", where)
            imported = False
        client.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)")
        seen += 1
        if delete_after_import and imported:
            client.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
            deleted += 1
    if deleted:
        client.expunge()
    return Fetched(read, seen, deleted)


def _size(client: imaplib.IMAP4_SSL, uid: str) -> int:
    status, data = client.uid("FETCH", uid, "(RFC822.SIZE)")
    match = re.search(rb"RFC822\.SIZE (\d+)", data[0] if data and isinstance(data[0], bytes) else b"")
    return int(match.group(1)) if status == "OK" and match else 0


def _body(client: imaplib.IMAP4_SSL, uid: str) -> bytes:
    status, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
    for item in data if status == "OK" else []:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            return item[1]
    return b""


def _read_password(mailbox: ImapMailbox, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ReportSourceFailed(mailbox.url, f"cannot read the password file {path}: {exc.strerror}") from None


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        value = b" ".join(v for v in value if isinstance(v, bytes))
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
