"""What the internal CA's certificates contain: the root, intermediate, leaf and CRL profiles.

Pure functions of keys, names and ``now``; no files, no clock.  :mod:`certkeeper.issuers.internal_ca` decides
when to call them, :mod:`certkeeper.issuers.ca_store` keeps what they return.

Choices, and why:

* Root ECDSA P-384 / intermediate P-256 (or RSA-4096 / RSA-3072): the root lives ten years, so it gets the
  larger key; the intermediate signs every leaf, so it gets the fast one.  RSA-3072 rather than 2048 for the
  intermediate because it outlives 2030, when NIST SP 800-131A retires 2048-bit RSA.
* pathLen 1 on the root and 0 on the intermediate: the intermediate can sign leaves only, never another CA.
* Name constraints (RFC 5280 4.2.1.10), critical, on BOTH root and intermediate when ``permitted_domains`` is
  set: the intermediate's stop a leaked intermediate key; the root's also bind every future intermediate made
  by a rollover.  IP addresses are excluded outright (0.0.0.0/0, ::/0), since a DNS-only permitted list leaves
  IP SANs unconstrained.
* The intermediate carries EKU serverAuth + clientAuth: a stolen intermediate key cannot sign S/MIME or code
  signing certificates that some software would accept.  Whether a leaf gets clientAuth is the config's call.
* Every certificate is backdated by :data:`CLOCK_SKEW`: a server or client whose clock is a few minutes behind
  would otherwise reject a certificate issued "in the future" and fail the post-install verification.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.pki import PrivateKey, PublicKey

#: How far back ``not_before`` is set, so clocks a few minutes slow still accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)

#: RFC 5280 5.3.1 reason codes accepted by ``ca revoke --reason``, in the spelling of the RFC.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}

# A host name of two or more LDH labels (RFC 1123 2.1), optionally under one leading "*." wildcard label.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})+")
# Cheap pre-check before ipaddress.ip_address (which costs more than the rest of the name checks together).
_MAYBE_IP = re.compile(r"^[0-9.]+$|:")
_NO_IP = [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")), x509.IPAddress(ipaddress.ip_network("::/0"))]


def hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 with P-384 (matched strength, as CNSA asks), SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def ca_name(organization: str, role: str) -> x509.Name:
    # ub-organization-name and ub-common-name are 64 characters (RFC 5280 appendix A).
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} {role}"[:64]),
    ])


def _name_constraints(permitted_domains: Sequence[str]) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in permitted_domains],
                                excluded_subtrees=list(_NO_IP))


def build_root(key: PrivateKey, subject: x509.Name, *, now: datetime, lifetime: timedelta,
               permitted_domains: Sequence[str]) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    if permitted_domains:
        builder = builder.add_extension(_name_constraints(permitted_domains), critical=True)
    return builder.sign(key, hash_for(key))


def build_intermediate(public_key: PublicKey, subject: x509.Name, root: x509.Certificate, root_key: PrivateKey,
                       *, now: datetime, lifetime: timedelta, permitted_domains: Sequence[str]) -> x509.Certificate:
    """An issuing CA under ``root``; it never outlives the root (a chain past the root's expiry is dead)."""
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(root.subject)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(min(now + lifetime, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id(root), critical=False)
    )
    if permitted_domains:
        builder = builder.add_extension(_name_constraints(permitted_domains), critical=True)
    return builder.sign(root_key, hash_for(root_key))


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def ip_address_or_none(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not _MAYBE_IP.search(name):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def name_problems(domains: Sequence[str], permitted_domains: Sequence[str]) -> list[str]:
    """Why each of ``domains`` cannot go in a leaf (syntax, or outside the name constraints); empty when fine.

    Checked before signing so that a refused name never becomes a certificate the verifiers would then reject.
    """
    problems = []
    suffixes = tuple("." + p for p in permitted_domains)
    for domain in domains:
        if ip_address_or_none(domain) is not None:
            if permitted_domains:
                problems.append(f"{domain} is an IP address; the CA's name constraints permit DNS names only")
            continue
        name = domain.lower()
        if not name.isascii():
            problems.append(f"{domain!r} is not ASCII; use its IDNA A-label form (xn--...)")
        elif len(name) > 253 or not _HOST_NAME.fullmatch(name):
            problems.append(f"{domain!r} is not a valid host name (or *. wildcard)")
        elif permitted_domains and not (name.removeprefix("*.") in permitted_domains
                                        or name.endswith(suffixes)):
            problems.append(f"{domain} is outside the CA's name constraints (permitted_domains: "
                            f"{', '.join(permitted_domains)})")
    return problems


def enforces_name_constraints(intermediate: x509.Certificate, permitted_domains: Sequence[str]) -> bool:
    """Whether :func:`name_problems` with ``permitted_domains`` holds names to all the name constraints
    ``intermediate`` carries: it has none, or exactly those ``ca init`` writes for that list.  Not when the
    configuration's list changed after the intermediate was made; only path validation then judges the names."""
    try:
        carried = intermediate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    return bool(permitted_domains) and carried == _name_constraints(permitted_domains)


@frozen
class LeafProfile:
    """What every leaf from one intermediate shares, built once so that each issue only adds its own parts.

    ``base_ecdsa`` / ``base_rsa`` are certificate builders already holding the issuer, basicConstraints, key
    usage, EKU, AKI and CRL distribution point: adding those per leaf was a tenth of the cost of issuing one.
    """

    max_not_after: datetime
    base_ecdsa: x509.CertificateBuilder
    base_rsa: x509.CertificateBuilder

    @classmethod
    def for_intermediate(cls, intermediate: x509.Certificate, *, client_auth: bool,
                         crl_url: str | None) -> LeafProfile:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])

        def base(rsa_key: bool) -> x509.CertificateBuilder:
            builder = (
                x509.CertificateBuilder().issuer_name(intermediate.subject)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                # keyEncipherment only for RSA: TLS 1.2 RSA key exchange encrypts to the key; ECDSA keys only sign.
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(authority_key_id(intermediate), critical=False)
            )
            if crl_url:
                builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
                    crl_issuer=None)]), critical=False)
            return builder

        return cls(intermediate.not_valid_after_utc, base(rsa_key=False), base(rsa_key=True))


def build_leaf(profile: LeafProfile, signing_key: PrivateKey, public_key: PublicKey, domains: Sequence[str], *,
               now: datetime, lifetime: timedelta) -> x509.Certificate:
    """A TLS server leaf: SANs exactly ``domains``, CA:false, and never outliving the intermediate."""
    general: list[x509.GeneralName] = []
    for domain in domains:
        address = ip_address_or_none(domain)
        general.append(x509.DNSName(domain) if address is None else x509.IPAddress(address))
    first = domains[0]
    # The CN is only for old software that still reads it; RFC 5280 4.2.1.6: with an empty subject, SAN is critical.
    with_cn = len(first) <= 64
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)] if with_cn else [])
    base = profile.base_rsa if isinstance(public_key, rsa.RSAPublicKey) else profile.base_ecdsa
    return (
        base.subject_name(subject).public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(min(now + lifetime, profile.max_not_after))
        .add_extension(x509.SubjectAlternativeName(general), critical=not with_cn)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(signing_key, hash_for(signing_key))
    )


@frozen
class Revocation:
    serial: int
    revoked_at: datetime
    reason: str


def build_crl(intermediate: x509.Certificate, key: PrivateKey, revocations: Sequence[Revocation], *,
              number: int, now: datetime, next_update: timedelta) -> x509.CertificateRevocationList:
    """A CRL (RFC 5280 5) signed by the intermediate, which issued every leaf it lists."""
    builder = (
        x509.CertificateRevocationListBuilder().issuer_name(intermediate.subject)
        .last_update(now).next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(intermediate), critical=False)
    )
    for revocation in revocations:
        entry = x509.RevokedCertificateBuilder().serial_number(revocation.serial).revocation_date(
            revocation.revoked_at)
        # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be left out rather than written.
        if revocation.reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(REASONS[revocation.reason]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hash_for(key))
