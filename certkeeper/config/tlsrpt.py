"""``[tlsrpt]``: where TLS reports (RFC 8460) come from, and when they owe an alert."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from certkeeper.config.table import Table, did_you_mean
from certkeeper.values import frozen


@frozen
class ImapMailbox:
    """``imaps://user@host[:port]/MAILBOX``: where report mails arrive (RFC 8460 section 5.3)."""

    user: str
    host: str
    port: int
    mailbox: str

    @property
    def url(self) -> str:
        port = "" if self.port == IMAPS_PORT else f":{self.port}"
        return f"imaps://{self.user}@{self.host}{port}/{self.mailbox}"


IMAPS_PORT = 993


def parse_imap_url(url: str) -> ImapMailbox:
    """Raises ValueError saying what was expected."""
    parts = urlsplit(url)
    expected = ""
    if parts.scheme != "imaps":
        expected = "an imaps:// URL (IMAP over implicit TLS: the password never travels over plain IMAP)"
    elif parts.password is not None:
        expected = "a URL without a password (the password goes in password_file)"
    elif not parts.username or not parts.hostname:
        expected = "imaps://USER@HOST/MAILBOX"
    if expected:
        raise ValueError(expected)
    try:
        port = parts.port or IMAPS_PORT
    except ValueError:
        expected = "a port from 1 to 65535"
        raise ValueError(expected) from None
    assert parts.username is not None and parts.hostname is not None
    return ImapMailbox(unquote(parts.username), parts.hostname, port, unquote(parts.path.lstrip("/")) or "INBOX")


@frozen
class TlsrptConfig:
    """``[tlsrpt]``: TLS reports (RFC 8460) fetched over IMAPS and/or POSTed to an HTTPS endpoint."""

    imap: ImapMailbox | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    delete_after_import: bool = False
    fetch_interval: timedelta = timedelta(minutes=15)
    listen: tuple[str, int] | None = None
    certificate: str | None = None
    alert_threshold: int = 10


def parse_tlsrpt(t: Table, certificates: Mapping[str, Any]) -> TlsrptConfig:
    """``[tlsrpt]``; ``certificates`` are the names of the ``[certificates.NAME]`` tables."""
    imap_text = t.string("imap", None)
    imap = None
    if imap_text is not None:
        try:
            imap = parse_imap_url(imap_text)
        except ValueError as exc:
            t.error("imap", repr(imap_text), str(exc))
    password_file = t.absolute_path("password_file", None)
    if imap is not None and password_file is None:
        t.error("password_file", "nothing", "the file holding the IMAP password when imap is set",
                "secrets live in files, never in this file")
    if "password" in t.data:
        t.error("password", "a password in the configuration file", "password_file, a file only root can read",
                "secrets live in files, never in this file")
        t.seen.add("password")
    listen = t.parsed("listen", _parse_listen, None, 'host:port such as "127.0.0.1:8444"')
    certificate = t.string("certificate", None)
    if listen is not None and certificate is None:
        t.error("certificate", "nothing", "the managed certificate the HTTPS endpoint serves, such as \"mail\"",
                "listen needs it")
    if certificate is not None and certificate not in certificates:
        t.error("certificate", repr(certificate), "the name of a [certificates.NAME] table",
                did_you_mean(certificate, certificates))
    config = TlsrptConfig(
        imap=imap,
        password_file=password_file,
        ca_file=t.existing_file("ca_file", None),
        delete_after_import=t.boolean("delete_after_import", False),
        fetch_interval=t.duration("fetch_interval", timedelta(minutes=15), minimum=timedelta(minutes=1)),
        listen=listen,
        certificate=certificate,
        alert_threshold=t.integer("alert_threshold", 10, minimum=1),
    )
    if imap is None and listen is None:
        t.error("imap", "neither imap nor listen", "an IMAPS mailbox to fetch reports from, an HTTPS listen "
                "address to receive them on, or both")
    t.finish()
    return config


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    return host.removeprefix("[").removesuffix("]"), int(port)
