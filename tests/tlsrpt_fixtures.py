"""A report mailbox on the test bed: a real Postfix delivering into a real Dovecot's Maildir, read over IMAPS."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.dovecot import PASSWORD, USER, Dovecot
from certkeeper.testbed.postfix import Postfix, maildir_delivery
from certkeeper.testbed.server import LOOPBACK, wait_until

REPORT_ADDRESS = f"{USER}@reports.example.test"


@dataclass
class ReportMailbox:
    postfix: Postfix
    dovecot: Dovecot
    ca_file: Path
    password_file: Path

    @property
    def imap_url(self) -> str:
        return f"imaps://{USER}@{LOOPBACK}:{self.dovecot.ports['imaps']}/INBOX"

    def delivered(self) -> int:
        return sum(len(list((self.dovecot.maildir / box).glob("*"))) for box in ("new", "cur")
                   if (self.dovecot.maildir / box).is_dir())

    def mail(self, *messages: bytes) -> None:
        """Send through Postfix's smtpd on port 25 (as a reporting sender would) and wait for the Maildir."""
        before = self.delivered()
        with smtplib.SMTP(LOOPBACK, self.postfix.ports["smtp"], timeout=30) as client:
            for message in messages:
                client.sendmail("tlsrpt@company-x.example", [REPORT_ADDRESS], message)
        assert wait_until(lambda: self.delivered() >= before + len(messages), timeout=30, alive=lambda: True), \
            f"Postfix did not deliver {len(messages)} mails into {self.dovecot.maildir}: see {self.postfix.log_path}"


@pytest.fixture(scope="module")
def report_mailbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReportMailbox]:
    directory = tmp_path_factory.mktemp("tlsrpt-mailbox")
    ca = TestCA("certkeeper test CA for the report mailbox")
    with Dovecot(directory / "dovecot", ca=ca) as dovecot:
        main_cf, master_cf = maildir_delivery({REPORT_ADDRESS: dovecot.maildir})
        with Postfix(directory / "postfix", ca=ca, listeners=["smtp"], main_cf=main_cf,
                     master_cf_extra=master_cf) as postfix:
            password_file = directory / "imap-password"
            password_file.write_text(PASSWORD + "\n")
            password_file.chmod(0o600)
            yield ReportMailbox(postfix, dovecot, dovecot.ca_file, password_file)
