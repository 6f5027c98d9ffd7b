"""TLS for certkeeper's own connections and listeners: the only importer of :mod:`ssl`.

The probe's handshakes with other people's servers use pyOpenSSL (:mod:`certkeeper.probe.wire`), which shows
what a server presents even when it does not verify; ``certkeeper check`` of one endpoint uses the stdlib here
instead (:mod:`certkeeper.probe.lean`, the functions at the end).  Everything certkeeper itself talks to (the
alert relay, HTTPS fetches, its own HTTPS listeners) gets its context here, verified unless a caller says
otherwise.
"""

from __future__ import annotations

import socket
import ssl

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from pathlib import Path

# Raised by a handshake whose peer certificate does not verify.
CertificateVerifyFailed = ssl.SSLCertVerificationError
Context = ssl.SSLContext
TlsError = ssl.SSLError
TlsSocket = ssl.SSLSocket


def client_context(ca_file: Path | str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (default: the system store), host names checked; or, with
    ``verify=False``, one that checks nothing (callers must not send credentials over it)."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def require_tls12(context: ssl.SSLContext) -> ssl.SSLContext:
    """Refuse anything older than TLS 1.2 (RFC 8996; RFC 8461 section 3.3 for MTA-STS policy fetches)."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(certificate_chain: Path, private_key: Path) -> ssl.SSLContext:
    """A server context for one of certkeeper's listeners: TLS 1.2 or newer (RFC 8996)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate_chain), str(private_key))
    return context


def system_bundle() -> Path | None:
    """The system's CA bundle file, as OpenSSL is configured to find it."""
    from pathlib import Path  # not with the module: one check never needs pathlib (issue 23)

    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile) if cafile else None


# --- The probe of one endpoint (certkeeper.probe.lean) ---------------------------------------------------------
# The engine's probes use pyOpenSSL; ``certkeeper check`` of a single endpoint, what a monitoring system starts
# as a process, uses the stdlib here instead: importing pyOpenSSL and cryptography costs more than the handshake.

# OpenSSL's X509_V_ERR_* codes the lean probe words itself (x509_vfy.h); any other reason goes to the engine.
VERIFY_UNABLE_TO_GET_ISSUER_CERT = 2
VERIFY_CERT_NOT_YET_VALID = 9
VERIFY_CERT_HAS_EXPIRED = 10
VERIFY_DEPTH_ZERO_SELF_SIGNED_CERT = 18
VERIFY_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20

# As the engine's contexts: every protocol version and cipher OpenSSL still has, so weak servers are seen and
# reported rather than failed; nothing secret is ever sent over these connections.
_PROBE_CIPHERS = "ALL:!aNULL:!eNULL:@SECLEVEL=0"


def probe_context(ca_file: Path | str | None, *, verify: bool) -> ssl.SSLContext:
    """A context for looking at a server's chain: with ``verify``, OpenSSL verifies it against ``ca_file`` (default:
    the system store) during the handshake, as a mail client would, host name left to the caller (judged from the
    certificate's names, so a wrong name does not hide the chain's own state); without, it checks nothing.
    OSError or :data:`TlsError` for an unreadable ``ca_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.set_ciphers(_PROBE_CIPHERS)
    # An anchor may be an intermediate (as cryptography's verifier, the engine's, has it); Python 3.13 sets this
    # and X509_STRICT in create_default_context() already, 3.11 does not.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    else:
        context.load_default_certs()
    return context


class UnverifiedChain(Exception):
    """A probe's handshake stopped at the server's certificate, which did not verify: OpenSSL's reason, and what
    the server had sent by then (its chain; the protocol version and cipher suite where known: TLS 1.3 agrees on
    them before the certificate, TLS 1.2 only in the messages after it)."""

    def __init__(self, verify_code: int, chain: list[bytes], version: str, cipher: str) -> None:
        super().__init__(f"certificate verify failed (OpenSSL code {verify_code})")
        self.verify_code = verify_code
        self.chain = chain
        self.version = version
        self.cipher = cipher


def handshake(sock: socket.socket, context: ssl.SSLContext, server_name: bytes | None) -> ssl.SSLSocket:
    """The client handshake over ``sock`` (its timeout applies), SNI ``server_name`` (already A-labels: passing
    bytes keeps the ``idna`` codec unloaded); :class:`UnverifiedChain` when the certificate does not verify."""
    connection = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
    try:
        connection.do_handshake()
    except CertificateVerifyFailed as exc:
        suite = connection.cipher()  # (name, version, bits) once the ServerHello was read; None before
        failed = UnverifiedChain(exc.verify_code, served_chain(connection), suite[1] if suite else "",
                                 suite[0] if suite else "")
        connection.close()
        raise failed from None
    except BaseException:
        connection.close()
        raise
    return connection


def served_chain(connection: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, leaf first, in DER, verified or not.

    ``SSLSocket.get_unverified_chain()`` is public from Python 3.13; 3.11 and 3.12 have it (since 3.10) only on
    the private ``_sslobj``, returning ``_ssl.Certificate`` objects.  Both are SSL_get_peer_cert_chain(), what
    pyOpenSSL's get_peer_cert_chain() gives the engine.
    """
    public = getattr(connection, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+
        return list(public() or [])
    chain = connection._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
    return [certificate.public_bytes(ssl._ssl.ENCODING_DER) for certificate in chain]  # type: ignore[attr-defined]


def close_notify(connection: ssl.SSLSocket) -> None:
    """Send close_notify (RFC 8446 section 6.1, so the server logs a clean end) without waiting for the server's,
    then close."""
    try:
        connection.setblocking(False)
        connection.unwrap()
    except (ssl.SSLError, OSError):
        pass
    finally:
        connection.close()
