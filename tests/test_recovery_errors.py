"""Failures that ended in a traceback end in a clear error (issue 21, "internal error" list)."""

from __future__ import annotations

import subprocess
import sys

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
