"""Reports mailed through a real Postfix into a real Dovecot, fetched over IMAPS with a verified certificate."""

from __future__ import annotations

import re
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from certkeeper import tls
from certkeeper.config import parse_imap_url
from certkeeper.errors import ReportSourceFailed, StoreError
from certkeeper.testbed.certs import TestCA
from certkeeper.tlsrpt.imap import fetch_reports
from certkeeper.tlsrpt.intake import read_mail
from certkeeper.tlsrpt.report import TlsReport
from tests.hostile_peer import HostilePeer
from tests.lifecycle_helpers import run_cli, write_config
from tests.tlsrpt_fixtures import ReportMailbox, report_mailbox
from tests.tlsrpt_reports import report, report_mail

__all__ = ["report_mailbox"]  # fixture used by name


class Collected:
    def __init__(self) -> None:
        self.reports: list[TlsReport] = []
        self.refused: list[str] = []

    def __call__(self, where: str, data: bytes | None, size: int) -> bool:
        assert data is not None
        intake = read_mail(data, where)
        self.reports += intake.reports
        self.refused += [str(r) for r in intake.refused]
        return not intake.refused


def test_unseen_report_mails_are_fetched_once_and_marked_seen(report_mailbox: ReportMailbox) -> None:
    report_mailbox.mail(report_mail(report("imap-1")),
                        report_mail(report("imap-2"), media_type="application/tlsrpt+json"),
                        report_mail(report("imap-bad"), body=b"\x1f\x8b truncated"))
    mailbox = parse_imap_url(report_mailbox.imap_url)
    collected = Collected()
    fetched = fetch_reports(mailbox, report_mailbox.password_file, collected, ca_file=report_mailbox.ca_file)
    assert (fetched.read, fetched.seen, fetched.deleted) == (3, 3, 0)
    assert sorted(r.report_id for r in collected.reports) == ["imap-1", "imap-2"]
    assert len(collected.refused) == 1 and "not a valid gzip stream" in collected.refused[0]
    assert report_mailbox.dovecot.maildir.joinpath("cur").is_dir()
    again = Collected()
    assert fetch_reports(mailbox, report_mailbox.password_file, again, ca_file=report_mailbox.ca_file).read == 0
    assert report_mailbox.delivered() >= 3  # marked seen, never deleted


def test_delete_after_import_deletes_only_what_was_imported(report_mailbox: ReportMailbox) -> None:
    before = report_mailbox.delivered()
    report_mailbox.mail(report_mail(report("imap-delete")),
                        report_mail(None, body=b"{", media_type="application/tlsrpt+json"))
    collected = Collected()
    fetched = fetch_reports(parse_imap_url(report_mailbox.imap_url), report_mailbox.password_file, collected,
                            ca_file=report_mailbox.ca_file, delete_after_import=True)
    assert (fetched.read, fetched.deleted) == (2, 1)
    assert [r.report_id for r in collected.reports] == ["imap-delete"]
    assert report_mailbox.delivered() == before + 1  # the refused mail stays for a person to look at


def test_an_unverified_certificate_gets_no_password(report_mailbox: ReportMailbox, tmp_path: Path) -> None:
    other_ca = TestCA("not the CA of this Dovecot").write_cert(tmp_path / "other-ca.pem")
    with pytest.raises(ReportSourceFailed, match=r"imaps://alice@127\.0\.0\.1:\d+/INBOX: the server's certificate "
                                                 r"does not verify .*the password was not sent"):
        fetch_reports(parse_imap_url(report_mailbox.imap_url), report_mailbox.password_file, Collected(),
                      ca_file=other_ca)


def test_a_wrong_password_is_a_clear_error(report_mailbox: ReportMailbox, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password")
    with pytest.raises(ReportSourceFailed, match="login refused"):
        fetch_reports(parse_imap_url(report_mailbox.imap_url), wrong, Collected(), ca_file=report_mailbox.ca_file)


@pytest.mark.parametrize(("url", "problem"), [
    ("imap://reports@mail.example.org/INBOX", "an imaps:// URL"),
    ("imaps://reports:secret@mail.example.org/INBOX", "without a password"),
    ("imaps://mail.example.org/INBOX", "imaps://USER@HOST/MAILBOX"),
])
def test_only_imaps_urls_without_passwords_are_accepted(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_imap_url(url)


def test_the_documented_url_parses() -> None:
    mailbox = parse_imap_url("imaps://reports@mail.example.org/INBOX")
    assert (mailbox.user, mailbox.host, mailbox.port, mailbox.mailbox) == ("reports", "mail.example.org", 993, "INBOX")


def test_tlsrpt_fetch_and_summary_on_the_command_line(report_mailbox: ReportMailbox, tmp_path: Path) -> None:
    config = write_config(tmp_path, textwrap.dedent(f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]

        [tlsrpt]
        imap = "{report_mailbox.imap_url}"
        password_file = "{report_mailbox.password_file}"
        ca_file = "{report_mailbox.ca_file}"
        """))
    report_mailbox.mail(report_mail(report("cli-1", organization="Google", failed=3, succeeded=97)))
    fetched = run_cli(config, "tlsrpt", "fetch")
    assert fetched.returncode == 0, fetched.stderr
    assert "1 mails read, 1 marked seen, 0 deleted" in fetched.stdout
    summary = run_cli(config, "tlsrpt", "summary", "--since", "3650d")
    assert summary.returncode == 0, summary.stderr
    assert "  mail.example.test: 0 succeeded, 3 failed (certificate-expired 3)" in summary.stdout
    assert "    Google: 0 succeeded, 3 failed" in summary.stdout
    bad = run_cli(config, "tlsrpt", "summary", "--since", "a week")
    assert bad.returncode == 64 and "--since 'a week': expected a duration such as 24h, 7d or 30d" in bad.stderr


def test_an_unreachable_mailbox_exits_69(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("x")
    config = write_config(tmp_path, textwrap.dedent(f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]

        [tlsrpt]
        imap = "imaps://reports@127.0.0.1:9/INBOX"
        password_file = "{password}"
        """))
    fetched = run_cli(config, "tlsrpt", "fetch")
    assert fetched.returncode == 69
    assert "certkeeper: TLS reports from imaps://reports@127.0.0.1:9/INBOX: cannot connect:" in fetched.stderr


def test_a_mail_over_the_size_cap_is_refused_without_fetching_it(report_mailbox: ReportMailbox) -> None:
    # Postfix refuses mail over message_size_limit (10 MB) at SMTP; a mailbox filled some other way may not.
    big = report_mail(report("too-big"), body=b"\0" * (11 * 1024 * 1024), media_type="application/tlsrpt+json")
    new = report_mailbox.dovecot.maildir / "new"
    new.mkdir(parents=True, exist_ok=True)
    (new / "1700000000.big.certkeeper").write_bytes(big)
    seen: list[tuple[str, bool, int]] = []

    def handle(where: str, data: bytes | None, size: int) -> bool:
        seen.append((where, data is None, size))
        return False

    fetched = fetch_reports(parse_imap_url(report_mailbox.imap_url), report_mailbox.password_file, handle,
                            ca_file=report_mailbox.ca_file, delete_after_import=True)
    assert (fetched.read, fetched.deleted) == (1, 0)
    ((where, skipped, size),) = seen
    assert where.endswith("/INBOX UID 1") or " UID " in where
    assert skipped and size > 11 * 1024 * 1024


def test_a_mail_that_breaks_the_import_is_marked_seen_and_the_next_imported(report_mailbox: ReportMailbox) -> None:
    report_mailbox.mail(report_mail(report("poison")), report_mail(report("after-poison")))
    collected = Collected()

    def handle(where: str, data: bytes | None, size: int) -> bool:
        assert data is not None
        if b"poison" in data and b"after-poison" not in data:
            msg = "a bug meeting a hostile mail"
            raise RuntimeError(msg)
        return collected(where, data, size)

    fetched = fetch_reports(parse_imap_url(report_mailbox.imap_url), report_mailbox.password_file, handle,
                            ca_file=report_mailbox.ca_file, delete_after_import=True)
    assert (fetched.read, fetched.seen, fetched.deleted) == (2, 2, 1)
    assert [r.report_id for r in collected.reports] == ["after-poison"]


def test_a_store_error_leaves_the_mail_unseen_for_the_next_pass(report_mailbox: ReportMailbox) -> None:
    report_mailbox.mail(report_mail(report("store-down")))

    def store_down(where: str, data: bytes | None, size: int) -> bool:
        msg = "state.db: disk I/O error"
        raise StoreError(msg)

    mailbox = parse_imap_url(report_mailbox.imap_url)
    with pytest.raises(StoreError):
        fetch_reports(mailbox, report_mailbox.password_file, store_down, ca_file=report_mailbox.ca_file)
    collected = Collected()
    fetch_reports(mailbox, report_mailbox.password_file, collected, ca_file=report_mailbox.ca_file)
    assert [r.report_id for r in collected.reports] == ["store-down"]


def test_a_missing_password_file_is_named(report_mailbox: ReportMailbox, tmp_path: Path) -> None:
    with pytest.raises(ReportSourceFailed, match=r"cannot read the password file .*/nothing-here: No such file"):
        fetch_reports(parse_imap_url(report_mailbox.imap_url), tmp_path / "nothing-here", Collected())


class HostileImaps(HostilePeer):
    """An IMAPS server no real one is (so not Dovecot): it drips its greeting a byte every ``drip`` seconds, or
    says a mail has ``RFC822.SIZE 100`` and then sends a ``BODY[]`` literal of ``body_size`` bytes."""

    def __init__(self, directory: Path, *, drip: float = 0.0, body_size: int = 100) -> None:
        ca = TestCA("certkeeper test CA for a hostile IMAPS server")
        key_file, chain_file = ca.issue(["127.0.0.1"]).write(directory)
        self.ca_file = ca.write_cert(directory / "ca.pem")
        self.drip = drip
        self.body_size = body_size
        super().__init__(tls.server_context(chain_file, key_file))
        self.url = f"imaps://reports@127.0.0.1:{self.port}/INBOX"

    def speak(self, connection: socket.socket, lines: Any) -> None:
        if not self.greet(connection, b"* OK IMAP4rev1 drip\r\n" if self.drip else b"* OK IMAP4rev1 hostile\r\n",
                          self.drip):
            return
        while line := lines.readline():
            tag, _, command = line.rstrip(b"\r\n").partition(b" ")
            if command.upper().startswith(b"CAPABILITY"):
                connection.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
            elif b"UID SEARCH" in command.upper():
                connection.sendall(b"* SEARCH 1\r\n")
            elif b"RFC822.SIZE" in command.upper():
                connection.sendall(b"* 1 FETCH (UID 1 RFC822.SIZE 100)\r\n")
            elif b"BODY.PEEK[]" in command.upper():
                connection.sendall(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % self.body_size)
                for _ in range(self.body_size // 65536):
                    connection.sendall(b"A" * 65536)
                connection.sendall(b"A" * (self.body_size % 65536) + b")\r\n")
            connection.sendall(tag + b" OK done\r\n")


def test_a_literal_larger_than_a_report_mail_is_refused_as_it_is_announced(tmp_path: Path) -> None:
    """RFC822.SIZE 100, then a BODY[] of 11 MB: imaplib read it whole (400 MB took 438 MB) before the cap."""
    server = HostileImaps(tmp_path, body_size=11 * 1024 * 1024)
    password = tmp_path / "password"
    password.write_text("secret")
    handled: list[int] = []

    def handle(where: str, data: bytes | None, size: int) -> bool:
        handled.append(size)
        return True

    try:
        with pytest.raises(ReportSourceFailed, match=rf"{re.escape(server.url)}: the server announced a literal of "
                                                     rf"{11 * 1024 * 1024} bytes in its answer to UID FETCH, more "
                                                     r"than the 10485760 a report mail may have; not read"):
            fetch_reports(parse_imap_url(server.url), password, handle, ca_file=server.ca_file)
        assert handled == []
    finally:
        server.stop()


def test_an_imaps_server_dripping_its_greeting_fails_at_the_timeout(tmp_path: Path) -> None:
    """A byte every 0.2 s never trips a per-read timeout of 1 s (the old fetch went on); a command's whole
    answer, the greeting's too, gets 1 s."""
    server = HostileImaps(tmp_path, drip=0.2)
    password = tmp_path / "password"
    password.write_text("secret")
    try:
        started = time.monotonic()
        with pytest.raises(ReportSourceFailed, match=rf"{re.escape(server.url)}: no complete answer to the "
                                                     r"greeting within 1 s"):
            fetch_reports(parse_imap_url(server.url), password, Collected(), ca_file=server.ca_file, timeout=1.0)
        assert time.monotonic() - started < 4.0
    finally:
        server.stop()
