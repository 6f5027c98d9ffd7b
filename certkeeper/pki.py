"""Keys, CSRs, certificates and chains: the cryptography library's home for everything but the CA itself.

Pure functions over bytes and objects; the only IO is none.  Callers that read files wrap ValueError from
here into :class:`certkeeper.errors.InputError` naming the file.

``cryptography`` is imported by the functions that use it, not with this module: a ``renew`` with nothing due
decides from ``version.json`` and never parses a certificate, and importing ``cryptography.x509`` costs about
as much as the rest of its start (issue 23).  ``tests/test_startup_imports.py`` holds that.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, TypeAlias

from certkeeper import model
from certkeeper.model import KeyType
from certkeeper.values import frozen

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    PublicKey: TypeAlias = (ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
                            | ed448.Ed448PublicKey)

_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}


def generate_key(key_type: KeyType) -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_key(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """ValueError (never the key's bytes in the message) when it is not an ECDSA or RSA private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(pem, passphrase)
    except TypeError as exc:
        raise ValueError("the private key is encrypted and no passphrase was given" if passphrase is None
                         else "the private key is not encrypted but a passphrase was given") from exc
    except ValueError:
        msg = "not a PEM private key, or a wrong passphrase"
        raise ValueError(msg) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        msg = f"unsupported private key type {type(key).__name__}"
        raise ValueError(msg)  # noqa: TRY004 - callers report a bad key file as ValueError, whatever its cause
    return key


def key_from_jwk(jwk: dict[str, str]) -> PrivateKey:
    """A private key from its JWK form (RFC 7518 section 6: what certbot keeps as ``private_key.json``).

    Raises ValueError naming what is missing or wrong; the key material never appears in a message.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def number(name: str) -> int:
        text = jwk.get(name)
        if not isinstance(text, str) or not text:
            msg = f"the JWK has no {name!r}"
            raise ValueError(msg)
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    kind = jwk.get("kty")
    if kind == "RSA":
        public = rsa.RSAPublicNumbers(number("e"), number("n"))
        return rsa.RSAPrivateNumbers(number("p"), number("q"), number("d"), number("dp"), number("dq"),
                                     number("qi"), public).private_key()
    if kind == "EC":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}.get(str(jwk.get("crv")))
        if curve is None:
            msg = f"unsupported JWK curve {jwk.get('crv')!r}"
            raise ValueError(msg)
        return ec.EllipticCurvePrivateNumbers(number("d"), ec.EllipticCurvePublicNumbers(
            number("x"), number("y"), curve)).private_key()
    msg = f"unsupported JWK key type {kind!r}"
    raise ValueError(msg)


def cert_to_pem(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ValueError if there is none or one is malformed."""
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in pem:
        msg = "no PEM certificate found"
        raise ValueError(msg)
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        msg = f"malformed PEM certificate ({exc})"
        raise ValueError(msg) from None


def key_type_of(key: PublicKey | PrivateKey) -> str:
    """``"ecdsa-p256"``, ``"rsa-2048"``, ... as in the configuration; other keys by their algorithm name."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}.get(
            key.curve.name, f"ecdsa-{key.curve.name}")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448"
    return type(key).__name__.lower()


def public_key_der(key: PrivateKey | PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key: PrivateKey, certificate: x509.Certificate) -> bool:
    """The certificate names ``key``'s public key (compared by OpenSSL: a sixth of encoding both to DER)."""
    return bool(key.public_key() == certificate.public_key())


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex: how every output and the store name a certificate."""
    from cryptography.hazmat.primitives import hashes

    return certificate.fingerprint(hashes.SHA256()).hex()


def spki_sha256(certificate: x509.Certificate) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, lowercase hex: the TLSA ``3 1 1`` / ``2 1 1`` association data."""
    return hashlib.sha256(public_key_der(certificate.public_key())).hexdigest()  # type: ignore[arg-type]


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def subject_alternative_names(certificate: x509.Certificate) -> list[str]:
    """DNS names, then IP addresses, as strings; empty when there is no SAN extension."""
    from cryptography import x509

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(extension.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in extension.get_values_for_type(x509.IPAddress)]
    return names


def common_name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if attributes:
        value = attributes[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return name.rfc4514_string()


@cache
def _go_attribute_names() -> dict[x509.ObjectIdentifier, str]:
    """Go's crypto/x509/pkix attribute names (pkix.Name.String()), which blackbox_exporter puts in its labels."""
    from cryptography.x509.oid import NameOID

    return {
        NameOID.COUNTRY_NAME: "C", NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
        NameOID.COMMON_NAME: "CN", NameOID.SERIAL_NUMBER: "SERIALNUMBER", NameOID.LOCALITY_NAME: "L",
        NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.STREET_ADDRESS: "STREET", NameOID.POSTAL_CODE: "POSTALCODE",
    }


def distinguished_name(name: x509.Name) -> str:
    """``CN=mail.example.org,O=Example``: RFC 4514 order and escaping with Go's attribute names, so the text
    equals what blackbox_exporter (Go's ``pkix.Name.String()``) writes.  Types Go has no name for appear as
    dotted OIDs (Go would also hex-encode their DER value: a rare case left simpler here)."""
    overrides = dict(_go_attribute_names())
    for attribute in name:
        if attribute.oid not in overrides:
            overrides[attribute.oid] = attribute.oid.dotted_string
    return name.rfc4514_string(overrides)


def not_before(certificate: x509.Certificate) -> datetime:
    return certificate.not_valid_before_utc


def not_after(certificate: x509.Certificate) -> datetime:
    return certificate.not_valid_after_utc


def is_self_signed(certificate: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(certificate: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def make_csr(key: PrivateKey, domains: Sequence[str]) -> x509.CertificateSigningRequest:
    """A CSR for ``domains`` (the first becomes the CN when it fits, as most CAs still like)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    builder = x509.CertificateSigningRequestBuilder()
    if len(domains[0]) <= 64:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
    )
    return builder.sign(key, hashes.SHA256())


def split_fullchain(pem: bytes) -> tuple[x509.Certificate, list[x509.Certificate]]:
    certificates = load_certificates(pem)
    return certificates[0], certificates[1:]


@frozen
class ChainCheck:
    """Outcome of verifying a leaf and its intermediates against trust anchors at a moment."""

    valid: bool
    error: str = ""


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    at: datetime,
    hostname: str | None = None,
) -> ChainCheck:
    """Path validation (RFC 5280, with the CA/B Forum server profile cryptography implements).

    With ``hostname=None`` only the chain is judged (the leaf is checked against the first of its own SANs the
    verifier takes), so that a probe can report "chain valid" and "host name valid" as two separate findings.
    """
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    if not roots:
        return ChainCheck(False, "no trust anchors to verify against")
    names = [hostname] if hostname is not None else subject_alternative_names(leaf)
    if not names:
        return ChainCheck(False, "the certificate has no subject alternative name")
    builder = PolicyBuilder().store(Store(list(roots))).time(at.astimezone(UTC).replace(tzinfo=None))
    # Judging the chain alone: through the first of the leaf's names that the verifier takes as a host name
    # (a server's certificate may list "example.com." or "_srv.example" first, which it refuses).
    verifier = next((v for v in (_server_verifier(builder, name) for name in names) if v is not None), None)
    if verifier is None:
        shown = ", ".join(repr(name) for name in names[:3]) + (", ..." if len(names) > 3 else "")
        what = f"{shown} is" if hostname is not None else f"none of the certificate's names ({shown}) is"
        return ChainCheck(False, f"{what} an address or a host name path validation can check")
    try:
        verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        return ChainCheck(False, str(exc))
    return ChainCheck(True)


def _server_verifier(builder: x509.verification.PolicyBuilder, name: str) -> x509.verification.ServerVerifier | None:
    """The verifier of a server named ``name``, or None when ``name`` is neither an address nor a valid DNS name."""
    from cryptography import x509

    subject: x509.verification.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        # A wildcard SAN is checked through a name it covers: the verifier takes host names, not patterns.
        subject = x509.DNSName("wildcard-check." + name[2:] if name.startswith("*.") else name)
    try:
        return builder.build_server_verifier(subject)
    except ValueError:  # "invalid domain name": a trailing dot, an underscore, a space, a NUL, an empty label
        return None


class ChainVerifier:
    """:func:`verify_chain` that verifies a leaf's path to a root once per chain, not once per leaf.

    A renewal pass gates a thousand leaves under one intermediate; verifying each path in full checks the
    intermediate's signature by the root every time (an ECDSA P-384 root: five times the leaf's own check).  Once a
    leaf has verified in full through ``intermediates`` to ``roots``, a later leaf with the same one intermediate
    and the same roots is verified with that intermediate as its trust anchor (its signature, the leaf profile,
    the intermediate's name constraints, the leaf's validity), at a moment when the intermediate and every root are
    valid.  A root constraining names other than the intermediate does, more than one intermediate, or a chain
    not verified before takes the full path.  Safe to share between threads.
    """

    def __init__(self) -> None:
        # chain (intermediate, *roots) -> the moments it is valid in, when it may anchor a leaf: (start, end)
        self._verified: dict[tuple[x509.Certificate, ...], tuple[datetime, datetime] | None] = {}

    def verify(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
               roots: Sequence[x509.Certificate], *, at: datetime, hostname: str | None = None) -> ChainCheck:
        if self.anchors(intermediates, roots, at=at):
            return verify_chain(leaf, (), intermediates, at=at, hostname=hostname)
        check = verify_chain(leaf, intermediates, roots, at=at, hostname=hostname)
        if check.valid and len(intermediates) == 1:
            chain = (*intermediates, *roots)
            self._verified[chain] = _anchor_window(chain)
        return check

    def anchors(self, intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], *,
                at: datetime) -> bool:
        """Whether ``intermediates`` (one) may stand for the whole path to ``roots`` at ``at``: a leaf under it
        verified in full before, and every certificate of the path is valid then."""
        window = self._verified.get((*intermediates, *roots)) if len(intermediates) == 1 else None
        return window is not None and window[0] <= at.astimezone(UTC) <= window[1]


def _name_constraints(certificate: x509.Certificate) -> x509.NameConstraints | None:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _anchor_window(chain: tuple[x509.Certificate, ...]) -> tuple[datetime, datetime] | None:
    """When verifying under ``chain[0]`` as the anchor judges a leaf as the whole ``chain`` does: while every
    certificate in it is valid; never when a root constrains names other than the intermediate does."""
    constraints = _name_constraints(chain[0])
    if any(_name_constraints(root) not in (None, constraints) for root in chain[1:]):
        return None
    return max(c.not_valid_before_utc for c in chain), min(c.not_valid_after_utc for c in chain)


# Pure (no certificate library): it lives in the model, for the lean check path; callers keep pki's name.
names_cover = model.names_cover


def now_utc() -> datetime:
    """The shell's clock.  Decision code never calls it: it is handed ``now``."""
    return datetime.now(UTC)
