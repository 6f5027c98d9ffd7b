"""The internal CA: profiles both verifiers accept, constraints both enforce, revocation, refusals, the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certkeeper import pki, values
from certkeeper.config import CaIssuerConfig
from certkeeper.errors import IssuanceError
from certkeeper.issuers.base import Issuer, IssueRequest, Revoker
from certkeeper.issuers.ca_profile import CLOCK_SKEW, LeafProfile, build_intermediate, build_leaf, ca_name
from certkeeper.issuers.ca_store import IndexWriter
from certkeeper.issuers.internal_ca import (
    InternalCaIssuer,
    ca_status,
    export_bundle,
    init_ca,
    init_intermediate,
    revoke,
    revoke_serial,
    write_crl,
)
from certkeeper.model import KeyType
from tests.configs import internal_ca_config

DOMAINS = ("mail.example.test", "smtp.example.test")
PASSPHRASE = "correct horse battery staple"


def make_config(tmp_path: Path, **changes: object) -> CaIssuerConfig:
    passphrase = tmp_path / "ca.pass"
    passphrase.write_text(PASSPHRASE + "\n")
    passphrase.chmod(0o600)
    config = CaIssuerConfig(name="internal", ca_dir=tmp_path / "ca", passphrase_file=passphrase,
                            permitted_domains=("example.test",), crl_url="http://crl.example.test/internal.crl")
    return values.replace(config, **changes)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> CaIssuerConfig:
    """One ECDSA CA for the tests that only read from it (RSA-4096 and even P-384 keys are not free)."""
    config = make_config(tmp_path_factory.mktemp("shared"))
    init_ca(config, now=pki.now_utc())
    return config


def issue(issuer: InternalCaIssuer, domains: Sequence[str] = DOMAINS, key_type: KeyType = KeyType.ECDSA_P256,
          name: str = "mail") -> x509.Certificate:
    key = pki.generate_key(key_type)
    return issuer.issue(IssueRequest(certificate=name, domains=tuple(domains), key=key, key_type=key_type)).certificate


def write_pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(pki.cert_to_pem(c) for c in certificates))
    return path


def openssl_verify(workdir: Path, root: x509.Certificate, intermediate: x509.Certificate, leaf: x509.Certificate,
                   *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", *extra,
         "-CAfile", str(write_pem(workdir / "root.pem", root)),
         "-untrusted", str(write_pem(workdir / "intermediate.pem", intermediate)),
         str(write_pem(workdir / "leaf.pem", leaf))],
        capture_output=True, text=True, check=False)


def load_intermediate(config: CaIssuerConfig) -> tuple[x509.Certificate, pki.PrivateKey]:
    certificate = pki.load_certificates((config.ca_dir / "intermediate.pem").read_bytes())[0]
    key = pki.load_key((config.ca_dir / "intermediate.key").read_bytes(), PASSPHRASE.encode())
    return certificate, key


@pytest.mark.parametrize("ca_key_type", ["ecdsa", "rsa"])
def test_chain_verifies_with_cryptography_and_openssl(tmp_path: Path, ca_key_type: str) -> None:
    config = make_config(tmp_path, ca_key_type=ca_key_type)
    result = init_ca(config, now=pki.now_utc())
    expected = {"ecdsa": ("ecdsa-p384", "ecdsa-p256"), "rsa": ("rsa-4096", "rsa-3072")}[ca_key_type]
    assert (pki.key_type_of(result.root.public_key()), pki.key_type_of(result.intermediate.public_key())) == expected  # type: ignore[arg-type]
    issuer = InternalCaIssuer(config)
    for key_type in (KeyType.ECDSA_P256, KeyType.RSA_2048):
        key = pki.generate_key(key_type)
        issued = issuer.issue(IssueRequest(certificate="mail", domains=DOMAINS, key=key, key_type=key_type))
        assert issued.chain == (result.intermediate,)
        for domain in DOMAINS:
            check = pki.verify_chain(issued.certificate, issued.chain, issuer.trust_anchors(), at=pki.now_utc(),
                                     hostname=domain)
            assert check.valid, check.error
        done = openssl_verify(tmp_path, result.root, result.intermediate, issued.certificate,
                              "-verify_hostname", "smtp.example.test")
        assert done.returncode == 0, done.stdout + done.stderr


def test_leaf_carries_the_mail_server_profile(shared: CaIssuerConfig) -> None:
    now = pki.now_utc().replace(microsecond=0) + timedelta(days=1)
    issuer = InternalCaIssuer(values.replace(shared, lifetime=timedelta(days=30)), clock=lambda: now)
    for key_type, key_encipherment in ((KeyType.ECDSA_P256, False), (KeyType.RSA_2048, True)):
        leaf = issue(issuer, key_type=key_type)
        extensions = leaf.extensions
        assert pki.subject_alternative_names(leaf) == list(DOMAINS)
        assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment is key_encipherment and not usage.key_cert_sign
        assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH]
        assert 2**127 < leaf.serial_number < 2**159 or leaf.serial_number.bit_length() >= 120
        assert leaf.not_valid_before_utc == now - CLOCK_SKEW == now - timedelta(minutes=5)
        assert leaf.not_valid_after_utc == now + timedelta(days=30)
        points = extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert points[0].full_name == [x509.UniformResourceIdentifier("http://crl.example.test/internal.crl")]
        intermediate, _ = load_intermediate(shared)
        aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert aki == intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
            x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())


def test_serials_are_random_and_distinct(shared: CaIssuerConfig) -> None:
    issuer = InternalCaIssuer(shared)
    serials = [issue(issuer).serial_number for _ in range(20)]
    assert len(set(serials)) == 20
    assert all(0 < s < 2**159 for s in serials)
    assert max(s.bit_length() for s in serials) > 150  # 159 random bits, not a counter


def test_client_auth_only_when_configured(shared: CaIssuerConfig) -> None:
    leaf = issue(InternalCaIssuer(values.replace(shared, client_auth=True)))
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_ca_certificates_have_path_limits_constraints_and_key_ids(shared: CaIssuerConfig) -> None:
    root = pki.load_certificates((shared.ca_dir / "root.pem").read_bytes())[0]
    intermediate, _ = load_intermediate(shared)
    for certificate, path_length in ((root, 1), (intermediate, 0)):
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca and constraints.value.path_length == path_length
        names = certificate.extensions.get_extension_for_class(x509.NameConstraints)
        assert names.critical and names.value.permitted_subtrees == [x509.DNSName("example.test")]
        certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)


def test_keys_are_0600_encrypted_and_the_directory_0700(shared: CaIssuerConfig) -> None:
    assert stat.S_IMODE(shared.ca_dir.stat().st_mode) == 0o700
    for name in ("root.key", "intermediate.key"):
        path = shared.ca_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in path.read_bytes()


def test_names_outside_the_constraints_are_refused_before_signing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    issuer = InternalCaIssuer(config)
    outside = (("mail.example.test", "mx.other.test"), ("example.test.evil",), ("*.notexample.test",), ("192.0.2.1",))
    for domains in outside:
        with pytest.raises(IssuanceError, match=r"certificate 'mail', issuer 'internal': .*(outside the CA's name "
                                                r"constraints \(permitted_domains: example.test\)|IP address)"):
            issue(issuer, domains)
    assert not (config.ca_dir / "index.jsonl").exists()  # nothing was signed, so nothing was recorded
    assert pki.subject_alternative_names(issue(issuer, ("*.example.test", "example.test"))) == [
        "*.example.test", "example.test"]


def test_a_leaf_forced_outside_the_constraints_is_rejected_by_both_verifiers(shared: CaIssuerConfig,
                                                                              tmp_path: Path) -> None:
    root = pki.load_certificates((shared.ca_dir / "root.pem").read_bytes())[0]
    intermediate, intermediate_key = load_intermediate(shared)
    now = pki.now_utc()
    rogue = build_leaf(LeafProfile.for_intermediate(intermediate, client_auth=False, crl_url=None), intermediate_key,
                       pki.generate_key(KeyType.ECDSA_P256).public_key(), ["mail.evil.test"], now=now,
                       lifetime=timedelta(days=1))
    check = pki.verify_chain(rogue, [intermediate], [root], at=now)
    assert not check.valid and "name constraint" in check.error.lower()
    done = openssl_verify(tmp_path, root, intermediate, rogue)
    assert done.returncode != 0 and "permitted subtree violation" in done.stdout + done.stderr


def test_the_root_constraints_bind_an_unconstrained_intermediate(shared: CaIssuerConfig, tmp_path: Path) -> None:
    """Even an intermediate signed without constraints (a botched rollover) cannot escape the root's."""
    root = pki.load_certificates((shared.ca_dir / "root.pem").read_bytes())[0]
    root_key = pki.load_key((shared.ca_dir / "root.key").read_bytes(), PASSPHRASE.encode())
    now = pki.now_utc()
    key = pki.generate_key(KeyType.ECDSA_P256)
    loose = build_intermediate(key.public_key(), ca_name("loose", "intermediate"), root, root_key, now=now,
                               lifetime=timedelta(days=30), permitted_domains=())
    rogue = build_leaf(LeafProfile.for_intermediate(loose, client_auth=False, crl_url=None), key,
                       pki.generate_key(KeyType.ECDSA_P256).public_key(), ["mail.evil.test"], now=now,
                       lifetime=timedelta(days=1))
    assert not pki.verify_chain(rogue, [loose], [root], at=now).valid
    assert openssl_verify(tmp_path, root, loose, rogue).returncode != 0


def test_a_revoked_serial_appears_in_the_signed_crl(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    issuer = InternalCaIssuer(config)
    kept, first, latest = issue(issuer, name="other"), issue(issuer), issue(issuer)
    now = pki.now_utc()
    entry = revoke(config, "mail", "keyCompromise", now=now)  # by name: the latest serial of "mail"
    assert entry.serial == latest.serial_number
    assert revoke(config, pki.serial_hex(latest), "superseded", now=now + timedelta(hours=1)) == entry  # idempotent
    path = write_crl(config, now)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    intermediate, _ = load_intermediate(config)
    assert crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    revoked = crl.get_revoked_certificate_by_serial_number(latest.serial_number)
    assert revoked is not None
    assert revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == config.crl_next_update
    text = subprocess.run(["openssl", "crl", "-in", str(path), "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout
    assert format(latest.serial_number, "X") in text.replace(":", "").upper()
    assert "Key Compromise" in text
    # And a CRL-checking client refuses the revoked leaf while accepting its sibling.
    root = issuer.trust_anchors()[0]
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(path.read_bytes())
    refused = openssl_verify(tmp_path, root, intermediate, latest, "-crl_check", "-CRLfile", str(crl_file))
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    assert openssl_verify(tmp_path, root, intermediate, first, "-crl_check", "-CRLfile", str(crl_file)).returncode == 0
    assert x509.load_pem_x509_crl(write_crl(config, now).read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number == 2


def test_revoke_through_the_revoker_protocol(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    issuer = InternalCaIssuer(config)
    assert isinstance(issuer, Issuer) and isinstance(issuer, Revoker)
    leaf = issue(issuer)
    issuer.revoke(leaf, "superseded")
    crl = x509.load_der_x509_crl((config.ca_dir / "crl.der").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    with pytest.raises(IssuanceError, match="serial 1234 is not in .*index.jsonl; it was not issued by this CA"):
        revoke_serial(config, "1234", now=pki.now_utc())
    with pytest.raises(IssuanceError, match="unknown revocation reason 'because'"):
        revoke_serial(config, leaf.serial_number, "because", now=pki.now_utc())


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    config.passphrase_file.write_text("wrong\n")  # type: ignore[union-attr]
    with pytest.raises(IssuanceError, match=r"internal CA 'internal': cannot decrypt intermediate key .*"
                                            r"intermediate.key: wrong passphrase"):
        issue(InternalCaIssuer(config))
    missing = values.replace(config, passphrase_file=tmp_path / "nope")
    with pytest.raises(IssuanceError, match=r"passphrase file .*nope does not exist"):
        issue(InternalCaIssuer(missing))
    from_env = values.replace(config, passphrase_file=None, passphrase_env="CK_TEST_CA_PASS")
    monkeypatch.delenv("CK_TEST_CA_PASS", raising=False)
    with pytest.raises(IssuanceError, match="environment variable CK_TEST_CA_PASS .* is not set"):
        issue(InternalCaIssuer(from_env))
    monkeypatch.setenv("CK_TEST_CA_PASS", PASSPHRASE)
    issue(InternalCaIssuer(from_env))
    with pytest.raises(IssuanceError, match="no passphrase configured"):
        init_ca(values.replace(config, passphrase_file=None, ca_dir=tmp_path / "other"), now=pki.now_utc())


def test_a_corrupted_ca_directory_names_the_file(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    key = config.ca_dir / "intermediate.key"
    key.write_bytes(key.read_bytes()[:100])
    with pytest.raises(IssuanceError, match=r"intermediate key .*intermediate.key is corrupted .*truncated"):
        issue(InternalCaIssuer(config))
    (config.ca_dir / "index.jsonl").write_text('{"event": "issued"}\n')
    with pytest.raises(IssuanceError, match=r"index .*index.jsonl is corrupted at line 1"):
        ca_status(config, pki.now_utc())
    (config.ca_dir / "root.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    with pytest.raises(IssuanceError, match=r"root certificate .*root.pem is corrupted"):
        InternalCaIssuer(config).trust_anchors()
    (config.ca_dir / "intermediate.pem").unlink()
    with pytest.raises(IssuanceError, match=r"intermediate certificate .*intermediate.pem is missing"):
        issue(InternalCaIssuer(config))


def test_a_torn_last_index_line_is_skipped(shared: CaIssuerConfig) -> None:
    index_path = shared.ca_dir / "index.jsonl"
    issue(InternalCaIssuer(shared))
    before = ca_status(shared, pki.now_utc()).issued
    with index_path.open("a") as handle:
        handle.write('{"event": "iss')  # a write cut short by a crash
    assert ca_status(shared, pki.now_utc()).issued == before
    index_path.write_bytes(index_path.read_bytes()[: -len('{"event": "iss')])


def test_an_issue_after_a_torn_last_index_line_keeps_its_record_and_the_index_readable(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    index_path = config.ca_dir / "index.jsonl"
    issue(InternalCaIssuer(config), name="first")
    index_path.write_bytes(index_path.read_bytes()[:50])  # the crash cut the only line short
    second = issue(InternalCaIssuer(config), name="second")
    status = ca_status(config, pki.now_utc())
    assert status.issued == 1
    revoke(config, "second", now=pki.now_utc())  # found by name: its record survived
    with index_path.open("a") as handle:
        handle.write('{"event": "revoked", "ser')  # a revocation cut short, then another one
    third = issue(InternalCaIssuer(config), name="third")
    revoke_serial(config, third.serial_number, now=pki.now_utc())
    assert (ca_status(config, pki.now_utc()).issued, ca_status(config, pki.now_utc()).revoked) == (2, 2)
    crl = x509.load_pem_x509_crl(write_crl(config, pki.now_utc()).read_bytes())
    assert {entry.serial_number for entry in crl} == {second.serial_number, third.serial_number}


def test_a_fifo_as_the_index_or_the_passphrase_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    index_path = config.ca_dir / "index.jsonl"
    index_path.unlink(missing_ok=True)
    os.mkfifo(index_path, 0o600)
    with pytest.raises(IssuanceError, match=r"index .*index.jsonl is a named pipe, not a file; expected"):
        ca_status(config, pki.now_utc())
    with pytest.raises(IssuanceError,
                       match=r"index .*index.jsonl cannot be opened for writing \(is a named pipe, not a file"):
        issue(InternalCaIssuer(config))
    index_path.unlink()
    assert config.passphrase_file is not None
    config.passphrase_file.unlink()
    os.mkfifo(config.passphrase_file, 0o600)
    with pytest.raises(IssuanceError, match=r"passphrase file .*ca.pass is a named pipe, not a file; expected"):
        issue(InternalCaIssuer(config))


def test_a_passphrase_file_others_can_read_is_refused_as_config_check_does(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.passphrase_file is not None
    config.passphrase_file.chmod(0o644)
    with pytest.raises(IssuanceError, match=r"passphrase file .*ca.pass has mode 0644, expected a secret file no "
                                            r"wider than 0640; chmod 600 .*ca.pass"):
        init_ca(config, now=pki.now_utc())
    assert not config.ca_dir.exists()


def test_init_names_a_ca_dir_that_is_a_file_or_a_link_and_a_passphrase_too_long(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.ca_dir.write_text("x\n")
    with pytest.raises(IssuanceError, match=r"ca_dir .*ca is a file, not a folder"):
        init_ca(config, now=pki.now_utc())
    config.ca_dir.unlink()
    (tmp_path / "real").mkdir(mode=0o700)
    config.ca_dir.symlink_to(tmp_path / "real")
    with pytest.raises(IssuanceError, match=r"ca_dir .*ca is a symbolic link \(to .*real\)"):
        init_ca(config, now=pki.now_utc())
    config.ca_dir.unlink()
    assert config.passphrase_file is not None
    config.passphrase_file.write_text("p" * 1024 + "\n")
    with pytest.raises(IssuanceError, match=r"the passphrase in the passphrase file .*ca.pass is longer than 1023 "
                                            r"bytes"):
        init_ca(config, now=pki.now_utc())
    config.passphrase_file.write_bytes(b"p" * (1 << 24))  # read no further than the limit
    with pytest.raises(IssuanceError, match="longer than 1023 bytes"):
        init_ca(config, now=pki.now_utc())
    config.passphrase_file.write_text("p" * 1023 + "\r\n")
    init_ca(config, now=pki.now_utc())


def test_a_deeply_nested_index_line_is_reported_as_corrupted(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    (config.ca_dir / "index.jsonl").write_text('{"event":' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(IssuanceError, match=r"index .*index.jsonl is corrupted at line 1 \(maximum recursion"):
        ca_status(config, pki.now_utc())


def test_status_refuses_an_intermediate_that_cannot_issue(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    init_ca(config, now=pki.now_utc())
    (tmp_path / "other").mkdir()
    other = make_config(tmp_path / "other")
    init_ca(other, now=pki.now_utc())
    path = config.ca_dir / "intermediate.pem"
    leaf = issue(InternalCaIssuer(config))
    for replacement, says in (
            (leaf, r"\(mail.example.test\) is not a CA certificate and cannot sign"),
            (pki.load_certificates((config.ca_dir / "root.pem").read_bytes())[0], "is the root certificate itself"),
            (load_intermediate(other)[0], r"is not signed by the root in .*root.pem")):
        write_pem(path, replacement)
        with pytest.raises(IssuanceError, match=rf"intermediate certificate {path} .*{says}; restore it from a "
                                                r"backup, or run `certkeeper ca init --intermediate-only`"):
            ca_status(config, pki.now_utc())


def test_unknown_key_types_are_refused(shared: CaIssuerConfig, tmp_path: Path) -> None:
    issuer = InternalCaIssuer(shared)
    odd = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(IssuanceError, match="unknown key type ed25519privatekey"):
        issuer.issue(IssueRequest("mail", DOMAINS, odd, KeyType.ECDSA_P256))  # type: ignore[arg-type]
    with pytest.raises(IssuanceError, match="the key is ecdsa-p256 but the request says rsa-2048"):
        issuer.issue(IssueRequest("mail", DOMAINS, pki.generate_key(KeyType.ECDSA_P256), KeyType.RSA_2048))
    with pytest.raises(IssuanceError, match="unknown ca_key_type 'dsa'"):
        init_ca(make_config(tmp_path, ca_key_type="dsa"), now=pki.now_utc())


def test_a_second_init_refuses_without_force_and_keeps_the_old_ca_with_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = init_ca(config, now=pki.now_utc())
    with pytest.raises(IssuanceError, match=r"already holds a CA \(root.pem, root.key, intermediate.pem, "
                                            r"intermediate.key\); nothing was changed"):
        init_ca(config, now=pki.now_utc())
    assert pki.load_certificates((config.ca_dir / "root.pem").read_bytes())[0] == first.root
    second = init_ca(config, now=pki.now_utc(), force=True)
    assert second.replaced is not None and (second.replaced / "root.key").exists()
    assert pki.load_certificates((config.ca_dir / "root.pem").read_bytes())[0] == second.root != first.root


def test_an_offline_root_still_issues_and_rolls_over_with_the_key_brought_back(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    offline = tmp_path / "offline" / "root.key"
    offline.parent.mkdir()
    result = init_ca(config, now=pki.now_utc(), export_root_key=offline)
    assert not (config.ca_dir / "root.key").exists()
    assert stat.S_IMODE(offline.stat().st_mode) == 0o600
    issuer = InternalCaIssuer(config)
    issuer.REFRESH_INTERVAL = 0  # look for a rollover on every issue, not once a second
    leaf = issue(issuer)
    assert pki.verify_chain(leaf, [result.intermediate], issuer.trust_anchors(), at=pki.now_utc()).valid
    assert ca_status(config, pki.now_utc()).root_key_offline
    with pytest.raises(IssuanceError, match=r"root key .*root.key is missing"):
        init_intermediate(config, now=pki.now_utc())
    rolled = init_intermediate(config, now=pki.now_utc(), root_key=offline)
    assert rolled.intermediate != result.intermediate
    assert (config.ca_dir / "archive" / f"intermediate-{pki.serial_hex(result.intermediate)}.pem").exists()
    issued = issuer.issue(IssueRequest("mail", DOMAINS, pki.generate_key(KeyType.ECDSA_P256), KeyType.ECDSA_P256))
    assert issued.chain == (rolled.intermediate,)  # the running issuer noticed the rollover
    assert pki.verify_chain(issued.certificate, issued.chain, issuer.trust_anchors(), at=pki.now_utc()).valid


def test_status_gives_expiry_and_counts(tmp_path: Path) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    config = make_config(tmp_path, intermediate_lifetime=timedelta(days=100))
    init_ca(config, now=start)
    issuer = InternalCaIssuer(config, clock=lambda: start)
    leaves = [issue(issuer) for _ in range(3)]
    revoke_serial(config, leaves[0].serial_number, now=start)
    status = ca_status(config, start + timedelta(days=5))
    assert (status.issued, status.revoked, status.active) == (3, 1, 2)
    assert status.intermediate_not_after == start + timedelta(days=100)
    assert status.intermediate_days_left == 95 and status.root_days_left == 3645
    assert not status.rollover_due and ca_status(config, start + timedelta(days=20)).rollover_due
    assert ca_status(config, start + timedelta(days=40)).active == 0  # 30-day leaves have expired
    assert json.loads(json.dumps(status.as_dict()))["intermediate_not_after"].startswith("2030-04-11")


def test_export_bundle_is_the_root_then_the_intermediate(shared: CaIssuerConfig) -> None:
    root = pki.load_certificates(export_bundle(shared, include_intermediate=False))
    both = pki.load_certificates(export_bundle(shared, include_intermediate=True))
    assert len(root) == 1 and pki.is_self_signed(root[0])
    assert both[0] == root[0] and both[1] == load_intermediate(shared)[0]


# --- the command line, as a subprocess ---------------------------------------------------------------------------

def run_cli(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config_file), "ca", *args],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "error"})


def test_cli_init_export_status_revoke_crl(tmp_path: Path) -> None:
    (tmp_path / "ca.pass").write_text(PASSPHRASE + "\n")
    (tmp_path / "ca.pass").chmod(0o600)
    config_file = internal_ca_config(tmp_path, domains=["mail.example.test"], issuer=f"""
        passphrase_file = "{tmp_path / 'ca.pass'}"
        permitted_domains = ["example.test"]
        """)
    offline = tmp_path / "root.key"
    done = run_cli(config_file, "init", "--export-root-key", str(offline))
    assert done.returncode == 0, done.stderr
    assert "root key written to" in done.stdout and offline.exists()
    again = run_cli(config_file, "init")
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    assert run_cli(config_file, "init", "--issuer", "nope").returncode == 64

    exported = run_cli(config_file, "export", "--with-intermediate")
    assert exported.returncode == 0 and exported.stdout.count("BEGIN CERTIFICATE") == 2
    assert run_cli(config_file, "export", "--out", str(tmp_path / "bundle.pem")).returncode == 0
    assert len(pki.load_certificates((tmp_path / "bundle.pem").read_bytes())) == 1

    from certkeeper.config import load_config

    config = load_config(config_file).issuers["internal"]
    assert isinstance(config, CaIssuerConfig)
    leaf = issue(InternalCaIssuer(config), ("mail.example.test",))

    status = run_cli(config_file, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["issued"] == 1 and json.loads(status.stdout)["root_key_offline"] is True

    unknown = run_cli(config_file, "revoke", "nosuchcert")
    assert unknown.returncode == 1 and "neither a hex serial number nor a certificate name" in unknown.stderr
    revoked = run_cli(config_file, "revoke", "mail", "--reason", "keyCompromise")
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked serial {pki.serial_hex(leaf)} (certificate mail): keyCompromise" in revoked.stdout
    assert run_cli(config_file, "revoke", "mail", "--reason", "bogus").returncode == 64  # EX_USAGE

    crl = run_cli(config_file, "crl", "--out", str(tmp_path / "published.crl"))
    assert crl.returncode == 0, crl.stderr
    published = x509.load_der_x509_crl((tmp_path / "published.crl").read_bytes())
    assert published.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    text = run_cli(config_file, "status")
    assert text.returncode == 0 and "issued 1, revoked 1, active 0" in text.stdout

    rolled = run_cli(config_file, "init", "--intermediate-only", "--root-key", str(offline))
    assert rolled.returncode == 0 and "new intermediate" in rolled.stdout, rolled.stderr


def test_rsa_key_of_the_ca_signs_rsa_leaves_with_key_encipherment_only_for_rsa(shared: CaIssuerConfig) -> None:
    """The profile follows the leaf's key, not the CA's: an ECDSA CA certifies RSA keys for old clients."""
    leaf = issue(InternalCaIssuer(shared), key_type=KeyType.RSA_2048)
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_the_index_writer_shared_by_issuing_threads_never_writes_through_a_descriptor_a_reopen_closed(
        tmp_path: Path) -> None:
    """The issuer reopens its index (at most once a second) while other threads append to it: every line lands in
    the index, none is lost to a closed descriptor (EBADF) or written to a file that took the number meanwhile."""
    path = tmp_path / "index.jsonl"
    writer = IndexWriter("internal", path)
    stop = threading.Event()

    def reopening() -> None:
        while not stop.is_set():
            writer.reopen()

    def appending(thread: int) -> None:
        for line in range(300):
            writer.append(f"{thread} {line}\n".encode())
            (tmp_path / f"other-{thread}").write_bytes(b"")  # files opened meanwhile, as keys are installed

    reopener = threading.Thread(target=reopening)
    reopener.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(appending, range(4)))
    finally:
        stop.set()
        reopener.join()
    writer.close()
    assert sorted(path.read_text().splitlines()) == sorted(f"{t} {n}" for t in range(4) for n in range(300))
    assert all((tmp_path / f"other-{t}").read_bytes() == b"" for t in range(4))
