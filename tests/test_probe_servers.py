"""The probe against small loopback servers of our own, one per good or broken behaviour.

Real TLS handshakes over 127.0.0.1 with certificates from a throwaway test CA; each server runs on one
background event loop shared by the module.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certkeeper.probe import ProbeOptions, ProbeResult, nagios_line, probe_sync, result_to_json
from certkeeper.targets import parse_target
from tests.probe_servers import (
    NOW,
    Handler,
    Pki,
    ServerLoop,
    _hold,
    _load_pems,
    imap_server,
    pop3_server,
    sieve_server,
    smtp_server,
)


def probe(text: str, pki: Pki, **options: object) -> ProbeResult:
    settings: dict[str, object] = {"ca_file": pki.ca_file, "servername": "mail.test", "timeout": 3.0}
    settings.update(options)
    return probe_sync([parse_target(text)], ProbeOptions(**settings), now=NOW)[0]  # type: ignore[arg-type]


def codes(result: ProbeResult) -> set[str]:
    return {finding.code for finding in result.findings}


# --- STARTTLS servers -----------------------------------------------------------------------------------

def test_implicit_tls_with_a_good_chain_is_ok(servers: ServerLoop, pki: Pki) -> None:
    """smtps with a full chain from a trusted CA: OK, certificate and chain summarized, Nagios perfdata."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status == "OK", result.message
    assert result.chain_valid is True and result.hostname_valid is True
    assert result.certificate is not None and result.certificate.key_type == "ecdsa-p256"
    assert len(result.chain) == 2
    line = nagios_line(result)
    assert line.startswith(f"CERTKEEPER OK - 127.0.0.1:{port}, smtps, 'mail.test' from ")
    shown = re.search(r"\(expires in (\d+) days\).*\|days_chain_elem1=(\d+);21;7;; days_chain_elem2=(\d+);21;7;; time=",
                      line)
    assert "valid until" in line and shown, line
    assert shown[1] == shown[2] == "89" and shown[3] == "3649"  # 90 days less the moments since: 89 whole days


@pytest.mark.parametrize("kind", ["smtp", "imap", "pop3", "sieve"])
def test_starttls_dialects_reach_tls(servers: ServerLoop, pki: Pki, kind: str) -> None:
    """Each STARTTLS dialect (RFC 3207, RFC 2595, RFC 5804) gets to the handshake and judges the chain."""
    context = pki.context(pki.leaf("mail.test"))
    servers_by_kind: dict[str, Callable[[ssl.SSLContext], Any]] = {
        "smtp": smtp_server, "imap": imap_server, "pop3": pop3_server, "sieve": sieve_server}
    handler = servers_by_kind[kind]
    port = servers.serve(handler(context))
    result = probe(f"{kind}://127.0.0.1:{port}", pki, verbose=True)
    assert result.status == "OK", result.message
    assert result.tls_version in {"TLSv1.2", "TLSv1.3"}
    assert any(line.startswith("C: ") for line in result.transcript)
    assert any("STARTTLS" in line or "STLS" in line for line in result.transcript)


def test_ip_san_matches_without_servername(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("127.0.0.1")))
    result = probe(f"imaps://127.0.0.1:{port}", pki, servername=None)
    assert result.status == "OK", result.message


def test_rsa_and_ecdsa_pair_are_both_fetched(servers: ServerLoop, pki: Pki) -> None:
    """--key-type all: a dual-certificate server shows both certificates and both are judged."""
    rsa_leaf = pki.leaf("mail.test", key_type="rsa")
    ecdsa_leaf = pki.leaf("mail.test", days_before=80, days_after=10)
    port = servers.serve(_hold, pki.context(rsa_leaf, ecdsa_leaf))
    both = probe(f"smtps://127.0.0.1:{port}", pki, key_type="all")
    assert [s.key_type for s in both.served] == ["rsa-2048", "ecdsa-p256"]
    assert both.status == "WARNING"
    assert [f.message[:8] for f in both.findings] == ["[ecdsa] "]
    assert "days_rsa=" in nagios_line(both) and "days_ecdsa=" in nagios_line(both)
    only_rsa = probe(f"smtps://127.0.0.1:{port}", pki, key_type="rsa")
    assert only_rsa.status == "OK" and only_rsa.certificate is not None
    assert only_rsa.certificate.key_type == "rsa-2048"


def test_key_type_all_on_a_single_certificate_server(servers: ServerLoop, pki: Pki) -> None:
    """A server with only an ECDSA certificate is fine under --key-type all; --key-type rsa fails."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    both = probe(f"smtps://127.0.0.1:{port}", pki, key_type="all")
    assert both.status == "OK" and [s.key_type for s in both.served] == ["ecdsa-p256"]
    rsa = probe(f"smtps://127.0.0.1:{port}", pki, key_type="rsa")
    assert rsa.status == "CRITICAL" and codes(rsa) == {"tls-handshake-failed"}


def test_expected_fingerprint_mismatch_is_stale(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    result = probe(f"smtps://127.0.0.1:{port}", pki, expected_fingerprints=frozenset({"00" * 32}))
    assert result.status == "CRITICAL" and codes(result) == {"served-certificate-stale"}


# --- broken certificates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_before", "days_after", "status", "code"),
    [
        (100, -1, "CRITICAL", "certificate-expired"),
        (-1, 90, "CRITICAL", "certificate-not-yet-valid"),
        (80, 10, "WARNING", "certificate-expiring"),
        (87, 3, "CRITICAL", "certificate-expiring"),
        (3, 3, "OK", None),  # a 6-day certificate with half its life left
        (5, 1, "WARNING", None),  # ... and with 1 day left: thresholds scaled to 1.5 days / 12 hours
        (5.6, 0.4, "CRITICAL", None),  # ... and with 9.6 hours left
    ],
)
def test_dates(servers: ServerLoop, pki: Pki, days_before: float, days_after: float, status: str,
               code: str | None) -> None:
    """Expired, not yet valid and expiring certificates; short-lived ones get thresholds scaled to lifetime."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test", days_before=days_before, days_after=days_after)))
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status == status, result.message
    if code:
        assert codes(result) == {code}, result.findings  # not also "not trusted": the CA is trusted
    assert result.certificate is not None, "the certificate is reported even when it is invalid"
    if code == "certificate-expired":
        assert result.chain_valid is False
        document = result_to_json(result)
        assert document["certificate"]["days_left"] < 0


def test_a_client_only_certificate_is_the_wrong_purpose(servers: ServerLoop, pki: Pki) -> None:
    """Extended key usage clientAuth without serverAuth: CRITICAL certificate-wrong-purpose, said in words."""
    leaf = pki.leaf("mail.test", purposes=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    result = probe(f"smtps://127.0.0.1:{servers.serve(_hold, pki.context(leaf))}", pki)
    assert result.status == "CRITICAL" and "certificate-wrong-purpose" in codes(result)
    assert "allows clientAuth, not serverAuth" in result.message


def test_an_accepted_old_tls_version_is_critical_when_refused(servers: ServerLoop, pki: Pki) -> None:
    """--require-no-tls1_1: a server still accepting TLS 1.1 is CRITICAL tls-version-too-old; one with a TLS 1.2
    floor stays OK; without the option nobody asks."""
    old = pki.context(pki.leaf("mail.test"))
    with warnings.catch_warnings():  # the point of this server is the deprecated version
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("ALL:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 at security level 0 only
    lenient = servers.serve(_hold, old)
    strict = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    refused = probe(f"smtps://127.0.0.1:{lenient}", pki, refuse_tls=("TLSv1.1",))
    assert refused.status == "CRITICAL" and codes(refused) == {"tls-version-too-old"}
    assert "accepts TLSv1.1" in refused.message
    assert probe(f"smtps://127.0.0.1:{lenient}", pki).status == "OK"
    assert probe(f"smtps://127.0.0.1:{strict}", pki, refuse_tls=("TLSv1", "TLSv1.1")).status == "OK"


def test_no_scale_judges_short_lived_certificates_by_the_thresholds_as_given(servers: ServerLoop, pki: Pki) -> None:
    """A 6-day certificate with 3 days left is OK scaled, CRITICAL against --critical 7 as given (--no-scale)."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test", days_before=3, days_after=3)))
    assert probe(f"smtps://127.0.0.1:{port}", pki).status == "OK"
    unscaled = probe(f"smtps://127.0.0.1:{port}", pki, scale_thresholds=False)
    assert unscaled.status == "CRITICAL" and codes(unscaled) == {"certificate-expiring"}
    assert unscaled.certificate is not None and unscaled.certificate.critical_days == 7
    line = run_cli(f"smtps://127.0.0.1:{port}", "--no-scale", "--ca-file", str(pki.ca_file), "--servername",
                   "mail.test")
    assert line.returncode == 2 and "days_chain_elem1=2;21;7;;" in line.stdout, line.stdout


def test_wrong_name(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("other.test")))
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status == "CRITICAL" and codes(result) == {"certificate-host-mismatch"}
    assert result.hostname_valid is False and result.chain_valid is True
    assert "other.test, not 'mail.test'" in result.message


def test_missing_intermediate(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test"), with_chain=False))
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status == "CRITICAL" and codes(result) == {"chain-incomplete"}
    assert result.chain_valid is False and len(result.chain) == 1


def test_untrusted_ca(servers: ServerLoop, pki: Pki, tmp_path: Path) -> None:
    other = Pki.create(tmp_path, "Other Root")
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    result = probe(f"smtps://127.0.0.1:{port}", pki, ca_file=other.ca_file)
    assert codes(result) == {"certificate-not-trusted"}


def test_self_signed(servers: ServerLoop, pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.test")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=300))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_pems(context, certificate.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
    port = servers.serve(_hold, context)
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status == "CRITICAL" and codes(result) == {"self-signed"}


def test_absurd_chain_is_judged_or_refused_within_the_deadline(servers: ServerLoop, pki: Pki) -> None:
    """A leaf followed by 50 extra certificates: a clear result, not a hang or a traceback."""
    junk = b"".join(pki.leaf(f"junk{i}.test").leaf_pem for i in range(50))
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test"), extra=junk))
    result = probe(f"smtps://127.0.0.1:{port}", pki)
    assert result.status in {"OK", "CRITICAL"}
    assert result.status == "OK" or codes(result) == {"tls-handshake-failed"}
    assert result.elapsed_ms < 3000


# --- hostile and broken servers -----------------------------------------------------------------------


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for byte in b"220 a very slow greeting\r\n" * 10:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.25)


async def _junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(64):  # 4 MiB without a newline
        writer.write(b"\x00\xff" * 32768)
        await writer.drain()


async def _junk_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(100000):
        writer.write(b"220-" + b"x" * 200 + b"\r\n")
        await writer.drain()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _smtp_greeting_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mail.test ESMTP\r\n")
    await writer.drain()
    await reader.read(100)


async def _reset_mid_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(10)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST


@pytest.mark.parametrize(
    ("scheme", "server", "code", "words"),
    [
        ("smtp", "silent", "timeout", "never spoke"),
        ("smtp", "drip", "timeout", "greeting"),
        ("smtp", "junk", "protocol-error", "longer than"),
        ("smtp", "junk_lines", "protocol-error", "longer than 200 lines"),
        ("smtp", "tls", "timeout", "implicit-TLS port"),
        ("smtp", "refused", "starttls-not-supported", "454"),
        ("smtp", "not_advertised", "starttls-not-supported", "does not offer STARTTLS"),
        ("smtp", "bad_greeting", "protocol-error", "554"),
        ("imap", "imap_no_starttls", "starttls-not-supported", "CAPABILITY"),
        ("imap", "http_talks", "protocol-error", "HTTP server"),
        ("pop3", "pop3_no_stls", "starttls-not-supported", "STLS"),
        ("sieve", "sieve_refused", "starttls-not-supported", "refused"),
        ("smtps", "http", "tls-handshake-failed", "HTTP"),
        ("smtps", "plaintext", "tls-handshake-failed", "STARTTLS"),
        ("smtps", "reset", "tls-handshake-failed", ""),
        ("smtps", "closed", "connection-failed", "refused"),
    ],
)
def test_hostile_servers_yield_a_clear_critical_finding(servers: ServerLoop, pki: Pki, scheme: str, server: str,
                                                        code: str, words: str) -> None:
    """Each broken or hostile behaviour: CRITICAL with one clear finding, within the deadline, no traceback."""
    context = pki.context(pki.leaf("mail.test"))

    async def http_talks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        await writer.drain()

    handlers: dict[str, tuple[Handler, ssl.SSLContext | None]] = {
        "silent": (_silent, None), "drip": (_drip, None), "junk": (_junk, None), "junk_lines": (_junk_lines, None),
        "tls": (_hold, context),
        "refused": (smtp_server(context, starttls_reply=b"454 4.7.0 TLS not available\r\n"), None),
        "not_advertised": (smtp_server(context, ehlo=[b"250-mail.test\r\n", b"250 8BITMIME\r\n"]), None),
        "bad_greeting": (smtp_server(context, greeting=[b"554 go away\r\n"]), None),
        "imap_no_starttls": (imap_server(context, capability=b"IMAP4rev1 AUTH=PLAIN"), None),
        "http_talks": (http_talks, None),
        "pop3_no_stls": (pop3_server(context, stls=False), None),
        "sieve_refused": (sieve_server(context, refuse=True), None),
        "http": (_http, None), "plaintext": (_smtp_greeting_only, None), "reset": (_reset_mid_handshake, None),
    }
    if server == "closed":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    else:
        handler, tls = handlers[server]
        port = servers.serve(handler, tls)
    result = probe(f"{scheme}://127.0.0.1:{port}", pki, timeout=1.5)
    assert result.status == "CRITICAL", result
    assert codes(result) == {code}, result.findings
    assert words in result.message
    assert result.elapsed_ms < 2500
    assert result.certificate is None
    document = result_to_json(result)
    assert document["certificate"] is None and document["chain_valid"] is None


# --- the command line ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "check", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_exit_code_is_the_worst_and_lines_keep_input_order(servers: ServerLoop, pki: Pki,
                                                               tmp_path: Path) -> None:
    good = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    expiring = servers.serve(_hold, pki.context(pki.leaf("mail.test", days_before=80, days_after=10)))
    listing = tmp_path / "targets.txt"
    listing.write_text(f"# endpoints\nsmtps://127.0.0.1:{good}\n\n127.0.0.1:{expiring}  # expiring\n")
    args = ["--ca-file", str(pki.ca_file), "--servername", "mail.test", "--starttls", "none"]
    both = run_cli("--file", str(listing), *args)
    assert both.returncode == 1, both.stderr
    lines = both.stdout.splitlines()
    assert lines[0].startswith("CERTKEEPER OK - ") and lines[1].startswith("CERTKEEPER WARNING - ")
    assert "certificate-expiring" in lines[1]
    shown = re.search(r"expires in (\d+) days.*\|days_chain_elem1=(\d+);21;7;; days_chain_elem2=", lines[1])
    assert shown and shown[1] == shown[2] == "9", lines[1]
    critical = run_cli(f"smtps://127.0.0.1:{good}", "smtps://127.0.0.1:1", "--json", *args)
    assert critical.returncode == 2, critical.stderr
    document = json.loads(critical.stdout)
    assert [entry["port"] for entry in document] == [good, 1]
    first = document[0]
    assert {"target", "host", "port", "protocol", "tls", "status", "message", "tls_version", "cipher",
            "chain_valid", "hostname_valid", "certificate", "chain", "findings", "elapsed_ms"} <= set(first)
    assert first["protocol"] == "smtps" and first["tls"] == "implicit"
    assert first["certificate"]["not_after"].endswith("Z") and len(first["certificate"]["fingerprint_sha256"]) == 64
    assert first["certificate"]["serial"] == first["certificate"]["serial"].lower()
    assert document[1]["findings"][0]["code"] == "connection-failed"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["not a target"],
        ["127.0.0.1:2525"],
        ["smtps://127.0.0.1:465", "--warning", "5", "--critical", "9"],
        ["smtps://127.0.0.1:465", "--timeout", "abc"],
        ["smtps://127.0.0.1:465", "--ca-file", "/nonexistent/ca.pem"],
        ["--ca-file", "/nonexistent/ca.pem", "-c", "90", "smtps://127.0.0.1:465"],
        ["-w", "30", "smtps://127.0.0.1:465"],
    ],
)
def test_cli_bad_arguments_are_unknown(args: list[str]) -> None:
    """Invalid arguments exit 3 (UNKNOWN), as monitoring plugins do, with a message and no traceback."""
    result = run_cli(*args)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "certkeeper check:" in result.stderr and "Traceback" not in result.stderr


def test_cli_verbose_shows_the_dialogue(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(smtp_server(pki.context(pki.leaf("mail.test"))))
    result = run_cli(f"smtp://127.0.0.1:{port}", "-v", "--ca-file", str(pki.ca_file), "--servername", "mail.test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  C: EHLO [127.0.0.1]" in result.stdout and "  S: 220 2.0.0 go ahead" in result.stdout
    assert "  chain #2:" in result.stdout
