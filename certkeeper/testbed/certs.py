"""Throwaway certificate authorities and leaf certificates for the test bed.

The servers need certificates before certkeeper has issued any (Dovecot refuses to start
without one, Pebble ships none for its own HTTPS), and tests need deliberately bad ones:
expired, not yet valid, for the wrong names, with a key that does not match. Everything here
is for tests only: keys are unprotected and the CA lives in memory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certkeeper.values import frozen

KeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_LIFETIME = timedelta(days=30)
# Certificates start a little in the past so clock skew between processes never matters.
_BACKDATE = timedelta(minutes=5)


def generate_key(key_type: KeyType = "ecdsa-p256") -> PrivateKey:
    """Make a private key of the given certkeeper key type."""
    match key_type:
        case "ecdsa-p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "ecdsa-p384":
            return ec.generate_private_key(ec.SECP384R1())
        case "rsa-2048" | "rsa-3072" | "rsa-4096":
            return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))


def key_to_pem(key: PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM, what Postfix and Dovecot read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@frozen
class LeafCertificate:
    """A key and its certificate, with the intermediates that lead to the root."""

    key: PrivateKey
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fullchain_pem(self) -> bytes:
        """Leaf first, then the intermediates: the order servers send them in."""
        return self.cert_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.intermediates)

    def write(self, directory: Path, stem: str = "server") -> tuple[Path, Path]:
        """Write ``<stem>.key`` (mode 0600) and ``<stem>.fullchain.pem``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / f"{stem}.key"
        chain_path = directory / f"{stem}.fullchain.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        chain_path.write_bytes(self.fullchain_pem)
        return key_path, chain_path


class TestCA:
    """A certificate authority that signs leaves and intermediates in memory."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        name: str = "certkeeper test root",
        *,
        key_type: KeyType = "ecdsa-p256",
        now: datetime | None = None,
        _issuer: TestCA | None = None,
    ) -> None:
        self.name = name
        self.key: PrivateKey = generate_key(key_type)
        self._parent = _issuer
        moment = now or datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_name = _issuer.certificate.subject if _issuer else subject
        signer_key = _issuer.key if _issuer else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment - _BACKDATE)
            .not_valid_after(moment + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        self.certificate: x509.Certificate = builder.sign(signer_key, hashes.SHA256())

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def _chain_above(self) -> tuple[x509.Certificate, ...]:
        """This CA's own certificate and its parents', excluding the root."""
        if self._parent is None:
            return ()
        return (self.certificate, *self._parent._chain_above)

    def write_cert(self, path: Path) -> Path:
        """Write this CA's certificate as PEM, for clients to trust."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def intermediate(self, name: str = "certkeeper test intermediate") -> TestCA:
        """Create an intermediate CA signed by this one; its leaves carry it in their chain."""
        return TestCA(name, _issuer=self)

    def issue(
        self,
        names: Sequence[str],
        *,
        key_type: KeyType = "ecdsa-p256",
        key: PrivateKey | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> LeafCertificate:
        """Issue a TLS server certificate for ``names`` (DNS names or IP addresses).

        Pass ``not_after`` in the past for an expired certificate, ``not_before`` in the future
        for one not yet valid, and ``key`` to reuse a key (to build a mismatch elsewhere).
        """
        if not names:
            msg = "a certificate needs at least one name"
            raise ValueError(msg)
        leaf_key = key or generate_key(key_type)
        start = not_before or datetime.now(UTC) - _BACKDATE
        end = not_after or start + DEFAULT_LIFETIME
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return LeafCertificate(leaf_key, certificate, self._chain_above)
