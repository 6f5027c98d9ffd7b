"""check_certkeeper against loopback servers of our own: every address probed, the worst reported with its
address; old TLS versions refused on request; check_ssl_cert's precision rule for days."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.probe_servers import NOW, Pki, ServerLoop, _hold

__all__ = ["NOW"]


def check_certkeeper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper.cli.check_certkeeper", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def common(port: int, ca_file: Path) -> list[str]:
    return ["-H", "mail.test", "-p", str(port), "-P", "smtps", "-r", str(ca_file)]


def test_every_address_is_probed_and_the_worst_names_its_address(servers: ServerLoop, pki: Pki) -> None:
    """Listening on 127.0.0.1 only: with ::1 among the host's addresses the check is CRITICAL at [::1]."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    one = check_certkeeper(*common(port, pki.ca_file), "--resolve", "127.0.0.1")
    assert one.returncode == 0 and one.stdout.startswith("SSL_CERT OK - mail.test:"), one.stdout
    both = check_certkeeper(*common(port, pki.ca_file), "--resolve", "127.0.0.1,::1")
    assert both.returncode == 2, both.stdout
    assert re.match(r"SSL_CERT CRITICAL mail\.test: \[::1\] connection-failed: ", both.stdout), both.stdout


def test_require_no_tls1_1(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    result = check_certkeeper(*common(port, pki.ca_file), "--resolve", "127.0.0.1", "--require-no-tls1",
                              "--require-no-tls1_1", "-N")
    assert result.returncode == 0, result.stdout


def test_days_have_check_ssl_cert_precision(servers: ServerLoop, pki: Pki) -> None:
    """Whole thresholds: whole days; a fractional one: two decimals, in the text and in perfdata alike."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test", days_before=60, days_after=30)))
    whole = check_certkeeper(*common(port, pki.ca_file), "--resolve", "127.0.0.1")
    assert re.search(r"\(expires in 29 days\)\|days_chain_elem1=29;20;15;;", whole.stdout), whole.stdout
    fraction = check_certkeeper(*common(port, pki.ca_file), "--resolve", "127.0.0.1", "-w", "20.5")
    shown = re.search(r"\(expires in (29\.\d\d) days\)\|days_chain_elem1=(29\.\d\d);20\.5;15;;", fraction.stdout)
    assert shown and shown[1] == shown[2], fraction.stdout
