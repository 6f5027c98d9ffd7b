"""The lean check's DER reader (certkeeper.probe.der) against cryptography, which the engine reads with: the same
facts for certificates of every key type and odd names, and a clear DerError (never a traceback) for bad DER."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certkeeper import pki
from certkeeper.probe.der import Certificate, DerError, read_pem_bundle, sha256_hex, subject_der
from certkeeper.probe.judge import summarize
from certkeeper.probe.verdict import Facts, summarize_facts

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

KEYS: dict[str, Callable[[], Key]] = {
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa-1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
}

NAMES = {
    "plain": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")]),
    "unicode": x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Müller & Söhne, \"GmbH\" + Co; <x>"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "bücher.example")]),
    "escapes": x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#leading hash"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, " spaces "),
                          x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"),
                          x509.NameAttribute(NameOID.EMAIL_ADDRESS, "postmaster@example.org")]),
    "multi-valued RDN": x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b")])]),
    "no CN": x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Only An Org")]),
    "empty": x509.Name([]),
    "bmp": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ünï", _type=x509.name._ASN1Type.BMPString)]),
}


def make(key: Key, subject: x509.Name, *, sans: list[x509.GeneralName] | None = None, serial: int = 0x1234,
         issuer_key: Key | None = None, eku: bool = True, before: datetime = NOW - timedelta(days=1),
         after: datetime = NOW + timedelta(days=90)) -> x509.Certificate:
    signer = issuer_key or key
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(serial).not_valid_before(before).not_valid_after(after))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def der_of(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def agrees(certificate: x509.Certificate) -> Certificate:
    read = Certificate(der_of(certificate))
    assert read.facts() == Facts(
        subject_name=pki.common_name(certificate.subject), issuer=pki.common_name(certificate.issuer),
        serial=pki.serial_hex(certificate), not_before=pki.not_before(certificate),
        not_after=pki.not_after(certificate), names=tuple(pki.subject_alternative_names(certificate)),
        fingerprint=pki.fingerprint(certificate),
        key_type=pki.key_type_of(certificate.public_key()),  # type: ignore[arg-type]
        spki_sha256=pki.spki_sha256(certificate),
        subject_dn=pki.distinguished_name(certificate.subject),
        issuer_dn=pki.distinguished_name(certificate.issuer))
    summary = summarize(certificate, now=NOW, warning_days=21, critical_days=7)
    assert summarize_facts(read.facts(), now=NOW, warning_days=21, critical_days=7) == summary
    assert read.self_issued() == pki.is_self_signed(certificate)
    assert subject_der(der_of(certificate)) == read.subject.der
    return read


@pytest.mark.parametrize("key_type", list(KEYS))
def test_every_key_type_reads_as_cryptography_has_it(key_type: str) -> None:
    read = agrees(make(KEYS[key_type](), NAMES["plain"], sans=[x509.DNSName("mail.example.org")]))
    assert read.key_type == key_type
    if key_type.startswith("rsa"):
        assert read.key_bits == int(key_type.split("-")[1])


@pytest.mark.parametrize("name", list(NAMES))
def test_names_read_and_written_as_cryptography_does(name: str) -> None:
    agrees(make(KEYS["ecdsa-p256"](), NAMES[name], sans=[x509.DNSName("mail.example.org")]))


def test_many_sans_idn_and_addresses() -> None:
    sans: list[x509.GeneralName] = [x509.DNSName(f"host{i}.example.org") for i in range(300)]
    sans += [x509.DNSName("xn--bcher-kva.example"), x509.DNSName("*.example.org"),
             x509.IPAddress(ipaddress.ip_address("192.0.2.25")), x509.IPAddress(ipaddress.ip_address("2001:db8::25")),
             x509.RFC822Name("postmaster@example.org"), x509.UniformResourceIdentifier("https://example.org/")]
    read = agrees(make(KEYS["ecdsa-p256"](), NAMES["plain"], sans=sans))
    assert read.names[-2:] == ["192.0.2.25", "2001:db8::25"] and len(read.dns_names) == 302


def test_no_sans_dates_serials_and_issuers() -> None:
    issuer = KEYS["ecdsa-p256"]()
    agrees(make(KEYS["ecdsa-p256"](), NAMES["plain"], serial=2**159 - 1))
    agrees(make(KEYS["ecdsa-p256"](), NAMES["plain"], issuer_key=issuer, eku=False))  # self-issued, not self-signed
    agrees(make(KEYS["ecdsa-p256"](), NAMES["plain"], before=datetime(1999, 1, 1, tzinfo=UTC),
                after=datetime(2051, 1, 1, tzinfo=UTC)))  # UTCTime before 2000, GeneralizedTime from 2050


def test_extended_key_usage_is_read() -> None:
    read = Certificate(der_of(make(KEYS["ecdsa-p256"](), NAMES["plain"])))
    assert read.extended_key_usage == (ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,)


def test_a_pem_bundle() -> None:
    certificates = [make(KEYS["ecdsa-p256"](), NAMES["plain"]) for _ in range(3)]
    pem = b"junk\n".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    assert read_pem_bundle(pem) == [der_of(c) for c in certificates]
    with pytest.raises(DerError, match="END"):
        read_pem_bundle(b"-----BEGIN CERTIFICATE-----\nAAAA\n")


GOOD = der_of(make(KEYS["ecdsa-p256"](), NAMES["plain"], sans=[x509.DNSName("mail.example.org")]))


@pytest.mark.parametrize(("der", "words"), [
    (b"", "truncated"),
    (GOOD[:-1], "runs past"),
    (GOOD + b"\0", "trailing bytes"),
    (b"\x30\x03\x02\x01\x01", "three elements"),
    (b"\x1f\x01\x00", "multi-byte tag"),
    (b"\x30\x81\x05" + bytes(5), "shortest form"),
    (GOOD.replace(b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02", b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x82"),
     "object identifier"),
])
def test_bad_der_is_a_clear_error(der: bytes, words: str) -> None:
    with pytest.raises(DerError, match=words):
        Certificate(der)


def test_what_it_does_not_render_is_refused() -> None:
    t61 = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old", _type=x509.name._ASN1Type.T61String)])
    with pytest.raises(DerError, match="string type"):
        Certificate(der_of(make(KEYS["ecdsa-p256"](), t61)))
    with pytest.raises(DerError, match="curve"):
        Certificate(der_of(make(ec.generate_private_key(ec.SECP256K1()), NAMES["plain"])))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(0, 255))
def test_any_bytes_give_a_certificate_or_a_der_error(junk: bytes, where: int, value: int) -> None:
    for data in (junk, GOOD[:where] + bytes([value]) + GOOD[where + 1:], GOOD[:where]):
        with contextlib.suppress(DerError):
            Certificate(data)


def test_the_fingerprint_is_sha256_with_or_without_hashlib_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `check` of one endpoint hashes with the interpreter's own SHA-256 (hashlib not imported: 3 ms); a process
    that has hashlib with OpenSSL's; the same digest either way."""
    import hashlib
    import sys

    data = bytes(range(256)) * 5
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_hex(data) == expected
    monkeypatch.delitem(sys.modules, "hashlib")
    assert sha256_hex(data) == expected
