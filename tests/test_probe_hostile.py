"""`check` against servers that say what they like: what they say is shown, never acted on, and the verdict and its
deadline stay those of the endpoint (found by a sweep of hostile servers on loopback).

Each case runs both probes where both can take it: the lean path of one ``certkeeper check`` process
(:mod:`certkeeper.probe.lean`) and the engine (:mod:`certkeeper.probe.engine`, several targets, ``-v``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certkeeper.probe import ProbeOptions, nagios_line, probe_sync
from certkeeper.probe.lean import check_one
from certkeeper.targets import parse_target
from tests.probe_servers import NOW, Leaf, Pki, ServerLoop, _hold, _name, smtp_server


def run_check(*arguments: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "certkeeper", "check", *arguments], capture_output=True, text=True,
                          timeout=60, check=False)
    return done, time.monotonic() - started


def both(text: str, pki: Pki, **options: object) -> list[str]:
    """The Nagios lines of the lean path and of the engine for ``text``."""
    settings: dict[str, object] = {"ca_file": pki.ca_file, "servername": "mail.test", "timeout": 3.0}
    settings.update(options)
    probe_options = ProbeOptions(**settings)  # type: ignore[arg-type]
    target = parse_target(text)
    lean = check_one(target, probe_options, now=NOW)
    full = probe_sync([target], probe_options, now=NOW)[0]
    return [nagios_line(result) for result in (lean, full) if result is not None]


def test_a_first_name_the_verifier_refuses_is_no_internal_error(servers: ServerLoop, pki: Pki) -> None:
    """A certificate listing "mail.test." (a trailing dot) or "_srv.mail.test" first: the chain is judged through
    the first name path validation takes; with none it takes, the verdict says so (it was UNKNOWN, "internal
    error: ValueError('invalid domain name')")."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test.", "_srv.mail.test", "mail.test")))
    lines = both(f"smtps://127.0.0.1:{port}", pki)
    assert len(lines) == 2 and all(line.startswith("CERTKEEPER OK") for line in lines), lines

    port = servers.serve(_hold, pki.context(pki.leaf("mail.test.", "_srv.mail.test")))
    full = probe_sync([parse_target(f"smtps://127.0.0.1:{port}")],
                      ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=3.0), now=NOW)[0]
    assert full.status == "CRITICAL" and "internal" not in full.message, full.message
    assert "none of the certificate's names ('mail.test.', '_srv.mail.test') is an address or a host name" in \
        full.message


def _evil_reply() -> bytes:
    return b"454 \x1b[2J\rCERTKEEPER OK - all good|x=1 " + b"Y" * 6_000 + b"\r\n"


def test_what_a_server_says_is_shown_shortened_and_inert(servers: ServerLoop, pki: Pki) -> None:
    """A STARTTLS refusal of 6 KB with terminal escapes and a CR (a second status line for Nagios): the message
    is short, its control characters are "?" and its "|" is no perfdata."""
    port = servers.serve(smtp_server(pki.context(pki.leaf("mail.test")), starttls_reply=_evil_reply()))
    for line in both(f"smtp://127.0.0.1:{port}", pki):
        status, _, perfdata = line.partition("|")
        assert status.startswith("CERTKEEPER CRITICAL") and "STARTTLS was refused: 454 ?[2J?CERTKEEPER OK" in status
        assert len(status) < 400 and status.isprintable() and perfdata.startswith("time="), line

    ehlo = [b"500 \x1b]0;pwned\x07\rCERTKEEPER OK\r\n"]
    port = servers.serve(smtp_server(pki.context(pki.leaf("mail.test")), ehlo=ehlo))
    for line in both(f"smtp://127.0.0.1:{port}", pki):
        assert "EHLO was answered 500 ?]0;pwned??CERTKEEPER OK" in line and line.isprintable(), line


def test_a_certificate_name_makes_no_line_of_its_own_in_the_long_output(servers: ServerLoop, pki: Pki) -> None:
    """A common name with CR LF, a status line and a "|": under -v (the engine) one status line, and no "|"
    beyond the status line's own (Nagios reads perfdata after the first "|" of the long output too)."""
    evil = pki.leaf("mail.test")
    certificate = evil.certificate
    builder = (x509.CertificateBuilder().subject_name(_name("evil\r\nCERTKEEPER OK - fake|days=999"))
               .issuer_name(certificate.issuer).public_key(certificate.public_key())
               .serial_number(certificate.serial_number).not_valid_before(certificate.not_valid_before_utc)
               .not_valid_after(certificate.not_valid_after_utc))
    for extension in certificate.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    hostile = builder.sign(pki.intermediate_key, hashes.SHA256())
    chain = hostile.public_bytes(serialization.Encoding.PEM) + pki.intermediate.public_bytes(serialization.Encoding.PEM)
    port = servers.serve(_hold, pki.context(Leaf(hostile, chain, evil.key_pem)))
    done, _ = run_check(f"smtps://127.0.0.1:{port}", "--servername", "mail.test", "--ca-file", str(pki.ca_file), "-v")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in lines if "CERTKEEPER" in line.split("'", 1)[0]] == lines[:1], lines
    assert all("|" not in line for line in lines[1:]) and all(line.isprintable() for line in lines), lines
    assert "'evil? CERTKEEPER OK - fake/days=999'" in lines[0]


def test_a_greeting_never_ended_is_not_a_server_that_never_spoke(servers: ServerLoop, pki: Pki) -> None:
    """A banner sent a byte at a time, or ended by a CR alone: the timeout says the server sent bytes, not that it
    never spoke (which suggests an implicit-TLS port)."""
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.test\r")
        await writer.drain()
        await asyncio.sleep(10)

    port = servers.serve(slow)
    for line in both(f"smtp://127.0.0.1:{port}", pki, timeout=1.0):
        assert "while waiting for the smtp server's greeting; the server sent 14 bytes but never ended the line" in \
            line and "never spoke" not in line, line


def test_a_handshake_the_lean_path_hands_over_keeps_the_deadline(servers: ServerLoop, pki: Pki) -> None:
    """A server that answers the ClientHello after 2.5 s with an alert: the lean path hands it to the engine,
    whose deadline counts from the start (with --timeout 3 the command took 5 s and more)."""
    async def late_alert(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(2.5)
        writer.write(b"\x15\x03\x03\x00\x02\x02\x28")  # alert: fatal, handshake_failure
        await writer.drain()
        await asyncio.sleep(10)

    port = servers.serve(late_alert)
    done, took = run_check(f"smtps://127.0.0.1:{port}", "--servername", "mail.test", "--ca-file", str(pki.ca_file),
                           "--timeout", "3")
    assert done.returncode == 2, done.stdout
    assert took < 4.5, (took, done.stdout)  # the deadline of 3 s and the interpreter's start, not 3 s twice


def test_a_slow_server_whose_chain_does_not_verify_is_judged_not_timed_out(servers: ServerLoop, pki: Pki) -> None:
    """Each handshake takes 1.2 s and the intermediate is not served: the lean path judges the chain its verified
    handshake received (it timed out on a second, unverified handshake under --timeout 2)."""
    context = pki.context(pki.leaf("mail.test"), with_chain=False)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def slow_tls() -> None:  # blocking: asyncio's start_tls would lose a ClientHello that came before it
        with listener:
            for _ in range(2):
                connection, _ = listener.accept()
                time.sleep(1.2)
                with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)

    threading.Thread(target=slow_tls, daemon=True).start()
    lean = check_one(parse_target(f"smtps://127.0.0.1:{port}"),
                     ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=2.0), now=NOW)
    assert lean is not None and lean.status == "CRITICAL", lean
    assert lean.message.startswith("chain-incomplete: the server does not send the intermediate"), lean.message
    assert lean.tls_version == "TLSv1.3" and lean.cipher  # TLS 1.3 agreed on both before the certificate


def test_a_malformed_pop3_reply_is_not_called_another_protocol(servers: ServerLoop, pki: Pki) -> None:
    async def okay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OKAY ready\r\n")
        await writer.drain()
        await reader.read(100)

    port = servers.serve(okay)
    for line in both(f"pop3://127.0.0.1:{port}", pki):
        assert "not a POP3 status line: '+OKAY ready'" in line and "another mail protocol" not in line, line


def test_an_expired_leaf_from_a_trusted_ca_is_not_also_untrusted(servers: ServerLoop, pki: Pki,
                                                                 tmp_path: Path) -> None:
    """A leaf valid from 400 days ago to 10 days ago under an anchor made 365 days ago (the intermediate, trusted
    itself, the leaf served alone): only the expiry.  The moment at which the chain would verify must be one the
    anchor is valid at too (the leaf's first second was not: "not trusted" was added)."""
    anchor = tmp_path / "intermediate.pem"
    anchor.write_bytes(pki.intermediate.public_bytes(serialization.Encoding.PEM))
    leaf = pki.leaf("mail.test", days_before=400, days_after=-10)
    port = servers.serve(_hold, pki.context(leaf, with_chain=False))
    lines = both(f"smtps://127.0.0.1:{port}", pki, ca_file=anchor)
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("CERTKEEPER CRITICAL") and "certificate-expired" in line, line
        assert "not-trusted" not in line, line


@pytest.mark.parametrize("record", [b"\x17\x03\x03\x00\x05hello", b"\x14\x03\x03\x00\x01\x01"])
def test_a_tls_record_out_of_turn_is_not_called_non_tls_data(servers: ServerLoop, pki: Pki, record: bytes) -> None:
    async def out_of_turn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(record)
        await writer.drain()
        writer.close()

    port = servers.serve(out_of_turn)
    result = probe_sync([parse_target(f"smtps://127.0.0.1:{port}")],
                        ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=3.0), now=NOW)[0]
    assert result.status == "CRITICAL" and "non-TLS data" not in result.message, result.message
