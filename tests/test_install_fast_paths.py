"""The install side's shortcuts agree with the full paths they stand in for (issue 23: renew of 1,000 internal-CA
certificates): the gate's chain verification under an already verified intermediate, a leaf signed in this
process not verified again, the version returned by a write, the pass's state rows in one commit, modes left
alone when already right, the cached CA root."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from certkeeper import pki
from certkeeper.config import CaIssuerConfig
from certkeeper.issuers.base import IssueRequest
from certkeeper.issuers.ca_profile import _HOST_NAME, build_leaf, name_problems
from certkeeper.issuers.internal_ca import InternalCaIssuer, init_ca
from certkeeper.model import KeyType
from certkeeper.store import CertState, RenewalRecord
from certkeeper.store.atomic import set_dir_mode
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome, KeyPair, check_pairs
from certkeeper.testbed.certs import TestCA
from certkeeper.values import replace

DOMAINS = ("mail.example.test", "smtp.example.test")


def made_ca(folder: Path) -> CaIssuerConfig:
    """certkeeper's own CA in ``folder``: an ECDSA P-384 root and a P-256 intermediate, both constraining names to
    example.test."""
    passphrase = folder / "ca.pass"
    passphrase.write_text("fast paths\n")
    passphrase.chmod(0o600)
    config = CaIssuerConfig(name="internal", ca_dir=folder / "ca", passphrase_file=passphrase,
                            permitted_domains=("example.test",))
    init_ca(config, now=pki.now_utc())
    return config


@pytest.fixture(scope="module")
def ca_issuer(tmp_path_factory: pytest.TempPathFactory) -> InternalCaIssuer:
    return InternalCaIssuer(made_ca(tmp_path_factory.mktemp("fast-ca")))


def issued(issuer: InternalCaIssuer, names: tuple[str, ...] = DOMAINS) -> KeyPair:
    key = pki.generate_key(KeyType.ECDSA_P256)
    result = issuer.issue(IssueRequest("mail", names, key, KeyType.ECDSA_P256))
    return KeyPair(KeyType.ECDSA_P256, key, result.certificate, tuple(result.chain), result.signed_here)


def both(chains: pki.ChainVerifier, leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...],
         roots: list[x509.Certificate], at: datetime) -> tuple[bool, bool]:
    return (chains.verify(leaf, intermediates, roots, at=at).valid,
            pki.verify_chain(leaf, intermediates, roots, at=at).valid)


def test_the_chain_verifier_agrees_with_the_full_verification(ca_issuer: InternalCaIssuer) -> None:
    roots = list(ca_issuer.trust_anchors())
    chains = pki.ChainVerifier()
    first = issued(ca_issuer)
    now = pki.now_utc()
    assert both(chains, first.certificate, first.chain, roots, now) == (True, True)  # full, then remembered
    signer = ca_issuer._current_signer()
    later = issued(ca_issuer)
    foreign = build_leaf(signer.profile, signer.key, pki.generate_key(KeyType.ECDSA_P256).public_key(),
                         ("mail.other.test",), now=now, lifetime=timedelta(days=30))
    stranger = TestCA("another root").issue(list(DOMAINS))  # the same names, signed by a key not in the chain
    cases = {
        "a second leaf": (later.certificate, now, True),
        "outside the name constraints": (foreign, now, False),
        "signed by another CA": (stranger.certificate, now, False),
        "before the leaf is valid": (later.certificate, now - timedelta(days=1), False),
        "after the leaf expired": (later.certificate, now + timedelta(days=400), False),
        "after the intermediate expired": (later.certificate, signer.intermediate.not_valid_after_utc
                                           + timedelta(days=1), False),
    }
    for what, (leaf, at, expected) in cases.items():
        assert both(chains, leaf, first.chain, roots, at) == (expected, expected), what


def test_the_chain_verifier_takes_the_full_path_under_a_root_constraining_other_names() -> None:
    """An intermediate without name constraints under a root that has them: the root's constraints judge each
    leaf, so the intermediate alone may never anchor one."""
    now = pki.now_utc()
    plain = TestCA("constrained root", now=now)
    root = (  # the same name and key, constraining names to example.test
        x509.CertificateBuilder().subject_name(plain.certificate.subject).issuer_name(plain.certificate.subject)
        .public_key(plain.key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(plain.key.public_key()), critical=False)
        .add_extension(x509.NameConstraints([x509.DNSName("example.test")], None), critical=True)
        .sign(plain.key, hashes.SHA256())
    )
    intermediate = plain.intermediate()
    chains = pki.ChainVerifier()
    good = intermediate.issue(list(DOMAINS))
    assert both(chains, good.certificate, good.intermediates, [root], now) == (True, True)
    assert pki._anchor_window((good.intermediates[0], root)) is None
    foreign = intermediate.issue(["mail.other.test"])
    assert pki.verify_chain(foreign.certificate, (), [good.intermediates[0]], at=now).valid  # what a shortcut says
    assert both(chains, foreign.certificate, good.intermediates, [root], now) == (False, False)


def test_the_gate_with_a_chain_verifier_refuses_what_the_gate_refuses(ca_issuer: InternalCaIssuer) -> None:
    roots = list(ca_issuer.trust_anchors())
    chains = pki.ChainVerifier()
    now = pki.now_utc()
    check_pairs("mail", [issued(ca_issuer)], DOMAINS, roots, now=now, chains=chains)
    stranger = TestCA("another root").issue(list(DOMAINS))
    pair = issued(ca_issuer)
    forged = KeyPair(pair.key_type, stranger.key, stranger.certificate, pair.chain)
    for verifier in (chains, None):
        with pytest.raises(Exception, match="does not verify"):
            check_pairs("mail", [forged], DOMAINS, roots, now=now, chains=verifier)


def test_a_leaf_signed_here_is_verified_once_per_chain_and_anything_else_every_time(
        ca_issuer: InternalCaIssuer) -> None:
    """The internal CA's leaves say they were signed in this process (IssuedCertificate.signed_here): the gate
    verifies their chain's path to the roots once, then checks only the key, the names and the validity; a pair
    that says so under a chain not verified yet, or that does not say so, is verified in full."""
    roots = list(ca_issuer.trust_anchors())
    chains = pki.ChainVerifier()
    now = pki.now_utc()
    first = issued(ca_issuer)
    assert first.signed_here and not chains.anchors(first.chain, roots, at=now)
    stranger = TestCA("another root").issue(list(DOMAINS))
    claims = KeyPair(first.key_type, stranger.key, stranger.certificate, first.chain, signed_here=True)
    with pytest.raises(Exception, match="does not verify"):  # before any chain was verified: in full
        check_pairs("mail", [claims], DOMAINS, roots, now=now, chains=chains)
    check_pairs("mail", [first], DOMAINS, roots, now=now, chains=chains)  # in full, and remembered
    assert chains.anchors(first.chain, roots, at=now)
    check_pairs("mail", [issued(ca_issuer)], DOMAINS, roots, now=now, chains=chains)
    with pytest.raises(Exception, match="does not verify"):  # not signed here: in full, every time
        check_pairs("mail", [KeyPair(first.key_type, stranger.key, stranger.certificate, first.chain)], DOMAINS,
                    roots, now=now, chains=chains)
    with pytest.raises(Exception, match="does not verify"):  # signed here, but not valid at that moment
        check_pairs("mail", [issued(ca_issuer)], DOMAINS, roots, now=now + timedelta(days=400), chains=chains)
    with pytest.raises(Exception, match="does not match its private key"):
        check_pairs("mail", [replace(first, key=pki.generate_key(KeyType.ECDSA_P256))], DOMAINS, roots, now=now,
                    chains=chains)
    with pytest.raises(Exception, match="does not cover"):
        check_pairs("mail", [first], ("imap.example.test",), roots, now=now, chains=chains)


def test_the_internal_ca_says_signed_here_only_under_the_name_constraints_it_enforces(tmp_path: Path) -> None:
    """``permitted_domains`` changed after ``ca init``: the issuer's name check is not the intermediate's any more,
    so its leaves are verified in full by the gate (which refuses a name the intermediate does not permit)."""
    made = made_ca(tmp_path)
    assert issued(InternalCaIssuer(made)).signed_here
    widened = replace(made, permitted_domains=("example.test", "other.test"))
    pair = issued(InternalCaIssuer(widened), ("mail.other.test",))
    assert not pair.signed_here
    roots = list(InternalCaIssuer(widened).trust_anchors())
    with pytest.raises(Exception, match="does not verify"):
        check_pairs("mail", [pair], ("mail.other.test",), roots, now=pki.now_utc(), chains=pki.ChainVerifier())
    unconstrained = tmp_path / "plain"
    init_ca(replace(made, ca_dir=unconstrained, permitted_domains=()), now=pki.now_utc())
    assert issued(InternalCaIssuer(replace(made, ca_dir=unconstrained))).signed_here  # the stricter check holds


NAMES = ["example.test", "*.example.test", "mail.example.test", "Mail.Example.TEST", "*.EXAMPLE.test",
         "xn--bcher-kva.example.test", "a--b.example.test", "9a.example.test", "0.0.example.test",
         "a.b.c.d.e.example.test", "x" * 63 + ".example.test", "x" * 63 + "." + "y" * 63 + "." + "z" * 63
         + ".example.test"]


@settings(max_examples=60)
@given(st.lists(st.sampled_from(NAMES) | st.from_regex(_HOST_NAME, fullmatch=True).map(lambda n: n + ".example.test"),
                min_size=1, max_size=3))
def test_a_name_the_internal_ca_lets_through_is_one_path_validation_accepts(ca_issuer: InternalCaIssuer,
                                                                            names: list[str]) -> None:
    """What lets the gate skip the signature of a leaf signed here: every name name_problems accepts under
    permitted_domains is accepted by path validation under the intermediate those constraints were written to."""
    if name_problems(names, ca_issuer.config.permitted_domains):
        return
    pair = issued(ca_issuer, tuple(names))
    first = pki.subject_alternative_names(pair.certificate)[0]
    check = pki.verify_chain(pair.certificate, pair.chain, list(ca_issuer.trust_anchors()), at=pki.now_utc(),
                             hostname=first)
    assert check.valid, check.error


def test_a_written_version_is_what_reading_it_back_gives(tmp_path: Path, ca_issuer: InternalCaIssuer) -> None:
    home = CertificateHome(tmp_path, "mail")
    now = datetime.now(UTC)
    single = home.write_version([issued(ca_issuer)], issuer="internal", domains=DOMAINS, now=now)
    assert single == home._load(single.path)
    rsa_key = pki.generate_key(KeyType.RSA_2048)
    rsa = ca_issuer.issue(IssueRequest("mail", DOMAINS, rsa_key, KeyType.RSA_2048))
    dual = home.write_version([issued(ca_issuer), KeyPair(KeyType.RSA_2048, rsa_key, rsa.certificate,
                                                          tuple(rsa.chain))],
                              issuer="internal", domains=DOMAINS, now=now)
    assert dual == home._load(dual.path) and dual.id != single.id


def test_prune_with_no_more_versions_than_kept_reads_nothing(tmp_path: Path, ca_issuer: InternalCaIssuer) -> None:
    home = CertificateHome(tmp_path, "mail")
    now = datetime.now(UTC)
    made = [home.write_version([issued(ca_issuer)], issuer="internal", domains=DOMAINS,
                               now=now + timedelta(seconds=i)) for i in range(2)]
    home.activate(made[1])
    (made[0].path / "version.json").write_text("garbage")  # would be read (and left out) by the full path
    assert home.prune(keep=2) == []
    assert sorted(p.name for p in home.versions_dir.iterdir()) == sorted(v.id for v in made)
    assert CertificateHome(tmp_path, "never-installed").prune(keep=2) == []


def test_set_dir_mode_changes_only_what_differs(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    folder.chmod(0o700)
    before = folder.stat().st_ctime_ns
    set_dir_mode(folder, mode=0o700, gid=folder.stat().st_gid)
    assert folder.stat().st_ctime_ns == before  # not touched: nothing for the next fsync to journal
    set_dir_mode(folder, mode=0o750)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


def test_put_states_writes_every_row_in_one_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    store.put_state(CertState("a", failures=3))
    states = [CertState("a", last_success_at=now), CertState("b", reload_pending=True)]
    store.put_states(states, [RenewalRecord("a", now, "success", "v1", "01"), RenewalRecord("b", now, "success",
                                                                                              "v2", "02")])
    assert list(store.states()) == states
    assert [r.version for r in store.renewals()] == ["v2", "v1"]
    store.put_states([])  # nothing: no error
    store.close()


def test_the_root_is_read_again_when_its_file_is_replaced(tmp_path: Path) -> None:
    passphrase = tmp_path / "ca.pass"
    passphrase.write_text("root cache\n")
    passphrase.chmod(0o600)
    config = CaIssuerConfig(name="internal", ca_dir=tmp_path / "ca", passphrase_file=passphrase,
                            permitted_domains=("example.test",))
    first = init_ca(config, now=pki.now_utc())
    issuer = InternalCaIssuer(config)
    assert list(issuer.trust_anchors()) == [first.root]
    assert issuer.trust_anchors()[0] is issuer.trust_anchors()[0]  # read once, not per certificate
    second = init_ca(config, now=pki.now_utc(), force=True)
    issuer.REFRESH_INTERVAL = 0.0
    assert list(issuer.trust_anchors()) == [second.root] != [first.root]


def test_the_files_of_a_version_are_written_together_with_their_modes_and_a_failure_leaves_no_descriptor_open(
        tmp_path: Path) -> None:
    """write_new_files starts every file's writeback before the first fsync (one journal commit for a version
    folder instead of one a file); what it writes and what it refuses are those of one file at a time."""
    import os

    from certkeeper.store.atomic import write_new_files

    files = [(str(tmp_path / "privkey.pem"), b"key" * 1000, 0o600, -1),
             (str(tmp_path / "cert.pem"), b"cert", 0o644, -1), (str(tmp_path / "empty"), b"", 0o640, os.getgid())]
    old = os.umask(0o077)
    try:
        write_new_files(files)
    finally:
        os.umask(old)
    for path, data, mode, _gid in files:
        assert Path(path).read_bytes() == data
        assert stat.S_IMODE(Path(path).stat().st_mode) == mode  # whatever the umask

    open_before = len(list(Path("/proc/self/fd").iterdir()))
    clash = [(str(tmp_path / "new.pem"), b"new", 0o644, -1), (str(tmp_path / "cert.pem"), b"other", 0o644, -1)]
    with pytest.raises(FileExistsError):
        write_new_files(clash)  # never replaces a file: the version folder is new, a name in it is a bug
    assert len(list(Path("/proc/self/fd").iterdir())) == open_before
    assert (tmp_path / "cert.pem").read_bytes() == b"cert"
