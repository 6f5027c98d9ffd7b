"""Failures that ended in a traceback end in a clear error (issue 21, "internal error" list)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("servername", ["a..b", "a" * 64 + ".example.test", "." , "x" * 254])
def test_a_servername_that_is_no_host_name_is_a_usage_error(servername: str) -> None:
    result = subprocess.run([sys.executable, "-m", "certkeeper", "check", "--servername", servername,
                             "smtp://127.0.0.1:1", "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not a host name" in result.stderr and "internal error" not in result.stderr


def test_a_certificate_without_a_subject_cn_is_named_by_its_first_san() -> None:
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from certkeeper import pki
    from certkeeper.probe.judge import summarize

    key = ec.generate_private_key(ec.SECP256R1())
    now = pki.now_utc()
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
        .public_key(key.public_key()).serial_number(1).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.example.test")]), critical=True)
        .sign(key, hashes.SHA256())
    )
    summary = summarize(certificate, now=now, warning_days=14, critical_days=7)
    assert summary.subject == "mail.example.test"


def test_a_ca_answering_http_500_is_reported_with_what_it_answered(tmp_path: Path) -> None:
    """A stand-in for a CA in trouble (Pebble cannot be made to answer 500 on demand): a loopback HTTPS server
    answering every request with an RFC 7807 problem and status 500."""
    import http.server
    import threading
    from datetime import timedelta

    from certkeeper.config import AcmeIssuerConfig
    from certkeeper.errors import CaUnavailable
    from certkeeper.issuers.acme import AcmeIssuer
    from tests.test_acme import request_for

    class Broken(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"type": "urn:ietf:params:acme:error:serverInternal", "detail": "database is on fire"}'
            self.send_response(500)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    import ssl

    from certkeeper.testbed.certs import TestCA

    ca = TestCA("broken CA's TLS")
    key, chain = ca.issue(["127.0.0.1"]).write(tmp_path, "broken")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    server.socket = context.wrap_socket(server.socket, server_side=True)  # ACME is HTTPS only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dir"
        config = AcmeIssuerConfig(name="broken", directory=url, timeout=timedelta(seconds=2),
                                  ca_bundle=ca.write_cert(tmp_path / "broken-ca.pem"))
        with pytest.raises(CaUnavailable, match=r"answered HTTP 500 urn:ietf:params:acme:error:serverInternal: "
                                                r"database is on fire, also when asked again"):
            AcmeIssuer(config, tmp_path).issue(request_for("mail.example.test"))
    finally:
        server.shutdown()
        server.server_close()


def test_a_locked_state_store_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    """Another process holding the database past busy_timeout (30 s; shortened here so the test is quick)."""
    import sqlite3

    from certkeeper.errors import StoreError
    from certkeeper.store import CertState
    from certkeeper.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        store._db.execute("PRAGMA busy_timeout=200")  # test only: the 30 s wait is the behaviour being cut short
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match=r"state.db: cannot write the state store: database is locked"):
            store.put_state(CertState("mail", failures=1))
        other.execute("ROLLBACK")
        store.put_state(CertState("mail", failures=1))  # usable again once the other process let go
        assert store.get_state("mail") == CertState("mail", failures=1)
    finally:
        other.close()
        store.close()


def test_check_dane_gives_a_silent_resolver_the_timeout_asked_for() -> None:
    """A resolver that never answers (a bound UDP socket): the TLSA lookup gives up after the timeout asked for
    (check --dane passes --timeout), and says so."""
    import socket

    from certkeeper.dane.judge import look_up

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = look_up("_25._tcp.mail.example.test.", f"127.0.0.1:{port}", 1.0)
    assert "TLSA failed: no answer within 1 s" in result.error, result.error


@pytest.mark.parametrize("command", [("renew", "nosuch"), ("acme", "persist-record", "nosuch"),
                                     ("revoke", "nosuch"), ("rollback", "nosuch")])
def test_an_unknown_certificate_name_is_a_usage_error_listing_the_known_ones(command: tuple[str, ...],
                                                                             tmp_path: Path) -> None:
    from tests.configs import internal_ca_config

    config = internal_ca_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config), *command],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 64, result.stdout + result.stderr
    assert f"no certificate named 'nosuch' in {config} (known: mail)" in result.stderr, result.stderr
