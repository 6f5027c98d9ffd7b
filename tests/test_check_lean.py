"""The lean path of one ``certkeeper check`` (certkeeper.probe.lean: blocking socket, stdlib ssl, the DER reader)
against the full engine (asyncio, pyOpenSSL, cryptography) on the same real loopback servers: the same result,
field for field, or the lean path hands the endpoint to the engine (None) where only the engine has the words."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certkeeper import values
from certkeeper.probe import ProbeOptions, ProbeResult, nagios_line, probe_sync, result_to_json
from certkeeper.probe.lean import check_one, covers
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


def both(text: str, pki: Pki, **options: object) -> tuple[ProbeResult | None, ProbeResult]:
    settings: dict[str, object] = {"ca_file": pki.ca_file, "servername": "mail.test", "timeout": 3.0}
    settings.update(options)
    probe_options = ProbeOptions(**settings)  # type: ignore[arg-type]
    target = parse_target(text)
    assert covers(probe_options, [target])
    return check_one(target, probe_options, now=NOW), probe_sync([target], probe_options, now=NOW)[0]


def same(lean: ProbeResult | None, full: ProbeResult) -> ProbeResult:
    """The two agree in everything but the time taken; the lean result."""
    assert lean is not None, "the lean path handed the endpoint over"
    lean, full = values.replace(lean, elapsed_ms=0), values.replace(full, elapsed_ms=0)
    assert lean == full
    assert result_to_json(lean) == result_to_json(full)
    assert nagios_line(lean) == nagios_line(full)
    return lean


def codes(result: ProbeResult) -> list[str]:
    return [finding.code for finding in result.findings]


def self_signed_context(name: str = "mail.test") -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=300))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_pems(context, certificate.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
    return context


CRLF = b"\r\n"
Make = Callable[[Pki], tuple[Handler, ssl.SSLContext | None]]


def implicit(**leaf: object) -> Make:
    return lambda p: (_hold, p.context(p.leaf("mail.test", **leaf)))  # type: ignore[arg-type]


def starttls(server: Callable[..., Handler], **settings: object) -> Make:
    return lambda p: (server(p.context(p.leaf("mail.test")), **settings), None)


# name -> (scheme, how to serve it, expected status, expected finding codes)
CASES: dict[str, tuple[str, Make, str, list[str]]] = {
    "valid": ("smtps", implicit(), "OK", []),
    "valid rsa, wildcard": ("imaps", lambda p: (_hold, p.context(p.leaf("*.test", key_type="rsa"))), "OK", []),
    "expired": ("smtps", implicit(days_before=90, days_after=-1), "CRITICAL", ["certificate-expired"]),
    "not yet valid": ("pop3s", implicit(days_before=-2), "CRITICAL", ["certificate-not-yet-valid"]),
    "wrong name": ("smtps", lambda p: (_hold, p.context(p.leaf("other.test"))), "CRITICAL",
                   ["certificate-host-mismatch"]),
    "incomplete chain": ("smtps", lambda p: (_hold, p.context(p.leaf("mail.test"), with_chain=False)), "CRITICAL",
                         ["chain-incomplete"]),
    "self-signed": ("smtps", lambda _: (_hold, self_signed_context()), "CRITICAL", ["self-signed"]),
    "warning": ("smtps", implicit(days_before=100, days_after=10), "WARNING", ["certificate-expiring"]),
    "critical": ("smtps", implicit(days_before=100, days_after=3), "CRITICAL", ["certificate-expiring"]),
    "short-lived, thresholds scaled": ("smtps", implicit(days_before=1, days_after=5), "OK", []),
    "smtp starttls": ("smtp", starttls(smtp_server), "OK", []),
    "imap starttls": ("imap", starttls(imap_server), "OK", []),
    "pop3 starttls": ("pop3", starttls(pop3_server), "OK", []),
    "sieve starttls": ("sieve", starttls(sieve_server), "OK", []),
    "smtp, expired after starttls": (
        "smtp", lambda p: (smtp_server(p.context(p.leaf("mail.test", days_before=90, days_after=-1))), None),
        "CRITICAL", ["certificate-expired"]),
    "smtp without starttls": ("smtp", starttls(smtp_server, ehlo=[b"250-mail.test" + CRLF, b"250 SIZE 1" + CRLF]),
                              "CRITICAL", ["starttls-not-supported"]),
    "smtp starttls refused": ("smtp", starttls(smtp_server, starttls_reply=b"454 4.7.0 not now" + CRLF), "CRITICAL",
                              ["starttls-not-supported"]),
    "imap without starttls": ("imap", starttls(imap_server, capability=b"IMAP4rev1"), "CRITICAL",
                              ["starttls-not-supported"]),
    "pop3 without stls": ("pop3", starttls(pop3_server, stls=False), "CRITICAL", ["starttls-not-supported"]),
    "sieve starttls refused": ("sieve", starttls(sieve_server, refuse=True), "CRITICAL", ["starttls-not-supported"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lean_path_and_the_engine_agree(servers: ServerLoop, pki: Pki, case: str) -> None:
    scheme, make, status, expected = CASES[case]
    handler, context = make(pki)
    lean, full = both(f"{scheme}://127.0.0.1:{servers.serve(handler, context)}", pki)
    result = same(lean, full)
    assert (result.status, codes(result)) == (status, expected)


def garbage(lines: list[bytes]) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.writelines(lines)
        await writer.drain()
        await reader.read(1)

    return handle


def test_a_server_sending_garbage_before_starttls(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(garbage([b"HTTP/1.1 400 Bad Request\r\n", b"\r\n"]))
    result = same(*both(f"smtp://127.0.0.1:{port}", pki))
    assert codes(result) == ["protocol-error"] and "HTTP server" in result.message


def test_a_line_longer_than_the_limit(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(garbage([b"220-" + b"x" * 9000 + b"\r\n"]))
    result = same(*both(f"smtp://127.0.0.1:{port}", pki))
    assert codes(result) == ["protocol-error"]


def test_a_server_closing_in_the_dialogue(servers: ServerLoop, pki: Pki) -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-half a greeting\r\n")
        await writer.drain()

    port = servers.serve(close)
    result = same(*both(f"smtp://127.0.0.1:{port}", pki))
    assert codes(result) == ["connection-failed"]


def test_connection_refused(pki: Pki) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = same(*both(f"smtps://127.0.0.1:{port}", pki))
    assert codes(result) == ["connection-failed"] and "Connection refused" in result.message


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_a_server_that_hangs_times_out_alike(servers: ServerLoop, pki: Pki, scheme: str) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up: never a word, nor a ServerHello

    port = servers.serve(hang)
    result = same(*both(f"{scheme}://127.0.0.1:{port}", pki, timeout=0.5))
    assert codes(result) == ["timeout"]


# --- what the lean path leaves to the engine ------------------------------------------------------------------


def test_an_untrusted_ca_is_left_to_the_engine(servers: ServerLoop, pki: Pki, tmp_path: Path) -> None:
    other = Pki.create(tmp_path, "Other Root")
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    lean, full = both(f"smtps://127.0.0.1:{port}", pki, ca_file=other.ca_file)
    assert lean is None and codes(full) == ["certificate-not-trusted"]


def test_garbage_instead_of_a_tls_handshake_is_left_to_the_engine(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(garbage([b"220 mail.test ESMTP\r\n"]))
    lean, full = both(f"smtps://127.0.0.1:{port}", pki)
    assert lean is None and codes(full) == ["tls-handshake-failed"]


def test_a_leaf_without_server_auth_is_left_to_the_engine(servers: ServerLoop, pki: Pki) -> None:
    leaf = pki.leaf("mail.test", purposes=(x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,))
    port = servers.serve(_hold, pki.context(leaf))
    lean, full = both(f"smtps://127.0.0.1:{port}", pki)
    assert lean is None and "certificate-wrong-purpose" in codes(full)


def test_an_unreadable_ca_file_is_left_to_the_engine(pki: Pki, tmp_path: Path) -> None:
    lean = check_one(parse_target("smtps://127.0.0.1:1"), ProbeOptions(ca_file=tmp_path / "missing.pem"), now=NOW)
    assert lean is None


def test_a_ca_file_that_names_nothing_or_no_file_is_a_bad_argument(tmp_path: Path) -> None:
    """--ca-file is kept as the str given (no pathlib for one check): "" is nothing, not the current folder."""
    empty = run_check("smtps://127.0.0.1:1", "--ca-file", "")
    assert empty.returncode == 3 and "--ca-file must name a PEM file of trust anchors" in empty.stderr, empty
    missing = run_check("smtps://127.0.0.1:1", "--ca-file", str(tmp_path / "missing.pem"))
    assert missing.returncode == 3, missing
    assert f"{tmp_path / 'missing.pem'}: cannot read the CA file: No such file or directory" in missing.stderr


def test_what_the_lean_path_covers() -> None:
    one = [parse_target("smtps://mail.test")]
    assert covers(ProbeOptions(), one)
    assert not covers(ProbeOptions(), one * 2)
    assert not covers(ProbeOptions(verbose=True), one)
    assert not covers(ProbeOptions(key_type="all"), one)
    assert not covers(ProbeOptions(refuse_tls=("TLSv1",)), one)


# --- the command ---------------------------------------------------------------------------------------------------


def run_check(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "check", *arguments], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_command_prints_what_the_engine_prints(servers: ServerLoop, pki: Pki) -> None:
    """`check` of one endpoint (the lean path) and of the same endpoint twice (the engine, for several targets)."""
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test", days_before=100, days_after=10)))
    target = f"smtps://127.0.0.1:{port}"
    one = run_check(target, "--servername", "mail.test", "--ca-file", str(pki.ca_file))
    two = run_check(target, target, "--servername", "mail.test", "--ca-file", str(pki.ca_file))
    assert one.returncode == two.returncode == 1
    assert one.stdout.rsplit(" time=", 1)[0] == two.stdout.splitlines()[0].rsplit(" time=", 1)[0]
    lean_json = run_check("--json", target, "--servername", "mail.test", "--ca-file", str(pki.ca_file))
    assert lean_json.returncode == 1 and '"status": "WARNING"' in lean_json.stdout


def _ends_of_connections(context: ssl.SSLContext, count: int) -> tuple[int, list[str]]:
    """A blocking TLS server of ``count`` connections that reports how each client ended it after the handshake:
    "close_notify", or "eof" (OpenSSL 3's "unexpected eof while reading", the line Dovecot and Postfix log)."""
    listener = socket.create_server(("127.0.0.1", 0))
    ends: list[str] = []

    def serve() -> None:
        with listener:
            for _ in range(count):
                connection, _ = listener.accept()
                connection.settimeout(5)
                with context.wrap_socket(connection, server_side=True, suppress_ragged_eofs=False) as tls:
                    try:
                        while tls.recv(1024):
                            pass
                        ends.append("close_notify")
                    except ssl.SSLEOFError:
                        ends.append("eof")
                    except OSError as exc:
                        ends.append(repr(exc))

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], ends  # ends: filled by the thread as each connection ends


@pytest.mark.parametrize("path", ["lean", "engine"])
def test_both_paths_end_the_connection_with_close_notify(pki: Pki, path: str) -> None:
    """The probe says goodbye in TLS (RFC 8446 section 6.1): the server logs a clean end, not an unexpected EOF.
    The engine sends the alert in the same write as its last handshake flight."""
    port, ends = _ends_of_connections(pki.context(pki.leaf("mail.test")), 1)
    options = ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=3.0)
    target = parse_target(f"smtps://127.0.0.1:{port}")
    result = (check_one(target, options, now=NOW) if path == "lean"
              else probe_sync([target], options, now=NOW)[0])
    assert result is not None and result.status == "OK", result
    deadline = time.monotonic() + 5
    while not ends and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ends == ["close_notify"]


def test_the_command_hands_an_untrusted_chain_to_the_engine(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    done = run_check(f"smtps://127.0.0.1:{port}", "--servername", "mail.test")  # the system store
    assert done.returncode == 2 and "certificate-not-trusted" in done.stdout


def test_an_address_given_instead_of_the_host(servers: ServerLoop, pki: Pki) -> None:
    """check_certkeeper probes each address of the host (--resolve): the lean path connects to it alike."""
    from certkeeper.probe import probe_target

    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    target = parse_target(f"smtps://mail.test:{port}")
    options = ProbeOptions(ca_file=pki.ca_file, timeout=3.0)
    for address in ("127.0.0.1", "127.0.0.2"):
        full = asyncio.run(probe_target(target, options, now=NOW, address=address))
        same(check_one(target, options, now=NOW, address=address), full)


def test_check_certkeeper_of_one_address_loads_no_engine(servers: ServerLoop, pki: Pki) -> None:
    port = servers.serve(_hold, pki.context(pki.leaf("mail.test")))
    code = ("import runpy, sys\nsys.argv = ['check_certkeeper', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('certkeeper.cli.check_certkeeper', run_name='__main__')\n"
            "except SystemExit as exc:\n    status = exc.code\n"
            "print(status, 'OpenSSL' in sys.modules, 'asyncio' in sys.modules, 'cryptography' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "-H", "mail.test", "-p", str(port), "-P", "smtps",
                           "--resolve", "127.0.0.1", "-r", str(pki.ca_file)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.splitlines()[0].startswith("SSL_CERT OK"), done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "0 False False False"


def signed_leaf_context(pki: Pki, *, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
                        sans: bool = True,
                        chain: bytes = b"") -> ssl.SSLContext:
    """A leaf for mail.test from the test intermediate, with the key and names given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME,
                                                                             "mail.test")]))
        .issuer_name(pki.intermediate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.intermediate_key.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.test")]), critical=False)
    certificate = builder.sign(pki.intermediate_key, hashes.SHA256())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:@SECLEVEL=0")
    _load_pems(context, certificate.public_bytes(serialization.Encoding.PEM)
               + pki.intermediate.public_bytes(serialization.Encoding.PEM) + chain,
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
    return context


def test_a_served_root_is_ignored_alike(servers: ServerLoop, pki: Pki) -> None:
    root = pki.ca_file.read_bytes()
    port = servers.serve(_hold, signed_leaf_context(pki, chain=root))
    result = same(*both(f"smtps://127.0.0.1:{port}", pki))
    assert result.status == "OK" and len(result.chain) == 3


@pytest.mark.parametrize("leaf", ["rsa-1024", "no SAN"])
def test_weak_or_nameless_leaves_are_left_to_the_engine(servers: ServerLoop, pki: Pki, leaf: str) -> None:
    settings: dict[str, object] = {
        "rsa-1024": {"key": rsa.generate_private_key(public_exponent=65537, key_size=1024)},
        "no SAN": {"sans": False},
    }[leaf]  # type: ignore[assignment]
    port = servers.serve(_hold, signed_leaf_context(pki, **settings))  # type: ignore[arg-type]
    lean, full = both(f"smtps://127.0.0.1:{port}", pki)
    assert lean is None and full.status == "CRITICAL"
