"""TLS for certkeeper's own connections and listeners: the only importer of :mod:`ssl`.

The probe's handshakes with other people's servers use pyOpenSSL (:mod:`certkeeper.probe.engine`), which shows
what a server presents even when it does not verify.  Everything certkeeper itself talks to (the alert relay,
HTTPS fetches, its own HTTPS listeners) gets its context here, verified unless a caller says otherwise.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# Raised by a handshake whose peer certificate does not verify.
CertificateVerifyFailed = ssl.SSLCertVerificationError
Context = ssl.SSLContext
TlsError = ssl.SSLError
TlsSocket = ssl.SSLSocket


def client_context(ca_file: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
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
    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile) if cafile else None
