"""The probe against the test bed's real Postfix and Dovecot: every listener, STARTTLS and implicit TLS.

Uses the ``postfix`` and ``dovecot`` fixtures of ``tests/conftest.py`` (objects with a ``ports`` dict and the
``ca_file`` of the test CA that signed their seed certificates); skipped where the fixture is not there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from certkeeper.probe import ProbeOptions, nagios_line, probe_sync
from certkeeper.targets import parse_target

pytestmark = pytest.mark.testbed

HOSTNAME = "mail.example.test"
SCHEMES = {
    "smtp": "smtp", "submission": "smtp", "submissions": "smtps",
    "imap": "imap", "imaps": "imaps", "pop3": "pop3", "pop3s": "pop3s", "sieve": "sieve",
}


def _server(request: pytest.FixtureRequest, name: str) -> Any:
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"the test bed fixture {name!r} is not available")


@pytest.mark.parametrize("name", ["postfix", "dovecot"])
def test_every_listener_serves_a_valid_chain(request: pytest.FixtureRequest, name: str) -> None:
    """Each listener of the real daemon is reached (STARTTLS dialogue or implicit TLS) and judged OK."""
    server = _server(request, name)
    hostname = getattr(server, "hostname", HOSTNAME)
    targets = [parse_target(f"{SCHEMES[listener]}://127.0.0.1:{port}") for listener, port in server.ports.items()]
    options = ProbeOptions(ca_file=server.ca_file, servername=hostname, timeout=10, verbose=True)
    results = probe_sync(targets, options, now=datetime.now(UTC))
    for listener, result in zip(server.ports, results, strict=True):
        assert result.status == "OK", (listener, nagios_line(result), result.transcript)
        assert result.chain_valid and result.hostname_valid
        assert result.certificate is not None and hostname in result.certificate.subject_alternative_names
        if result.target.tls == "starttls":
            assert any("STARTTLS" in line.upper() or "STLS" in line.upper() for line in result.transcript)


@pytest.mark.parametrize("name", ["postfix", "dovecot"])
def test_without_the_test_ca_the_chain_is_not_trusted(request: pytest.FixtureRequest, name: str) -> None:
    """Against the system store the test CA is unknown: CRITICAL, and the certificate is still reported."""
    server = _server(request, name)
    listener, port = next(iter(server.ports.items()))
    result = probe_sync([parse_target(f"{SCHEMES[listener]}://127.0.0.1:{port}")],
                        ProbeOptions(servername=getattr(server, "hostname", HOSTNAME)), now=datetime.now(UTC))[0]
    assert result.status == "CRITICAL"
    assert {f.code for f in result.findings} <= {"certificate-not-trusted", "chain-incomplete"}
    assert result.certificate is not None


@pytest.mark.parametrize("name", ["postfix", "dovecot"])
def test_the_lean_check_agrees_with_the_engine_on_every_listener(request: pytest.FixtureRequest, name: str) -> None:
    """One ``certkeeper check`` (certkeeper.probe.lean: blocking socket, stdlib ssl) against the real daemons says
    what the engine says, word for word, STARTTLS listeners included."""
    from certkeeper import values
    from certkeeper.probe.lean import check_one

    server = _server(request, name)
    options = ProbeOptions(ca_file=server.ca_file, servername=getattr(server, "hostname", HOSTNAME), timeout=10)
    now = datetime.now(UTC)
    for listener, port in server.ports.items():
        target = parse_target(f"{SCHEMES[listener]}://127.0.0.1:{port}")
        lean = check_one(target, options, now=now)
        assert lean is not None, listener
        full = probe_sync([target], options, now=now)[0]
        assert values.replace(lean, elapsed_ms=0) == values.replace(full, elapsed_ms=0), listener
