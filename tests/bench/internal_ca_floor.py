"""The floor of ``renew`` with the internal CA (issue 23 row 6): bare issue + the same files with the same fsyncs.

Run by :mod:`tests.bench.bench_internal_ca` as ``python -m tests.bench.internal_ca_floor CA_DIR PASSPHRASE_FILE
OUT COUNT THREADS``.  One process (interpreter start and the cryptography import counted, as for ``certkeeper
renew``), the intermediate key decrypted once, then per certificate, on ``THREADS`` threads (renew's
``concurrency``): an ECDSA P-256 key, a leaf signed by the intermediate, and a version folder as certkeeper
lays it out, with the fsyncs its crash guarantee needs: each of the six files, the folder once, ``versions/``
after the rename, the certificate's folder after the ``current`` flip.  No config, no state store, no
decision, no events: only cryptography and the file system.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "combined.pem")


def write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def issue_and_install(out: Path, name: str, intermediate: x509.Certificate, signer: ec.EllipticCurvePrivateKey,
                      chain_pem: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    domain = f"{name}.example.test"
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(intermediate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(signer, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    contents = {"privkey.pem": key_pem, "cert.pem": cert_pem, "chain.pem": chain_pem,
                "fullchain.pem": cert_pem + chain_pem, "combined.pem": key_pem + cert_pem + chain_pem}
    home = out / "certs" / name
    versions = home / "versions"
    versions.mkdir(parents=True)
    version = now.strftime("%Y%m%dT%H%M%SZ")
    incoming = versions / f".incoming-{version}"
    incoming.mkdir()
    for filename in FILES:
        write_file(incoming / filename, contents[filename], 0o600 if filename in ("privkey.pem", "combined.pem")
                   else 0o644)
    write_file(incoming / "version.json", json.dumps({"serial": f"{certificate.serial_number:x}",
                                                      "not_after": str(certificate.not_valid_after_utc)}).encode(),
               0o644)
    fsync_dir(incoming)
    incoming.rename(versions / version)
    fsync_dir(versions)
    link = home / f".current-{version}"
    link.symlink_to(f"versions/{version}")
    link.replace(home / "current")
    fsync_dir(home)


def main(ca_dir: Path, passphrase_file: Path, out: Path, count: int, threads: int) -> None:
    intermediate_pem = (ca_dir / "intermediate.pem").read_bytes()
    intermediate = x509.load_pem_x509_certificates(intermediate_pem)[0]
    signer = serialization.load_pem_private_key((ca_dir / "intermediate.key").read_bytes(),
                                                passphrase_file.read_bytes().strip())
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    chain_pem = intermediate.public_bytes(serialization.Encoding.PEM)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: issue_and_install(out, f"c{i:04d}", intermediate, signer, chain_pem), range(count)))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        msg = "usage: python -m tests.bench.internal_ca_floor CA_DIR PASSPHRASE_FILE OUT COUNT THREADS"
        raise SystemExit(msg)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
