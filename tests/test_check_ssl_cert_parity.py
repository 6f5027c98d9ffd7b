"""check_certkeeper side by side with Debian's check_ssl_cert over the same endpoints: the same exit code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.monitoring_endpoints import HOST, Endpoint, Endpoints, mail_endpoints

__all__ = ["mail_endpoints"]  # the fixture, imported for pytest to find

pytestmark = pytest.mark.testbed
CHECK_SSL_CERT = "/usr/lib/nagios/plugins/check_ssl_cert"


def options(endpoint: Endpoint, endpoints: Endpoints) -> list[str]:
    """What an Icinga service would pass; --ignore-ocsp and --ignore-sct keep check_ssl_cert off the internet."""
    return ["-H", HOST, "--resolve", "127.0.0.1", "-p", str(endpoint.port), "-P", endpoint.protocol,
            "-r", str(endpoints.ca_file), "-w", "20", "-c", "15"]


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def check_certkeeper(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "certkeeper.cli.check_certkeeper", *args])


def test_check_ssl_cert_is_installed() -> None:
    """The Debian package is there (certkeeper.testbed.install puts it there): no comparison is skipped."""
    assert shutil.which(CHECK_SSL_CERT), "apt-get install monitoring-plugins-contrib"


def test_same_exit_code_as_check_ssl_cert_on_every_endpoint(mail_endpoints: Endpoints) -> None:
    """Good, expiring, expired, wrong host, untrusted, missing intermediate, SHA-1, STARTTLS 25/587, 465, IMAP:
    check_certkeeper exits as check_ssl_cert does, and both as expected."""
    differences = []
    for endpoint in mail_endpoints.items:
        given = options(endpoint, mail_endpoints)
        theirs = run([CHECK_SSL_CERT, *given, "--ignore-ocsp", "--ignore-sct"])
        ours = check_certkeeper(*given)
        if not ours.returncode == theirs.returncode == endpoint.exit_code:
            differences.append(f"{endpoint.label}: expected {endpoint.exit_code}, check_ssl_cert "
                               f"{theirs.returncode} ({theirs.stdout.strip()}), check_certkeeper {ours.returncode} "
                               f"({ours.stdout.strip()} {ours.stderr.strip()})")
    assert not differences, "\n".join(differences)


def test_status_line_and_perfdata_as_check_ssl_cert_writes_them(mail_endpoints: Endpoints) -> None:
    """The same "SSL_CERT OK - host:port, protocol, x509 certificate ..." prefix, the same days in the text as in
    perfdata, and the same days_chain_elem1 perfdata value as check_ssl_cert."""
    good = mail_endpoints.items[0]
    given = options(good, mail_endpoints)
    theirs = run([CHECK_SSL_CERT, *given, "--ignore-ocsp", "--ignore-sct"]).stdout
    ours = check_certkeeper(*given).stdout
    pattern = re.compile(r"^SSL_CERT OK - .*, smtps, x509 certificate '.*' .*\(expires in (\d+) days\).*"
                         r"\|days_chain_elem1=(\d+);20;15;;")
    their_match, our_match = pattern.search(theirs), pattern.search(ours)
    assert their_match and our_match, (theirs, ours)
    assert our_match[1] == our_match[2] == their_match[2], (theirs, ours)


@pytest.mark.parametrize(("args", "words"), [
    (["-H", HOST, "-w", "10", "-c", "20"], "must be between 0 and -w"),
    (["-H", HOST, "-P", "ftp"], "invalid choice"),
    (["-p", "465"], "-H/--host"),
    (["-H", HOST, "-p", "1", "-r", "/nonexistent/roots.pem"], "cannot read the CA file"),
])
def test_bad_options_are_unknown(args: list[str], words: str) -> None:
    result = check_certkeeper(*args)
    assert result.returncode == 3 and result.stdout.startswith("SSL_CERT UNKNOWN") and words in result.stdout, (
        result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_a_sha1_signature_is_named(mail_endpoints: Endpoints) -> None:
    (sha1,) = [e for e in mail_endpoints.items if e.label == "signed with SHA-1"]
    result = check_certkeeper(*options(sha1, mail_endpoints))
    assert result.returncode == 2 and "weak-signature: the certificate is signed with SHA1" in result.stdout


def test_ignore_switches_silence_their_finding(mail_endpoints: Endpoints) -> None:
    """--ignore-exp turns the expired endpoint OK, --ignore-host-cn the wrong-host one, -A the untrusted one."""
    by_label = {e.label: e for e in mail_endpoints.items}
    for label, switch in (("expired", "--ignore-exp"), ("wrong host", "--ignore-host-cn"), ("untrusted", "-A"),
                          ("missing intermediate", "--ignore-incomplete-chain")):
        result = check_certkeeper(*options(by_label[label], mail_endpoints), switch)
        assert result.returncode == 0, (label, result.stdout)
