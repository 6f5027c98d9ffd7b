"""Alert mail: real SMTP servers on loopback (aiosmtpd) over STARTTLS and implicit TLS, with authentication."""

from __future__ import annotations

import email.utils
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme

from certkeeper.alerts.notifier import Notifier
from certkeeper.config import AlertsConfig
from certkeeper.errors import AlertDeliveryFailed
from certkeeper.events import (
    CertificateInstalled,
    CertificateIssued,
    ConfigReloadRejected,
    EndpointFailed,
    EndpointRecovered,
    RenewalFailed,
    RolledBack,
    ServedCertificateStale,
)
from certkeeper.store.sqlite import SqliteStore
from certkeeper.testbed.server import allocate_port
from certkeeper.testbed.smtp_sink import SmtpSink
from tests.configs import internal_ca_config
from tests.hostile_peer import HostilePeer

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
USER, PASSWORD = "certkeeper", "s3cret pass"




class Sink:
    """A relay for one test: the test bed's SMTP sink, spoken to with STARTTLS (``starttls``) or implicit TLS
    (``tls``); with ``auth`` it requires AUTH with USER and PASSWORD.  Stopped and started again on the same port."""

    def __init__(self, security: str, cert: trustme.LeafCert, *, auth: bool = False) -> None:
        directory = Path(tempfile.mkdtemp(prefix="certkeeper-test-sink-"))  # removed by the sinks fixture
        cert_file, key_file = directory / "relay.pem", directory / "relay.key"
        cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_file))
        self.security = security
        self.server = SmtpSink(directory, cert_file=cert_file, key_file=key_file,
                               username=USER if auth else None, password=PASSWORD if auth else None)

    @property
    def port(self) -> int:
        return self.server.tls_port if self.security == "tls" else self.server.port

    @property
    def messages(self) -> list[EmailMessage]:
        return self.server.messages

    @property
    def logins(self) -> list[tuple[str, bool]]:
        return self.server.logins

    def start(self) -> Sink:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def relay_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def bundle(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started
    for sink in started:
        sink.stop()
        shutil.rmtree(sink.server.directory, ignore_errors=True)


def alerts_config(sink: Sink, **overrides: Any) -> AlertsConfig:
    values: dict[str, Any] = dict(
        to=("postmaster@example.org", "ops@example.org"), sender="certkeeper@mail.example.org",
        smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security=sink.security, smtp_timeout=timedelta(seconds=5))
    values.update(overrides)
    return AlertsConfig(**values)


def notifier(tmp_path: Path, config: AlertsConfig) -> Notifier:
    return Notifier(config, SqliteStore(tmp_path / "state"))


def subject(message: EmailMessage) -> str:
    # Python's folder may fold right after "Subject:", and its parser then keeps the leading space; MUAs don't.
    return str(message["Subject"]).strip()


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return str(plain.get_content()), str(rich.get_content())


def test_starttls_with_authentication_delivers_a_verified_mail(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path, password_file: Path,
) -> None:
    """STARTTLS to a relay whose certificate verifies against smtp_ca_bundle; the password file's newline is cut."""
    sink = Sink("starttls", relay_cert, auth=True).start()
    sinks.append(sink)
    config = alerts_config(sink, smtp_ca_bundle=bundle, smtp_username=USER, smtp_password_file=password_file)
    n = notifier(tmp_path, config)
    n.observe_certificate("mail", "mail.example.org", NOW - timedelta(days=88), NOW + timedelta(days=2), NOW,
                          names=["mail.example.org", "smtp.example.org"])
    report = n.deliver(NOW)
    assert report.sent == 1 and report.route.startswith("relay ")
    assert sink.logins == [(USER, True)]
    assert len(sink.messages) == 1
    assert n.store.pending_alerts() == []


def test_implicit_tls_with_authentication_delivers(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path, password_file: Path,
) -> None:
    """SMTPS (implicit TLS) with AUTH reaches the relay."""
    sink = Sink("tls", relay_cert, auth=True).start()
    sinks.append(sink)
    config = alerts_config(sink, smtp_ca_bundle=bundle, smtp_username=USER, smtp_password_file=password_file)
    n = notifier(tmp_path, config)
    n.handle(RolledBack(NOW, "mail", "v2", "v1", "smtps://mail.example.org:465 serves the old certificate"))
    assert n.deliver(NOW).sent == 1
    assert sink.logins == [(USER, True)]
    assert subject(sink.messages[0]) == "[certkeeper] CRITICAL mail rolled back to v1"


def test_wrong_password_keeps_the_alert_pending(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """A refused login is reported with what to check, never with the password, and the alert stays queued."""
    sink = Sink("starttls", relay_cert, auth=True).start()
    sinks.append(sink)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle, smtp_username=USER, smtp_password_file=wrong))
    n.handle(ConfigReloadRejected(NOW, "/etc/certkeeper/certkeeper.toml", "alerts.to: found nothing"))
    report = n.deliver(NOW)
    assert report.sent == 0 and "authentication failed" in report.error and "not-it" not in report.error
    [pending] = n.store.pending_alerts()
    assert pending.attempts == 1 and "authentication failed" in pending.last_error


def test_untrusted_relay_falls_back_to_the_fallback_relay(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """When the relay's own certificate does not verify, the alert goes through fallback_smtp_host."""
    stranger = trustme.CA().issue_cert("127.0.0.1")
    broken = Sink("starttls", stranger).start()
    fallback = Sink("starttls", relay_cert).start()
    sinks += [broken, fallback]
    config = alerts_config(broken, smtp_ca_bundle=bundle, fallback_smtp_host="127.0.0.1",
                           fallback_smtp_port=fallback.port)
    n = notifier(tmp_path, config)
    n.handle(EndpointFailed(NOW, "mail", f"smtp://127.0.0.1:{broken.port}", "CRITICAL",
                            "certificate-expired: the certificate expired 2 days ago"))
    report = n.deliver(NOW)
    assert report.sent == 1 and report.route.startswith("fallback ")
    assert broken.messages == [] and len(fallback.messages) == 1


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_a_relay_whose_certificate_fails_never_sees_auth_nor_the_mail(
    tmp_path: Path, sinks: list[Sink], bundle: Path, password_file: Path, security: str,
) -> None:
    """Without the opt-in, an unverified relay gets nothing: no AUTH, no mail; the alert stays queued."""
    broken = Sink(security, trustme.CA().issue_cert("127.0.0.1"), auth=True).start()
    sinks.append(broken)
    n = notifier(tmp_path, alerts_config(broken, smtp_ca_bundle=bundle, smtp_username=USER,
                                         smtp_password_file=password_file))
    n.handle(RenewalFailed(NOW, "mail", "urn:ietf:params:acme:error:rateLimited: too many certificates",
                           NOW + timedelta(hours=3)))
    report = n.deliver(NOW)
    assert report.sent == 0 and "certificate not trusted" in report.error
    assert 'smtp_tls_fallback = "unverified-no-auth"' in report.error
    assert broken.logins == [] and broken.messages == []
    assert len(n.store.pending_alerts()) == 1


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_the_opt_in_unverified_fallback_sends_without_auth_and_alerts_about_itself(
    tmp_path: Path, sinks: list[Sink], bundle: Path, password_file: Path, security: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """smtp_tls_fallback = "unverified-no-auth": the mail goes, the password does not, and an alert says so."""
    broken = Sink(security, trustme.CA().issue_cert("127.0.0.1")).start()  # takes mail without AUTH
    sinks.append(broken)
    n = notifier(tmp_path, alerts_config(broken, smtp_ca_bundle=bundle, smtp_username=USER,
                                         smtp_password_file=password_file, smtp_tls_fallback="unverified-no-auth"))
    n.handle(RenewalFailed(NOW, "mail", "urn:ietf:params:acme:error:rateLimited: too many certificates",
                           NOW + timedelta(hours=3)))
    with caplog.at_level(logging.WARNING, logger="certkeeper.alerts.notifier"):
        report = n.deliver(NOW)
    assert report.sent == 1 and "without certificate verification and without AUTH" in report.route
    assert [subject(m) for m in broken.messages][1:] == [
        f"[certkeeper] WARNING alert relay 127.0.0.1:{broken.port} fails certificate verification"]
    assert any("WITHOUT verifying its certificate and without AUTH" in r.getMessage() for r in caplog.records)
    assert n.store.pending_alerts() == []
    n.handle(RenewalFailed(NOW, "other", "again", NOW + timedelta(hours=3)))
    n.deliver(NOW)
    assert len(broken.messages) == 3  # the relay alert is not repeated with every mail


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_the_opt_in_fallback_never_offers_the_password_to_a_relay_that_asks_for_it(
    tmp_path: Path, sinks: list[Sink], bundle: Path, password_file: Path, security: str,
) -> None:
    """A relay that requires AUTH gets no AUTH over the unverified connection: the alert stays queued instead."""
    broken = Sink(security, trustme.CA().issue_cert("127.0.0.1"), auth=True).start()
    sinks.append(broken)
    n = notifier(tmp_path, alerts_config(broken, smtp_ca_bundle=bundle, smtp_username=USER,
                                         smtp_password_file=password_file, smtp_tls_fallback="unverified-no-auth"))
    n.handle(RenewalFailed(NOW, "mail", "urn:ietf:params:acme:error:rateLimited: too many certificates",
                           NOW + timedelta(hours=3)))
    report = n.deliver(NOW)
    assert report.sent == 0 and "without AUTH" in report.error and "530" in report.error
    assert broken.logins == [] and broken.messages == []

def test_mail_content_is_readable_on_a_phone(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """Subject says what and how bad; plain and HTML parts; a table; what was tried; the next command."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle))
    n.observe_certificate("mail", "mail.example.org", NOW - timedelta(days=88), NOW + timedelta(days=2, hours=1),
                          NOW, names=["mail.example.org", "<b>evil</b>.example.org"])
    n.deliver(NOW)
    [message] = sink.messages
    assert subject(message) == "[certkeeper] CRITICAL mail.example.org expires in 2 days"
    assert message["From"] == "certkeeper@mail.example.org"
    assert message["To"] == "postmaster@example.org, ops@example.org"
    assert message["Message-ID"].endswith("@mail.example.org>")
    assert email.utils.parsedate_to_datetime(message["Date"]) == NOW
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = text_and_html(message)
    for part in (plain, rich):
        assert "certkeeper renew mail --force" in part
        assert "2025-06-03 13:00 UTC" in part
    assert "already tried" in plain and "run next" in plain
    assert "<table" in rich and "<th" in rich
    assert "&lt;b&gt;evil&lt;/b&gt;.example.org" in rich and "<b>evil" not in rich


def test_alerts_are_not_repeated_after_a_restart(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """De-duplication lives in the store: a new Notifier on a new store of the same state_dir sends nothing new."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    config = alerts_config(sink, smtp_ca_bundle=bundle)
    failed = EndpointFailed(NOW, "mail", "smtps://mail.example.org:465", "CRITICAL", "certificate-host-mismatch: x")

    def run(now: datetime) -> None:
        n = notifier(tmp_path, config)
        n.observe_certificate("mail", "mail.example.org", NOW - timedelta(days=80), NOW + timedelta(days=6), now)
        n.handle(failed)
        n.deliver(now)
        n.store.close()

    run(NOW)
    run(NOW + timedelta(hours=12))
    assert len(sink.messages) == 1
    assert subject(sink.messages[0]).startswith("[certkeeper] CRITICAL 2 alerts: ")
    run(NOW + timedelta(days=3, hours=1))  # the 3-day threshold is news; the endpoint failure is not
    assert len(sink.messages) == 2
    assert subject(sink.messages[1]) == "[certkeeper] CRITICAL mail.example.org expires in 2 days"


def test_events_of_one_run_go_out_as_one_digest(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """Several events of one run -> one mail listing all of them, worst severity and count in the subject."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle))
    n.handle(RenewalFailed(NOW, "mail", "hook said: postfix reload failed", NOW + timedelta(hours=1)))
    n.handle(ServedCertificateStale(NOW, "mail", "imaps://mail.example.org:993", "aa" * 32, "bb" * 32))
    n.handle(EndpointFailed(NOW, "partner", "smtp://mx.partner.example:25", "CRITICAL", "starttls-not-supported"))
    n.deliver(NOW)
    [message] = sink.messages
    assert subject(message) == ("[certkeeper] CRITICAL 3 alerts: smtp://mx.partner.example:25 "
                                  "starttls-not-supported, +2 more")
    plain, rich = text_and_html(message)
    for needle in ("hook said: postfix reload failed", "certkeeper retries on its own at 2025-06-01 13:00 UTC",
                   "certkeeper hooks test mail", "certkeeper check smtp://mx.partner.example:25"):
        assert needle in plain and needle in rich


def test_delivery_after_the_relay_was_down(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """Relay down: deliver fails quietly and keeps the alerts; relay back on the same port: all sent, once."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    sink.stop()  # down, with its port known
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle))
    n.handle(RenewalFailed(NOW, "mail", "connection refused by the CA", None))
    first = n.deliver(NOW)
    assert first.sent == 0 and "connection refused" in first.error
    n.handle(RolledBack(NOW + timedelta(hours=1), "web", "v3", "v2", "verification failed"))
    assert n.deliver(NOW + timedelta(hours=1)).sent == 0
    assert [a.attempts for a in n.store.pending_alerts()] == [2, 1]
    sink.start()
    assert n.deliver(NOW + timedelta(hours=2)).sent == 2
    assert n.deliver(NOW + timedelta(hours=3)).sent == 0
    [message] = sink.messages
    plain, _ = text_and_html(message)
    assert "connection refused by the CA" in plain and "web rolled back to v2" in plain
    assert "certkeeper does not retry on its own" in plain


def test_daily_digest_sends_once_a_day_but_critical_at_once(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """digest = "daily": one mail per UTC day; a CRITICAL alert does not wait for tomorrow."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle, digest="daily"))
    n.handle(RenewalFailed(NOW, "mail", "first", None))
    assert n.deliver(NOW).sent == 1
    n.handle(RenewalFailed(NOW + timedelta(hours=2), "mail", "second", None))
    assert n.deliver(NOW + timedelta(hours=2)).held == 1
    n.handle(RolledBack(NOW + timedelta(hours=3), "mail", "v2", "v1", "verification failed"))
    assert n.deliver(NOW + timedelta(hours=3)).sent == 2
    n.handle(RenewalFailed(NOW + timedelta(hours=4), "mail", "third", None))
    assert n.deliver(NOW + timedelta(hours=4)).held == 1
    assert n.deliver(NOW + timedelta(days=1)).sent == 1
    assert len(sink.messages) == 3


def test_recovery_sends_a_mail_and_rearms(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path,
) -> None:
    """An endpoint that recovers gets a recovery mail; failing again alerts again.  Recovery without failure: quiet."""
    sink = Sink("starttls", relay_cert).start()
    sinks.append(sink)
    n = notifier(tmp_path, alerts_config(sink, smtp_ca_bundle=bundle))
    endpoint = "smtp://mx.partner.example:25"
    n.handle(EndpointRecovered(NOW, "partner", endpoint, "OK"))
    assert n.store.pending_alerts() == []
    n.handle(EndpointFailed(NOW, "partner", endpoint, "CRITICAL", "certificate-not-trusted"))
    n.deliver(NOW)
    n.handle(EndpointRecovered(NOW + timedelta(hours=1), "partner", endpoint, "OK: certificate valid for 80 days"))
    n.deliver(NOW + timedelta(hours=1))
    n.handle(EndpointFailed(NOW + timedelta(hours=2), "partner", endpoint, "CRITICAL", "certificate-not-trusted"))
    n.deliver(NOW + timedelta(hours=2))
    assert [subject(m) for m in sink.messages] == [
        f"[certkeeper] CRITICAL {endpoint} certificate-not-trusted",
        f"[certkeeper] INFO {endpoint} is fine again",
        f"[certkeeper] CRITICAL {endpoint} certificate-not-trusted",
    ]


def test_success_notices_only_when_asked(tmp_path: Path) -> None:
    """notify_success queues a notice per installed renewal; without it, a renewal after failures still says so."""
    quiet = Notifier(AlertsConfig(to=("a@example.org",), sender="c@example.org"), SqliteStore(tmp_path / "q"))
    quiet.handle(CertificateIssued(NOW, "mail", "ecdsa-p256", "le", "0a1b", NOW + timedelta(days=90)))
    quiet.handle(CertificateInstalled(NOW, "mail", "v2"))
    assert quiet.store.pending_alerts() == []
    quiet.handle(RenewalFailed(NOW, "mail", "timeout", None))
    quiet.handle(CertificateInstalled(NOW, "mail", "v3"))
    assert [a.subject for a in quiet.store.pending_alerts()] == ["renewal of mail failed",
                                                                 "mail renewed after failures"]
    loud = Notifier(AlertsConfig(to=("a@example.org",), sender="c@example.org", notify_success=True),
                    SqliteStore(tmp_path / "l"))
    loud.handle(CertificateIssued(NOW, "mail", "ecdsa-p256", "le", "0a1b", NOW + timedelta(days=90)))
    loud.handle(CertificateInstalled(NOW, "mail", "v2"))
    [notice] = loud.store.pending_alerts()
    assert notice.severity == "INFO" and "0a1b" in notice.body


def test_send_test_reports_every_route_when_nothing_answers(tmp_path: Path) -> None:
    """With relay and fallback down, the error names both routes."""
    config = AlertsConfig(to=("a@example.org",), sender="c@example.org", smtp_port=allocate_port(),
                          fallback_smtp_host="127.0.0.1", fallback_smtp_port=allocate_port(),
                          smtp_timeout=timedelta(seconds=2))
    with pytest.raises(AlertDeliveryFailed, match=r"relay 127\.0\.0\.1:\d+: connection refused; fallback"):
        notifier(tmp_path, config).send_test(NOW)


def write_config(tmp_path: Path, alerts: str) -> Path:
    return internal_ca_config(tmp_path, rest=alerts)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", *args], capture_output=True, text=True, timeout=60)


def test_cli_alerts_test_sends_through_the_configured_relay(
    tmp_path: Path, sinks: list[Sink], relay_cert: trustme.LeafCert, bundle: Path, password_file: Path,
) -> None:
    """`certkeeper alerts test` sends one test mail over implicit TLS with AUTH and says which route took it."""
    sink = Sink("tls", relay_cert, auth=True).start()
    sinks.append(sink)
    config = write_config(tmp_path, f"""
        [alerts]
        to = ["postmaster@example.org"]
        from = "certkeeper@mail.example.org"
        smtp_host = "127.0.0.1"
        smtp_port = {sink.port}
        smtp_security = "tls"
        smtp_username = "{USER}"
        smtp_password_file = "{password_file}"
        smtp_ca_bundle = "{bundle}"
    """)
    result = run_cli("-c", str(config), "alerts", "test")
    assert result.returncode == 0, result.stderr
    assert f"accepted by relay 127.0.0.1:{sink.port}" in result.stdout
    [message] = sink.messages
    assert subject(message) == "[certkeeper] INFO test mail"
    assert PASSWORD not in result.stdout + result.stderr


def test_cli_alerts_test_fails_with_exit_69_when_no_relay_answers(tmp_path: Path) -> None:
    """No relay listening: exit 69 (EX_UNAVAILABLE) and the reason."""
    config = write_config(tmp_path, f"""
        [alerts]
        to = ["postmaster@example.org"]
        from = "certkeeper@mail.example.org"
        smtp_port = {allocate_port()}
        smtp_timeout = "5s"
    """)
    result = run_cli("-c", str(config), "alerts", "test")
    assert result.returncode == 69
    assert "connection refused" in result.stderr


def test_cli_alerts_without_an_alerts_section_is_a_config_error(tmp_path: Path) -> None:
    """No [alerts]: exit 78 naming the missing section."""
    result = run_cli("-c", str(write_config(tmp_path, "")), "alerts", "test")
    assert result.returncode == 78
    assert "alerts: found no [alerts] section" in result.stderr


def test_watched_endpoint_expiry_is_read_from_the_stored_probe_result(tmp_path: Path) -> None:
    """observe_endpoint: a partner's certificate 5 days from expiry raises one WARNING naming the endpoint."""
    from certkeeper.store import EndpointRecord

    n = Notifier(AlertsConfig(to=("a@example.org",), sender="c@example.org"), SqliteStore(tmp_path / "s"))
    record = EndpointRecord(
        "partner-mx", "smtp://mx.partner.example:25", NOW, "WARNING", "certificate-expiring",
        details={"certificate": {"subject": "CN=mx.partner.example", "not_before": "2025-03-08T12:00:00+00:00",
                                 "not_after": (NOW + timedelta(days=5)).isoformat(),
                                 "subject_alternative_names": ["mx.partner.example"]}})
    first = n.observe_endpoint(record, NOW)
    assert first is not None and first.severity == "WARNING"
    assert first.subject == "mx.partner.example expires in 5 days"
    assert "certkeeper check smtp://mx.partner.example:25" in first.body
    assert n.observe_endpoint(record, NOW + timedelta(hours=1)) is None
    assert n.observe_endpoint(EndpointRecord("p", "smtp://x:25", NOW, "UNKNOWN", "connection-failed"), NOW) is None


class MisbehavingRelay(HostilePeer):
    """A relay no real server is: it drips its greeting a byte at a time, or answers EHLO with ``ehlo_lines``
    ``250-`` continuation lines.  Otherwise it accepts the mail, so the old smtplib path delivered through it."""

    def __init__(self, *, drip: float = 0.0, ehlo_lines: int = 0) -> None:
        self.drip = drip
        self.ehlo_lines = ehlo_lines
        super().__init__()

    def speak(self, connection: socket.socket, lines: Any) -> None:
        if not self.greet(connection, b"220 drip ESMTP\r\n" if self.drip else b"220 fake ESMTP\r\n", self.drip):
            return
        while line := lines.readline():
            command = line.strip().upper()
            if command.startswith(b"EHLO"):
                connection.sendall(b"250-fake\r\n" * self.ehlo_lines + b"250 8BITMIME\r\n")
            elif command == b"DATA":
                connection.sendall(b"354 go\r\n")
                while lines.readline() not in (b".\r\n", b""):
                    pass
                connection.sendall(b"250 queued\r\n")
            elif command == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:
                connection.sendall(b"250 ok\r\n")


def test_an_endless_ehlo_answer_is_cut_off_naming_the_relay(tmp_path: Path) -> None:
    """10,000 ``250-`` lines: smtplib kept every one (an endless answer grew to 16 GB); the reply is capped."""
    relay = MisbehavingRelay(ehlo_lines=10_000)
    try:
        config = AlertsConfig(to=("a@example.org",), sender="c@example.org", smtp_port=relay.port,
                              smtp_security="none", smtp_timeout=timedelta(seconds=10))
        with pytest.raises(AlertDeliveryFailed, match=rf"relay 127\.0\.0\.1:{relay.port}: the answer to EHLO went on "
                                                      r"past 100 lines or 64 KiB"):
            notifier(tmp_path, config).send_test(NOW)
    finally:
        relay.stop()


def test_a_relay_dripping_its_greeting_fails_at_smtp_timeout(tmp_path: Path) -> None:
    """A byte every 0.3 s never trips a per-read timeout of 1 s (the old path delivered after 5 s); the delivery
    as a whole gets 1 s."""
    relay = MisbehavingRelay(drip=0.3)
    try:
        config = AlertsConfig(to=("a@example.org",), sender="c@example.org", smtp_port=relay.port,
                              smtp_security="none", smtp_timeout=timedelta(seconds=1))
        started = time.monotonic()
        with pytest.raises(AlertDeliveryFailed, match=rf"relay 127\.0\.0\.1:{relay.port}: the delivery did not "
                                                      r"finish within 1 s \(smtp_timeout\); it stopped at the "
                                                      r"greeting"):
            notifier(tmp_path, config).send_test(NOW)
        assert time.monotonic() - started < 5.0
    finally:
        relay.stop()
