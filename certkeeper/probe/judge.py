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

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certkeeper import pki
from certkeeper.probe.result import (
    CERTIFICATE_EXPIRING,
    CERTIFICATE_NOT_TRUSTED,
    CERTIFICATE_REVOKED,
    CHAIN_INCOMPLETE,
    SELF_SIGNED,
    WEAK_KEY,
    WEAK_SIGNATURE,
    WRONG_PURPOSE,
    CertificateSummary,
    Finding,
)

# The pure half lives in verdict (shared with the lean path of one check); its names stay importable from here.
from certkeeper.probe.verdict import (
    ChainJudgement,
    Facts,
    date_finding,
    describe,
    hostname_matches,
    name_findings,
    problem_message,
    stale_finding,
    summarize_facts,
    thresholds_for,
    whole_days,
)

if TYPE_CHECKING:
    from certkeeper.probe.result import Severity

__all__ = ["ChainJudgement", "describe", "hostname_matches", "judge_chain", "problem_message", "purpose_finding",
           "revocation_finding", "stale_finding", "summarize", "thresholds_for", "whole_days"]


def summarize(certificate: x509.Certificate, *, now: datetime, warning_days: float,
              critical_days: float, scale: bool = True) -> CertificateSummary:
    facts = Facts(
        subject_name=pki.common_name(certificate.subject),
        issuer=pki.common_name(certificate.issuer),
        serial=pki.serial_hex(certificate),
        not_before=pki.not_before(certificate),
        not_after=pki.not_after(certificate),
        names=tuple(pki.subject_alternative_names(certificate)),
        fingerprint=pki.fingerprint(certificate),
        key_type=pki.key_type_of(certificate.public_key()),  # type: ignore[arg-type]
        spki_sha256=pki.spki_sha256(certificate),
        subject_dn=pki.distinguished_name(certificate.subject),
        issuer_dn=pki.distinguished_name(certificate.issuer),
    )
    return summarize_facts(facts, now=now, warning_days=warning_days, critical_days=critical_days, scale=scale)


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
        finding = date_finding(summary, index, now)
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
    hostname_valid, mismatch = name_findings(summaries[0], hostname)
    if mismatch is not None:
        findings.append(mismatch)

    check = pki.verify_chain(leaf, rest, roots, at=now)
    if not check.valid:
        trust = _trust_finding(certificates, summaries, roots, trust_source, check.error, dated)
        if trust is not None:
            findings.append(trust)
    return ChainJudgement(summaries, tuple(findings), check.valid, hostname_valid)


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
    if dated and _verifies_when_all_valid(certificates, summaries, roots):
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


def _verifies_when_all_valid(certificates: Sequence[x509.Certificate], summaries: Sequence[CertificateSummary],
                             roots: Sequence[x509.Certificate]) -> bool:
    """Dates already have their finding: whether the chain would verify at a moment when every certificate is
    valid, the anchor too, so that an expired certificate from a trusted CA is not also called "not trusted" (a
    leaf of 1950 under a root made this year: no moment of the served certificates alone is one of the root's)."""
    issuer = _last_served_issuer(certificates).issuer
    anchors: list[x509.Certificate | None] = [root for root in roots if root.subject == issuer] or [None]
    for anchor in anchors:
        starts = [s.not_before for s in summaries] + ([anchor.not_valid_before_utc] if anchor else [])
        ends = [s.not_after for s in summaries] + ([anchor.not_valid_after_utc] if anchor else [])
        moment = max(starts) + timedelta(seconds=1)
        if moment < min(ends) and pki.verify_chain(certificates[0], list(certificates[1:]), roots, at=moment).valid:
            return True
    return False


def _last_served_issuer(certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    """Follow issuer names from the leaf through the served certificates; the last one reached."""
    by_subject = {c.subject: c for c in certificates[1:]}
    current = certificates[0]
    seen = {id(current)}
    while current.issuer in by_subject and id(by_subject[current.issuer]) not in seen:
        current = by_subject[current.issuer]
        seen.add(id(current))
    return current


