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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from certkeeper import tls
from certkeeper.config import ImapMailbox
from certkeeper.errors import ReportSourceFailed, StoreError
from certkeeper.tlsrpt.intake import MAX_MAIL_BYTES

log = logging.getLogger("certkeeper.tlsrpt")

TIMEOUT = 30.0
MAX_MAILS_PER_FETCH = 500  # a backlog drains over several passes instead of holding one for hours


@dataclass(frozen=True)
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
        client = imaplib.IMAP4_SSL(mailbox.host, mailbox.port, ssl_context=context, timeout=timeout)
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
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()


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
