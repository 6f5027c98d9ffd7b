"""A certificate from certkeeper's internal CA, served by real Postfix and Dovecot, trusted by openssl s_client."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.config import CaIssuerConfig
from certkeeper.issuers.internal_ca import export_bundle
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.postfix import Postfix
from tests.lifecycle_helpers import write_config

pytestmark = pytest.mark.testbed

# (listener, openssl's -starttls protocol or None for implicit TLS)
POSTFIX = [("smtp", "smtp"), ("submission", "smtp"), ("submissions", None)]
DOVECOT = [("imap", "imap"), ("imaps", None), ("pop3", "pop3"), ("pop3s", None), ("sieve", "sieve")]


def s_client(port: int, starttls: str | None, bundle: Path) -> subprocess.CompletedProcess[str]:
    """openssl s_client; tried for a few seconds, because `doveadm reload` returns before new logins exist."""
    deadline = time.monotonic() + 5
    while True:
        result = _s_client_once(port, starttls, bundle)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def _s_client_once(port: int, starttls: str | None, bundle: Path) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "mail.example.test",
               "-verify_return_error", "-verify_hostname", "mail.example.test", "-CAfile", str(bundle)]
    if starttls:
        command += ["-starttls", starttls]
    return subprocess.run(command, input="", capture_output=True, text=True, timeout=30)


def test_every_listener_serves_a_chain_openssl_verifies_with_the_exported_bundle(
        tmp_path: Path, postfix_factory: Callable[..., Postfix], dovecot_factory: Callable[..., Dovecot]) -> None:
    config = write_config(tmp_path, '[certificates.mail]\nissuer = "internal"\ndomains = ["mail.example.test"]\n')
    assert build_app(config).run_pass()[0].result == "renewed"
    current = CertificateHome(config.settings.state_dir, "mail").current_link
    issuer = config.issuers["internal"]
    assert isinstance(issuer, CaIssuerConfig)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(export_bundle(issuer, include_intermediate=False))  # the root alone: the chain is served

    postfix = postfix_factory()
    postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    postfix.reload()
    dovecot = dovecot_factory()
    dovecot.use_certificate(current / "fullchain.pem", current / "privkey.pem")
    dovecot.reload()

    for server, listeners in ((postfix, POSTFIX), (dovecot, DOVECOT)):
        for listener, starttls in listeners:
            result = s_client(server.ports[listener], starttls, bundle)
            assert "Verify return code: 0 (ok)" in result.stdout, (listener, result.stdout[-2000:], result.stderr)
            assert result.returncode == 0, (listener, result.stderr)
