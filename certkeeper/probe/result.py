"""What a probe hands back: plain frozen values that the CLI, the daemon and the verifier all read.

A probe that reached the server and saw a bad certificate still returns a :class:`ProbeResult` (findings are
data); the result carries the certificate whenever one was received, because monitoring that goes silent
exactly when a certificate is invalid is the failure operators complain about most.
"""

from __future__ import annotations

from datetime import datetime

from certkeeper.targets import Target
from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Literal

    Status = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
    Severity = Literal["INFO", "WARNING", "CRITICAL", "UNKNOWN"]
    KeyTypeChoice = Literal["rsa", "ecdsa", "all"]
    OldTlsVersion = Literal["TLSv1", "TLSv1.1"]

# Nagios plugin exit codes (monitoring-plugins development guidelines, "Plugin Return Codes").
EXIT_CODES: dict[str, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
_RANK: dict[str, int] = {"INFO": 0, "OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}

# The finding codes.  RFC 8460 (SMTP TLS Reporting) result types where one fits, so that an administrator
# reads the same words here as in the TLS reports other mail systems send them.
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_EXPIRING = "certificate-expiring"
CERTIFICATE_NOT_YET_VALID = "certificate-not-yet-valid"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
CHAIN_INCOMPLETE = "chain-incomplete"
SELF_SIGNED = "self-signed"
WEAK_KEY = "weak-key"
WRONG_PURPOSE = "certificate-wrong-purpose"  # extended key usage without serverAuth (RFC 5280 section 4.2.1.12)
CERTIFICATE_REVOKED = "certificate-revoked"  # listed in its CA's CRL (managed internal-CA certificates)
TLS_VERSION_TOO_OLD = "tls-version-too-old"  # accepts a version the caller refuses (RFC 8996: TLS 1.0, 1.1)
WEAK_SIGNATURE = "weak-signature"  # signed with SHA-1 or MD5: refused by clients, CRITICAL as check_ssl_cert has it
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CONNECTION_FAILED = "connection-failed"
TIMEOUT = "timeout"
PROTOCOL_ERROR = "protocol-error"
TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
SERVED_CERTIFICATE_STALE = "served-certificate-stale"
INTERNAL_ERROR = "internal-error"


@frozen
class ProbeOptions:
    """How to probe; one value for a whole run, so TLS contexts and trust anchors are built once."""

    timeout: float = 10.0  # deadline for the whole target (connect, dialogue, every handshake), not per read
    servername: str | None = None  # SNI and the name to verify; None -> the target's host
    sni: bool = True  # False: send no SNI, as sending MTAs on port 25 may
    ca_file: Path | str | None = None  # trust anchors (check's --ca-file as given); None -> the system store
    crl_files: tuple[Path, ...] = ()  # CRLs to look the served leaf up in (an internal CA's crl.pem)
    issuer_roots: tuple[Path, ...] = ()  # managed endpoints: the issuer's roots, trusted with ca_file instead of
    #                                      the system store (an internal CA, an ACME issuer's trust_roots)
    warning_days: float = 21
    critical_days: float = 7
    scale_thresholds: bool = True  # False (--no-scale): thresholds as given for short-lived certificates too
    key_type: KeyTypeChoice | None = None  # None: whatever the server picks
    expected_fingerprints: frozenset[str] | None = None  # managed certificates: what should be served
    verbose: bool = False  # record the protocol transcript
    refuse_tls: tuple[OldTlsVersion, ...] = ()  # CRITICAL when the server accepts one of these


@frozen
class Finding:
    """One thing a probe found: a code (RFC 8460 words where one fits), how bad, and what to tell people."""

    code: str
    severity: Severity
    message: str


@frozen
class CertificateSummary:
    """What the outputs show of one served certificate."""

    subject: str
    issuer: str
    serial: str  # lowercase hex
    not_before: datetime
    not_after: datetime
    days_left: float
    fingerprint_sha256: str  # lowercase hex
    subject_alternative_names: tuple[str, ...]
    key_type: str  # "ecdsa-p256", "rsa-2048", ...
    warning_days: float  # the thresholds that applied to this certificate (scaled when short-lived)
    critical_days: float
    spki_sha256: str = ""  # lowercase hex: what TLSA "3 1 1" / "2 1 1" records name (RFC 6698 section 2.1)
    subject_dn: str = ""  # the whole name, as blackbox_exporter labels it: "CN=mail.example.org,O=Example"
    issuer_dn: str = ""


@frozen
class ProbeResult:
    """One endpoint's probe: its status, words and certificates."""

    target: Target
    status: Status
    message: str
    tls_version: str | None = None
    cipher: str | None = None
    chain_valid: bool | None = None
    hostname_valid: bool | None = None
    certificate: CertificateSummary | None = None
    chain: tuple[CertificateSummary, ...] = ()
    findings: tuple[Finding, ...] = ()
    elapsed_ms: float = 0.0
    transcript: tuple[str, ...] = ()
    served: tuple[CertificateSummary, ...] = ()  # one leaf per key type fetched (two with --key-type all)
    address: str | None = None  # the IP connected to, when the caller chose it

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def refused_versions(*, no_tls1: bool, no_tls1_1: bool) -> tuple[OldTlsVersion, ...]:
    """``--require-no-tls1`` / ``--require-no-tls1_1`` as the versions a probe must find refused."""
    refused: tuple[OldTlsVersion, ...] = ("TLSv1",) if no_tls1 else ()
    return refused + (("TLSv1.1",) if no_tls1_1 else ())


def worst_status(severities: list[str] | tuple[str, ...]) -> Status:
    """The Nagios status a set of findings adds up to: the most severe one; INFO counts as OK."""
    rank = max((_RANK[s] for s in severities), default=0)
    statuses: tuple[Status, ...] = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
    return statuses[rank]
