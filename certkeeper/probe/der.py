"""A small, strict reader of X.509 certificates in DER (RFC 5280 section 4.1), for ``certkeeper check`` of one
endpoint without ``cryptography`` (whose import alone costs ten ``openssl s_client`` runs here).

It reads what the probe's judgement needs and nothing more: serial, signature algorithm, issuer and subject,
validity, the public key's type and size, subject alternative names (DNS names and IP addresses), extended key
usage and the key identifiers.  It does not verify anything: OpenSSL did that in the handshake.  Whatever it
does not know exactly as ``cryptography`` would render it (an unusual string type, an unknown key or curve, a
duplicate extension, trailing bytes) raises :class:`DerError`, and the caller hands the endpoint to the full
engine, so the two paths never word a certificate differently.
"""

from __future__ import annotations

import binascii
import ipaddress
import sys
from datetime import UTC, datetime

from certkeeper.probe.verdict import Facts

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from hashlib import sha256 as _own_sha256
else:
    try:
        from _sha256 import sha256 as _own_sha256  # Python 3.11 (3.12 names it _sha2)
    except ImportError:  # pragma: no cover - another Python
        from hashlib import sha256 as _own_sha256


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data``, lowercase hex: how certkeeper names a certificate (its DER) and a key (its SPKI).

    OpenSSL's (hashlib's) once something has imported hashlib, as the engine's libraries do: a fourth of the time
    for a certificate.  Else the interpreter's own: importing hashlib sets up OpenSSL's whole list of digests
    first, 3 ms of a `check` process of 35 that hashes three certificates.
    """
    loaded = sys.modules.get("hashlib")
    return (loaded.sha256 if loaded is not None else _own_sha256)(data).hexdigest()


class DerError(ValueError):
    """The bytes are not a certificate this reader renders exactly (the message says where and why)."""


# Tags (X.690 section 8): universal, constructed where noted, and the context-specific ones of a certificate.
_INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID = 0x02, 0x03, 0x04, 0x05, 0x06
_BOOLEAN = 0x01
_SEQUENCE, _SET = 0x30, 0x31
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_EXPLICIT_0, _EXPLICIT_3 = 0xA0, 0xA3

# Directory strings as cryptography decodes them (T61String and the rest: handed to the engine).
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x1A: "ascii", 0x1E: "utf-16-be",
                  0x1C: "utf-32-be"}

# RFC 4514 names of cryptography's rfc4514_string(), and Go's (pkix.Name.String()) as pki.distinguished_name has
# them; any other attribute type is written as its dotted OID.
_CN = "2.5.4.3"
_RFC4514_NAMES = {_CN: "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
                  "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID"}
_GO_NAMES = {"2.5.4.6": "C", "2.5.4.10": "O", "2.5.4.11": "OU", _CN: "CN", "2.5.4.5": "SERIALNUMBER",
             "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "STREET", "2.5.4.17": "POSTALCODE"}

_RSA = "1.2.840.113549.1.1.1"
_EC = "1.2.840.10045.2.1"
_CURVES = {"1.2.840.10045.3.1.7": "ecdsa-p256", "1.3.132.0.34": "ecdsa-p384", "1.3.132.0.35": "ecdsa-p521"}
_EDWARDS = {"1.3.101.112": "ed25519", "1.3.101.113": "ed448"}
# Signature algorithms whose hash clients accept (SHA-2, or none for EdDSA); SHA-1, MD5, RSASSA-PSS (its hash is
# in parameters) and the rest are left to the engine's judgement.
STRONG_SIGNATURES = frozenset({
    "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13", "1.2.840.113549.1.1.14",
    "1.2.840.10045.4.3.1", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4",
    "1.3.101.112", "1.3.101.113",
})
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0"
_SAN, _EKU, _SKI, _AKI = "2.5.29.17", "2.5.29.37", "2.5.29.14", "2.5.29.35"


def _element(data: bytes, position: int, end: int) -> tuple[int, int, int]:
    """The element at ``position``: (tag, start of its contents, end of its contents), within ``end``."""
    if position + 2 > end:
        msg = f"truncated at byte {position}"
        raise DerError(msg)
    tag, length = data[position], data[position + 1]
    if tag & 0x1F == 0x1F:
        msg = f"multi-byte tag at byte {position}"
        raise DerError(msg)
    start = position + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or start + count > end:
            msg = f"bad length at byte {position}"
            raise DerError(msg)
        length = int.from_bytes(data[start:start + count], "big")
        if length < 0x80 or data[start] == 0:
            msg = f"length not in its shortest form at byte {position}"
            raise DerError(msg)
        start += count
    if start + length > end:
        msg = f"element at byte {position} runs past its container"
        raise DerError(msg)
    return tag, start, start + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    elements = []
    while start < end:
        element = _element(data, start, end)
        elements.append(element)
        start = element[2]
    return elements


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int]:
    if element[0] != tag:
        msg = f"{what}: tag 0x{element[0]:02x}, expected 0x{tag:02x}"
        raise DerError(msg)
    return element[1], element[2]


def _oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        msg = "malformed object identifier"
        raise DerError(msg)
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def _time(tag: int, body: bytes) -> datetime:
    try:
        text = body.decode("ascii")
        if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z"):
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
        elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
            msg = f"unsupported time {body!r}"
            raise DerError(msg)
        if not text[:14].isdigit():
            msg = f"unsupported time {body!r}"
            raise DerError(msg)
        return datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                        int(text[12:14]), tzinfo=UTC)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, DerError):
            raise
        msg = f"bad time {body!r}"
        raise DerError(msg) from None


class Name:
    """A distinguished name: its DER, and its RDNs as (OID, text) pairs, in the order of the encoding."""

    __slots__ = ("der", "rdns")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.der = data[start:end]
        rdns = []
        for tag, set_start, set_end in _children(data, start, end):
            if tag != _SET:
                msg = "a name's RDN is not a SET"
                raise DerError(msg)
            attributes = []
            for attribute in _children(data, set_start, set_end):
                parts = _children(data, *_expect(attribute, _SEQUENCE, "attribute"))
                if len(parts) != 2:  # type and value
                    msg = "an attribute is not a type and a value"
                    raise DerError(msg)
                oid = _oid(data[slice(*_expect(parts[0], _OID, "attribute type"))])
                value_tag, value_start, value_end = parts[1]
                codec = _STRING_CODECS.get(value_tag)
                if codec is None:
                    msg = f"attribute {oid}: string type 0x{value_tag:02x} not read here"
                    raise DerError(msg)
                try:
                    attributes.append((oid, data[value_start:value_end].decode(codec)))
                except UnicodeDecodeError:
                    msg = f"attribute {oid}: not valid {codec}"
                    raise DerError(msg) from None
            if not attributes:
                msg = "an empty RDN"
                raise DerError(msg)
            rdns.append(tuple(attributes))
        self.rdns: tuple[tuple[tuple[str, str], ...], ...] = tuple(rdns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Name) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def rfc4514(self, names: dict[str, str] | None = None) -> str:
        """RFC 4514 text as ``cryptography``'s ``Name.rfc4514_string()``: last RDN first, '+' within an RDN."""
        table = _RFC4514_NAMES if names is None else names
        return ",".join("+".join(f"{table.get(oid, oid)}={_escape(value)}" for oid, value in rdn)
                        for rdn in reversed(self.rdns))

    def common_name(self) -> str:
        """The first CN, else the whole name (as ``pki.common_name``)."""
        for rdn in self.rdns:
            for oid, value in rdn:
                if oid == _CN:
                    return value
        return self.rfc4514()

    def distinguished_name(self) -> str:
        """As ``pki.distinguished_name``: Go's attribute names, others as dotted OIDs."""
        return self.rfc4514(_GO_NAMES)


def _escape(value: str) -> str:
    """RFC 4514 section 2.4 escaping, character for character as ``cryptography`` does it."""
    if not value:
        return ""
    for special in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(special, "\\" + special)
    value = value.replace("\0", "\\00")
    if value[0] in ("#", " "):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


class Certificate:
    """What the probe reads of one certificate (see the module's docstring)."""

    __slots__ = ("authority_key_id", "der", "dns_names", "extended_key_usage", "ip_addresses", "issuer",
                 "key_bits", "key_type", "not_after", "not_before", "serial", "signature_algorithm", "spki",
                 "subject", "subject_key_id")

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.dns_names: list[str] = []
        self.ip_addresses: list[str] = []
        self.extended_key_usage: tuple[str, ...] | None = None
        self.subject_key_id: bytes | None = None
        self.authority_key_id: bytes | None = None
        outer = _element(der, 0, len(der))
        if outer[2] != len(der):
            msg = "trailing bytes after the certificate"
            raise DerError(msg)
        parts = _children(der, *_expect(outer, _SEQUENCE, "certificate"))
        if len(parts) != 3:  # tbsCertificate, signatureAlgorithm, signatureValue
            msg = "a certificate is three elements"
            raise DerError(msg)
        algorithm = _children(der, *_expect(parts[1], _SEQUENCE, "signature algorithm"))
        if not algorithm:
            msg = "an empty signature algorithm"
            raise DerError(msg)
        self.signature_algorithm = _oid(der[slice(*_expect(algorithm[0], _OID, "signature algorithm"))])
        self._read_tbs(_children(der, *_expect(parts[0], _SEQUENCE, "tbsCertificate")))

    def _read_tbs(self, fields: list[tuple[int, int, int]]) -> None:
        der = self.der
        if fields and fields[0][0] == _EXPLICIT_0:
            fields = fields[1:]
        if len(fields) < 6:  # serial, signature, issuer, validity, subject, key
            msg = "tbsCertificate too short"
            raise DerError(msg)
        self.serial = int.from_bytes(der[slice(*_expect(fields[0], _INTEGER, "serial number"))], "big", signed=True)
        self.issuer = Name(der, *_expect(fields[2], _SEQUENCE, "issuer"))
        validity = _children(der, *_expect(fields[3], _SEQUENCE, "validity"))
        if len(validity) != 2:  # notBefore, notAfter
            msg = "validity is two times"
            raise DerError(msg)
        self.not_before, self.not_after = (_time(tag, der[start:end]) for tag, start, end in validity)
        self.subject = Name(der, *_expect(fields[4], _SEQUENCE, "subject"))
        start, end = _expect(fields[5], _SEQUENCE, "subject public key info")
        self.spki = der[fields[5][1] - _header_length(fields[5]):end]
        self._read_key(_children(der, start, end))
        for tag, start, end in fields[6:]:
            if tag == _EXPLICIT_3:
                extensions = _children(der, start, end)
                if len(extensions) != 1:
                    msg = "extensions are one SEQUENCE"
                    raise DerError(msg)
                self._read_extensions(_children(der, *_expect(extensions[0], _SEQUENCE, "extensions")))

    def _read_key(self, parts: list[tuple[int, int, int]]) -> None:
        der = self.der
        if len(parts) != 2:  # algorithm, key
            msg = "a public key is an algorithm and a key"
            raise DerError(msg)
        algorithm = _children(der, *_expect(parts[0], _SEQUENCE, "key algorithm"))
        oid = _oid(der[slice(*_expect(algorithm[0], _OID, "key algorithm"))]) if algorithm else ""
        start, end = _expect(parts[1], _BIT_STRING, "public key")
        if oid == _RSA:
            if end - start < 2 or der[start] != 0:
                msg = "an RSA key with unused bits"
                raise DerError(msg)
            numbers = _children(der, *_expect(_element(der, start + 1, end), _SEQUENCE, "RSA key"))
            modulus = int.from_bytes(der[slice(*_expect(numbers[0], _INTEGER, "RSA modulus"))], "big")
            self.key_bits = modulus.bit_length()
            self.key_type = f"rsa-{self.key_bits}"
        elif oid == _EC and len(algorithm) == 2 and algorithm[1][0] == _OID:  # a named curve
            curve = _oid(der[algorithm[1][1]:algorithm[1][2]])
            if curve not in _CURVES:
                msg = f"curve {curve} not read here"
                raise DerError(msg)
            self.key_type = _CURVES[curve]
            self.key_bits = int(self.key_type.removeprefix("ecdsa-p"))
        elif oid in _EDWARDS:
            self.key_type = _EDWARDS[oid]
            self.key_bits = 256 if oid == "1.3.101.112" else 456
        else:
            msg = f"public key algorithm {oid or '(none)'} not read here"
            raise DerError(msg)

    def _read_extensions(self, extensions: list[tuple[int, int, int]]) -> None:
        der = self.der
        seen = set()
        for extension in extensions:
            parts = _children(der, *_expect(extension, _SEQUENCE, "extension"))
            if not 2 <= len(parts) <= 3 or (len(parts) == 3 and parts[1][0] != _BOOLEAN):
                msg = "an extension is an OID, a criticality and a value"
                raise DerError(msg)
            oid = _oid(der[slice(*_expect(parts[0], _OID, "extension"))])
            if oid in seen:
                msg = f"extension {oid} twice"
                raise DerError(msg)
            seen.add(oid)
            start, end = _expect(parts[-1], _OCTET_STRING, f"extension {oid}")
            if oid in (_SAN, _EKU, _SKI, _AKI):
                self._read_extension(oid, _element(der, start, end), end)

    def _read_extension(self, oid: str, value: tuple[int, int, int], end: int) -> None:
        der = self.der
        if value[2] != end:
            msg = f"extension {oid}: trailing bytes"
            raise DerError(msg)
        if oid == _SKI:
            self.subject_key_id = der[slice(*_expect(value, _OCTET_STRING, "subject key identifier"))]
            return
        items = _children(der, *_expect(value, _SEQUENCE, f"extension {oid}"))
        if oid == _AKI:
            self.authority_key_id = next((der[s:e] for tag, s, e in items if tag == 0x80), None)
        elif oid == _EKU:
            self.extended_key_usage = tuple(_oid(der[slice(*_expect(item, _OID, "key purpose"))]) for item in items)
        else:
            for tag, start, stop in items:
                if tag == 0x82:  # [2] dNSName, an IA5String
                    try:
                        self.dns_names.append(der[start:stop].decode("ascii"))
                    except UnicodeDecodeError:
                        msg = "a dNSName that is not ASCII"
                        raise DerError(msg) from None
                elif tag == 0x87:  # [7] iPAddress: 4 or 16 octets
                    if stop - start not in (4, 16):
                        msg = "an iPAddress of neither 4 nor 16 octets"
                        raise DerError(msg)
                    self.ip_addresses.append(str(ipaddress.ip_address(der[start:stop])))

    @property
    def names(self) -> list[str]:
        """DNS names, then IP addresses (as ``pki.subject_alternative_names``)."""
        return self.dns_names + self.ip_addresses

    @property
    def fingerprint(self) -> str:
        return sha256_hex(self.der)

    def self_issued(self) -> bool:
        """Subject and issuer are the same name and, when both key identifiers are there, the same key: what
        OpenSSL takes for self-signed before it checks the signature (which this reader cannot)."""
        if self.subject != self.issuer:
            return False
        return self.subject_key_id is None or self.authority_key_id is None or \
            self.subject_key_id == self.authority_key_id

    def facts(self) -> Facts:
        return Facts(
            subject_name=self.subject.common_name(),
            issuer=self.issuer.common_name(),
            serial=format(self.serial, "x"),
            not_before=self.not_before,
            not_after=self.not_after,
            names=tuple(self.names),
            fingerprint=self.fingerprint,
            key_type=self.key_type,
            spki_sha256=sha256_hex(self.spki),
            subject_dn=self.subject.distinguished_name(),
            issuer_dn=self.issuer.distinguished_name(),
        )


def _header_length(element: tuple[int, int, int]) -> int:
    """How many bytes of tag and length precede an element's contents (to slice the whole SubjectPublicKeyInfo)."""
    length = element[2] - element[1]
    return 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8


def subject_der(der: bytes) -> bytes:
    """The subject name's DER (its contents, as :attr:`Name.der`) without decoding it: trust anchors are only
    compared by name, and a system store holds old encodings this reader does not render."""
    fields = _children(der, *_expect(_children(der, *_expect(_element(der, 0, len(der)), _SEQUENCE, "certificate"))[0],
                                     _SEQUENCE, "tbsCertificate"))
    if fields and fields[0][0] == _EXPLICIT_0:
        fields = fields[1:]
    if len(fields) < 6:
        msg = "tbsCertificate too short"
        raise DerError(msg)
    return der[slice(*_expect(fields[4], _SEQUENCE, "subject"))]


def read_pem_bundle(text: bytes) -> list[bytes]:
    """The DER of each ``CERTIFICATE`` block of a PEM file; DerError for a block that is not base64."""
    ders = []
    for block in text.split(b"-----BEGIN CERTIFICATE-----")[1:]:
        body, end, _ = block.partition(b"-----END CERTIFICATE-----")
        if not end:
            msg = "a PEM certificate without its END line"
            raise DerError(msg)
        try:
            ders.append(binascii.a2b_base64(body))
        except binascii.Error as exc:
            msg = f"a PEM certificate that is not base64 ({exc})"
            raise DerError(msg) from None
    return ders
