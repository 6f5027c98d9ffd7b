"""What a served chain means, given ``now``: pure functions from certificates to findings.

No IO and no clock: the engine hands in the DER chain the server sent, the trust anchors and ``now``, and
gets back summaries and findings.  That keeps every judgement testable with hand-made certificates and lets
the engine cache the result per distinct chain (the expensive part: parsing and path validation).

Thresholds for short-lived certificates
    A fixed "warn at 21 days, critical at 7" makes no sense for a 6-day certificate (it would be WARNING from
    birth).  When a certificate's lifetime is shorter than four times the warning threshold, both thresholds
    are scaled by ``lifetime / (4 * warning_days)``: with the defaults, a certificate of lifetime L < 84 days
    warns when L/4 is left and is critical when L/12 is left (a 160-hour certificate: 40 and 13.3 hours; a
    45-day one: 11.25 and 3.75 days), after the default renewal point (L/3 left), so a certificate renewing on
    schedule is never WARNING.  Longer-lived certificates use the thresholds as given.  ``scale=False``
    (``--no-scale``) uses them as given for every certificate, as check_ssl_cert does.

Days as people and graphs read them
    :func:`whole_days` is the one rounding: whole days left, truncated toward zero, as check_ssl_cert's
    ``bc`` with scale 0 does.  The status line's "expires in N days" and perfdata's ``days_chain_elemN=N``
    both use it, so they never disagree by one.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certkeeper import pki
from certkeeper.model import SHORT_LIVED_FACTOR
from certkeeper.probe.result import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_EXPIRING,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_TRUSTED,
    CERTIFICATE_NOT_YET_VALID,
    CERTIFICATE_REVOKED,
    CHAIN_INCOMPLETE,
    SELF_SIGNED,
    SERVED_CERTIFICATE_STALE,
    WEAK_KEY,
    WEAK_SIGNATURE,
    WRONG_PURPOSE,
    CertificateSummary,
    Finding,
    Severity,
)

_DAY = 86400.0


@dataclass(frozen=True)
class ChainJudgement:
    """Everything that depends on the served certificates only; cached per distinct chain and name."""

    chain: tuple[CertificateSummary, ...]
    findings: tuple[Finding, ...]
    chain_valid: bool
    hostname_valid: bool


def thresholds_for(lifetime_days: float, warning_days: float, critical_days: float, *,
                   scale: bool = True) -> tuple[float, float]:
    """(warning, critical) days for a certificate of this lifetime; scaled down for short-lived ones."""
    if scale and warning_days > 0 and 0 < lifetime_days < SHORT_LIVED_FACTOR * warning_days:
        factor = lifetime_days / (SHORT_LIVED_FACTOR * warning_days)
        return warning_days * factor, critical_days * factor
    return warning_days, critical_days


def whole_days(days_left: float) -> int:
    """Whole days left, truncated toward zero (59.99 -> 59, -1.5 -> -1): the one rounding of text and perfdata."""
    return math.trunc(days_left)


def summarize(certificate: x509.Certificate, *, now: datetime, warning_days: float,
              critical_days: float, scale: bool = True) -> CertificateSummary:
    not_before, not_after = pki.not_before(certificate), pki.not_after(certificate)
    warning, critical = thresholds_for((not_after - not_before).total_seconds() / _DAY, warning_days, critical_days,
                                       scale=scale)
    names = pki.subject_alternative_names(certificate)
    return CertificateSummary(
        # Certificates without a subject CN are common now (RFC 5280 4.2.1.6; Let's Encrypt's short-lived ones):
        # name them by their first SAN rather than as ''.
        subject=pki.common_name(certificate.subject) or (names[0] if names else "(no subject name)"),
        issuer=pki.common_name(certificate.issuer),
        serial=pki.serial_hex(certificate),
        not_before=not_before,
        not_after=not_after,
        days_left=(not_after - now).total_seconds() / _DAY,  # exact: whole_days() truncates, JSON rounds
        fingerprint_sha256=pki.fingerprint(certificate),
        subject_alternative_names=tuple(names),
        key_type=pki.key_type_of(certificate.public_key()),  # type: ignore[arg-type]
        warning_days=round(warning, 6),
        critical_days=round(critical, 6),
        spki_sha256=pki.spki_sha256(certificate),
        subject_dn=pki.distinguished_name(certificate.subject),
        issuer_dn=pki.distinguished_name(certificate.issuer),
    )


def describe(summary: CertificateSummary) -> str:
    """``'mail.example.org' from 'R11' valid until 2027-02-01 (expires in 64 days)``, as the Nagios line says it."""
    until = summary.not_after.strftime("%Y-%m-%d %H:%M UTC")
    return f"'{summary.subject}' from '{summary.issuer}' valid until {until} (expires in {_days(summary.days_left)})"


def _days(days: float) -> str:
    if abs(days) >= 2:
        return f"{whole_days(days)} days"
    hours = days * 24
    return f"{hours:.0f} hours" if abs(hours) >= 1 else f"{days * 1440:.0f} minutes"


def hostname_matches(names: Sequence[str], hostname: str) -> bool:
    """RFC 6125 §6.4: exact DNS name or a left-most ``*`` label; IP addresses compare as addresses."""
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return not pki.names_cover(list(names), [hostname.rstrip(".")])
    for name in names:
        try:
            if ipaddress.ip_address(name) == address:
                return True
        except ValueError:
            continue
    return False


def judge_chain(
    certificates: Sequence[x509.Certificate],
    *,
    hostname: str,
    roots: Sequence[x509.Certificate],
    trust_source: str,
    now: datetime,
    warning_days: float,
    critical_days: float,
    scale: bool = True,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> ChainJudgement:
    """Judge the chain a server sent (leaf first): dates, key strength, name, trust and completeness."""
    summaries = tuple(
        summarize(c, now=now, warning_days=warning_days, critical_days=critical_days, scale=scale)
        for c in certificates
    )
    leaf, rest = certificates[0], list(certificates[1:])
    findings: list[Finding] = []
    dated = False
    for index, (certificate, summary) in enumerate(zip(certificates, summaries, strict=True)):
        if index > 0 and pki.is_self_signed(certificate):
            continue  # a root sent along is ignored by clients: they use their own copy of the anchor
        finding = _date_finding(summary, index, now)
        if finding is not None:
            findings.append(finding)
            dated = dated or finding.code != CERTIFICATE_EXPIRING
        findings.extend(_strength_findings(certificate, summary, index))

    purpose = purpose_finding(leaf)
    if purpose is not None:
        findings.append(purpose)
    revoked = revocation_finding(certificates, crls)
    if revoked is not None:
        findings.append(revoked)
    hostname_valid = hostname_matches(summaries[0].subject_alternative_names, hostname)
    if not hostname_valid:
        names = ", ".join(summaries[0].subject_alternative_names) or "no subject alternative names"
        findings.append(Finding(CERTIFICATE_HOST_MISMATCH, "CRITICAL",
                                f"the certificate names {names}, not {hostname!r}"))

    check = pki.verify_chain(leaf, rest, roots, at=now)
    if not check.valid:
        trust = _trust_finding(certificates, summaries, roots, trust_source, check.error, dated)
        if trust is not None:
            findings.append(trust)
    return ChainJudgement(summaries, tuple(findings), check.valid, hostname_valid)


def _date_finding(summary: CertificateSummary, index: int, now: datetime) -> Finding | None:
    what = "the certificate" if index == 0 else f"chain certificate #{index + 1}"
    who = f"{what} '{summary.subject}' from '{summary.issuer}'"
    if now < summary.not_before:
        return Finding(CERTIFICATE_NOT_YET_VALID, "CRITICAL",
                       f"{who} is not valid before {summary.not_before:%Y-%m-%d %H:%M} UTC")
    if now >= summary.not_after:
        return Finding(CERTIFICATE_EXPIRED, "CRITICAL",
                       f"{who} expired on {summary.not_after:%Y-%m-%d %H:%M} UTC ({_days(-summary.days_left)} ago)")
    # Exact, not the rounded days_left: a certificate living minutes (tests, demos) would read 0 days left
    # against 0 critical days, CRITICAL from its first second.
    left = (summary.not_after - now).total_seconds() / _DAY
    if left <= summary.critical_days or left <= summary.warning_days:
        severity: Severity = "CRITICAL" if left <= summary.critical_days else "WARNING"
        return Finding(CERTIFICATE_EXPIRING, severity,
                       f"{who} expires in {_days(summary.days_left)} ({summary.not_after:%Y-%m-%d %H:%M} UTC)")
    return None


# SHA-1 signatures: refused by current clients (and OpenSSL at its default security level 1 since 3.0 for
# TLS 1.2+ signatures); check_ssl_cert is CRITICAL for both.
def revocation_finding(certificates: Sequence[x509.Certificate],
                       crls: Sequence[x509.CertificateRevocationList]) -> Finding | None:
    """The served leaf listed in a CRL of its issuer.  A CRL counts only when its signature verifies with the
    public key of the served certificate that issued the leaf (RFC 5280 section 6.3.3 (f))."""
    leaf = certificates[0]
    signers = [c for c in certificates[1:] if c.subject == leaf.issuer]
    for crl in crls:
        if crl.issuer != leaf.issuer or not any(_signed_by(crl, signer) for signer in signers):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if entry is not None:
            try:
                reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
            except x509.ExtensionNotFound:
                reason = "unspecified"
            return Finding(CERTIFICATE_REVOKED, "CRITICAL",
                           f"the certificate (serial {pki.serial_hex(leaf)}) was revoked on "
                           f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC ({reason}) by "
                           f"'{pki.common_name(crl.issuer)}': renew it (certkeeper renew --force)")
    return None


def _signed_by(crl: x509.CertificateRevocationList, signer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(signer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


_PURPOSE_NAMES = {ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth", ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
                  ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
                  ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning"}


def purpose_finding(leaf: x509.Certificate) -> Finding | None:
    """A leaf whose extended key usage leaves out serverAuth: TLS clients refuse it for a server (RFC 5280
    section 4.2.1.12); without the extension any purpose is allowed."""
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    allowed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if allowed & set(usages):
        return None
    names = ", ".join(_PURPOSE_NAMES.get(usage, usage.dotted_string) for usage in usages) or "nothing"
    return Finding(WRONG_PURPOSE, "CRITICAL", f"the certificate's extended key usage allows {names}, not serverAuth: "
                                              "clients refuse it for a server; issue a TLS server certificate")


_WEAK_HASHES: dict[str, Severity] = {"md5": "CRITICAL", "sha1": "CRITICAL"}


def _strength_findings(certificate: x509.Certificate, summary: CertificateSummary, index: int) -> list[Finding]:
    what = "the certificate" if index == 0 else f"chain certificate #{index + 1} '{summary.subject}'"
    findings = []
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey) and key.key_size < 2048:
        findings.append(Finding(WEAK_KEY, "CRITICAL", f"{what} has a {key.key_size}-bit key (at least 2048 needed)"))
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        findings.append(Finding(WEAK_KEY, "CRITICAL", f"{what} uses the weak curve {key.curve.name}"))
    algorithm = certificate.signature_hash_algorithm
    if isinstance(algorithm, hashes.HashAlgorithm) and algorithm.name in _WEAK_HASHES:
        findings.append(Finding(WEAK_SIGNATURE, _WEAK_HASHES[algorithm.name],
                                f"{what} is signed with {algorithm.name.upper()}, which clients reject"))
    return findings


def _trust_finding(
    certificates: Sequence[x509.Certificate],
    summaries: Sequence[CertificateSummary],
    roots: Sequence[x509.Certificate],
    trust_source: str,
    error: str,
    dated: bool,
) -> Finding | None:
    """Why the chain does not verify, as one finding; None when the dates alone explain it."""
    leaf = certificates[0]
    if dated:
        # Dates already have their finding; ask whether the chain would verify when every certificate is
        # valid, so an expired certificate from a trusted CA is not also called "not trusted".
        moment = max(s.not_before for s in summaries) + timedelta(seconds=1)
        if moment < min(s.not_after for s in summaries) and pki.verify_chain(
            leaf, list(certificates[1:]), roots, at=moment
        ).valid:
            return None
    root_fingerprints = {pki.fingerprint(root) for root in roots}
    if pki.is_self_signed(leaf) and summaries[0].fingerprint_sha256 not in root_fingerprints:
        return Finding(SELF_SIGNED, "CRITICAL",
                       f"the certificate '{summaries[0].subject}' is self-signed and not in {trust_source}")
    # Incomplete: the leaf's issuer is neither served nor a trust anchor.  When intermediates are served but
    # lead to an unknown root, the CA is what is not trusted (a missing root is never the server's job).
    root_subjects = {root.subject for root in roots}
    if _last_served_issuer(certificates) is leaf and leaf.issuer not in root_subjects:
        missing = pki.common_name(leaf.issuer)
        return Finding(CHAIN_INCOMPLETE, "CRITICAL",
                       f"the server does not send the intermediate certificate '{missing}' that issued "
                       f"'{summaries[0].subject}' (or that CA is not in {trust_source}); clients that do not fetch "
                       f"missing intermediates cannot verify it: serve the full chain (fullchain.pem)")
    return Finding(CERTIFICATE_NOT_TRUSTED, "CRITICAL", f"the chain does not verify against {trust_source}: {error}")


def _last_served_issuer(certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    """Follow issuer names from the leaf through the served certificates; the last one reached."""
    by_subject = {c.subject: c for c in certificates[1:]}
    current = certificates[0]
    seen = {id(current)}
    while current.issuer in by_subject and id(by_subject[current.issuer]) not in seen:
        current = by_subject[current.issuer]
        seen.add(id(current))
    return current


def stale_finding(leaf: CertificateSummary, expected: frozenset[str] | None) -> Finding | None:
    """A managed endpoint that serves something other than what certkeeper installed."""
    if expected is None or leaf.fingerprint_sha256 in expected:
        return None
    return Finding(SERVED_CERTIFICATE_STALE, "CRITICAL",
                   f"the server still serves {leaf.fingerprint_sha256[:16]}... ('{leaf.subject}', serial "
                   f"{leaf.serial}), not the installed certificate: reload the service")


def problem_message(findings: Sequence[Finding], leaf: CertificateSummary | None) -> str:
    """The message part of the status line: the problems, worst first, else the certificate's description."""
    order = {"UNKNOWN": 0, "CRITICAL": 1, "WARNING": 2, "INFO": 3}
    problems = [f for f in findings if f.severity != "INFO"]
    if problems:
        return "; ".join(f"{f.code}: {f.message}" for f in sorted(problems, key=lambda f: order[f.severity]))
    if leaf is not None:
        return describe(leaf)
    return "no certificate received"
