"""The whole loop on the test bed: a reload hook that does not reload makes certkeeper roll back; senders then
report certificate-expired for that MX by mail (real Postfix into a real Dovecot, fetched over IMAPS by the daemon)
and by HTTPS POST; the daemon imports them past hostile mails and raises the alert naming that rollback."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certkeeper import pki
from certkeeper.alerts.notifier import AlertContent
from certkeeper.app import build_app
from certkeeper.config import Config, load_config
from certkeeper.store.sqlite import SqliteStore
from certkeeper.testbed.server import LOOPBACK, allocate_port
from tests.lifecycle_helpers import run_cli, write_config
from tests.test_daemon import daemon, daemon_log, wait_for
from tests.tlsrpt_fixtures import ReportMailbox, report_mailbox
from tests.tlsrpt_reports import gzip_bomb, gzipped, report, report_mail

__all__ = ["report_mailbox"]  # fixture used by name
pytestmark = pytest.mark.testbed

MX = "mail.example.test"
ALERTS = """
[alerts]
to = ["postmaster@example.test"]
from = "certkeeper@example.test"
smtp_host = "127.0.0.1"
smtp_port = 9
smtp_security = "none"
"""


def hook(tmp_path: Path, mailbox: ReportMailbox) -> Path:
    """Reloads Postfix only while ``reload-enabled`` exists: without it, the hook "succeeds" and reloads nothing."""
    path = tmp_path / "reload-postfix"
    path.write_text(f"#!/bin/sh\n[ -e {tmp_path / 'reload-enabled'} ] || exit 0\n"
                    f"exec /usr/sbin/postfix -c {mailbox.postfix.config_dir} reload\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def rolled_back(tmp_path: Path, report_mailbox: ReportMailbox) -> Iterator[tuple[Config, str]]:
    """certificate ``mail`` served by the mailbox's Postfix, installed once, then rolled back; its version."""
    port = allocate_port()
    certificates = textwrap.dedent(f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["{MX}"]
        reload = ["{hook(tmp_path, report_mailbox)}"]
        endpoints = ["smtp://{LOOPBACK}:{report_mailbox.postfix.ports['smtp']}"]
        verify_timeout = "2s"
        """) + ALERTS + textwrap.dedent(f"""
        [tlsrpt]
        imap = "{report_mailbox.imap_url}"
        password_file = "{report_mailbox.password_file}"
        ca_file = "{report_mailbox.ca_file}"
        listen = "{LOOPBACK}:{port}"
        certificate = "mail"
        alert_threshold = 10
        """)
    config = write_config(tmp_path, certificates)
    current = tmp_path / "state" / "certs" / "mail" / "current"
    report_mailbox.postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    (tmp_path / "reload-enabled").touch()
    app = build_app(config)
    try:
        assert [o.result for o in app.run_pass()] == ["renewed"], daemon_log_or_history(app)
        (tmp_path / "reload-enabled").unlink()
        (outcome,) = app.run_pass(force=True)
        assert outcome.result == "rolled-back", outcome.detail
        (rollback,) = [r for r in app.store.renewals("mail") if r.result == "rollback"]
    finally:
        app.close()
    yield config, rollback.version
    report_mailbox.postfix.use_certificate(report_mailbox.postfix.key_file, report_mailbox.postfix.fullchain_file)
    report_mailbox.postfix.reload()


def daemon_log_or_history(app: Any) -> str:
    return "; ".join(f"{r.result} {r.detail}" for r in app.store.renewals("mail"))


def expired(report_id: str, organization: str, failed: int) -> dict[str, Any]:
    now = pki.now_utc()
    return report(report_id, organization=organization, mx=MX, result="certificate-expired", failed=failed,
                  start=(now - timedelta(hours=1)).isoformat(), end=(now + timedelta(minutes=1)).isoformat())


def hostile_mails() -> list[bytes]:
    many = report_mail(expired("many-parts", "Hostile", 1), attachments=1000)
    bomb = report_mail(None, body=gzip_bomb(1))
    truncated = report_mail(None, body=gzipped(expired("truncated", "Hostile", 1))[:50])
    deep = report_mail(None, body=b"[" * 50_000, media_type="application/tlsrpt+json")
    wrong = report_mail(None, body=json.dumps({"report-id": 7}).encode(), media_type="application/tlsrpt+json")
    return [many, bomb, truncated, deep, wrong]


def post(port: int, ca_file: Path, body: bytes, media_type: str = "application/tlsrpt+gzip") -> str:
    """An HTTPS POST checked against the internal CA, to the name on certkeeper's certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((LOOPBACK, port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=MX) as tls:
        tls.sendall(f"POST /tlsrpt HTTP/1.1\r\nHost: {MX}\r\nContent-Type: {media_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def stored_ids(config: Config) -> set[str]:
    store = SqliteStore(config.settings.state_dir)
    try:
        return {r.report_id for r in store.tls_reports()}
    finally:
        store.close()


def tlsrpt_alerts(config: Config) -> list[tuple[str, AlertContent]]:
    store = SqliteStore(config.settings.state_dir)
    try:
        return [(a.key, AlertContent.from_body(a.body)) for a in store.pending_alerts() if a.key.startswith("tlsrpt:")]
    finally:
        store.close()


def test_reports_by_imaps_and_https_explain_a_failed_install(rolled_back: tuple[Config, str],
                                                            report_mailbox: ReportMailbox) -> None:
    config, version = rolled_back
    first, second = expired("google-1", "Google", 40), expired("microsoft-1", "Microsoft", 25)
    report_mailbox.mail(*hostile_mails(), report_mail(first), report_mail(second),
                        report_mail(first, media_type="application/tlsrpt+json"))  # the same report-id again
    with daemon(config) as process:
        assert wait_for(lambda: {"google-1", "microsoft-1"} <= stored_ids(config), 60), daemon_log(config)
        assert wait_for(lambda: tlsrpt_alerts(config), 30), daemon_log(config)
        ca_file = config.path.parent / "ca" / "root.pem"
        tlsrpt = load_config(config.path).tlsrpt
        assert tlsrpt is not None and tlsrpt.listen is not None
        port = tlsrpt.listen[1]
        assert wait_for(lambda: _listening(port), 30), daemon_log(config)
        assert post(port, ca_file, gzipped(first)).startswith("HTTP/1.1 200 ")  # stored already: no retry
        assert post(port, ca_file, gzipped(expired("yahoo-1", "Yahoo", 5))).startswith("HTTP/1.1 201 ")
        refused = post(port, ca_file, gzip_bomb(1))
        assert refused.startswith("HTTP/1.1 400 ") and "inflates to more than" in refused
        assert process.poll() is None, daemon_log(config)
        process.send_signal(signal.SIGHUP)  # the endpoint closes with the old configuration and opens again
        assert wait_for(lambda: "configuration reloaded" in daemon_log(config), 30), daemon_log(config)
        assert wait_for(lambda: _answers(port, ca_file), 30), daemon_log(config)
    assert stored_ids(config) == {"google-1", "microsoft-1", "yahoo-1"}
    ((key, alert),) = tlsrpt_alerts(config)
    facts = dict(alert.facts)
    assert key.startswith(f"tlsrpt:{MX}:certificate-expired:")
    assert facts["reported by"] == "Google, Microsoft"
    assert facts["failed sessions"] == "65"
    assert facts["most likely cause"].startswith(f"certificate 'mail': rolled back version {version} at ")
    assert "was not served after two reloads" in facts["most likely cause"]
    log = daemon_log(config)
    for problem in ("more than 50 MIME parts", "inflates to more than", "truncated gzip", "nested too deeply",
                    "$.date-range: missing"):
        assert problem in log, problem
    assert not list((report_mailbox.dovecot.maildir / "new").iterdir())  # every mail marked seen, none deleted

    summary = run_cli(config, "tlsrpt", "summary", "--json")
    assert summary.returncode == 0, summary.stderr
    (domain,) = json.loads(summary.stdout)["domains"]
    mail = next(mx for mx in domain["mx"] if mx["receiving_mx"] == MX)
    assert mail["failures"] == {"certificate-expired": 70}
    assert set(mail["reporters"]) == {"Google", "Microsoft", "Yahoo"}
    metrics = run_cli(config, "metrics")
    assert (f'certkeeper_tlsrpt_sessions_total{{policy_domain="example.test",receiving_mx="{MX}",'
            'result="certificate-expired"} 70') in metrics.stdout


def _answers(port: int, ca_file: Path) -> bool:
    try:
        return post(port, ca_file, gzipped(expired("yahoo-1", "Yahoo", 5))).startswith("HTTP/1.1 200 ")
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


