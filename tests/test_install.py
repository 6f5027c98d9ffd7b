"""Installing key pairs: the gate before install, atomic flips, modes, retention, copies, crash safety."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.config import CopyTarget
from certkeeper.errors import InstallRefused
from certkeeper.model import KeyType
from certkeeper.store.versions import CertificateHome, KeyPair, Ownership, check_pairs
from certkeeper.testbed.certs import TestCA


def now() -> datetime:
    """The time of the call: the test bed's certificates are valid from 5 minutes before they were made, and a
    module-level constant taken at collection is older than that by the time a slow run reaches these tests."""
    return datetime.now(UTC)
DOMAINS = ("mail.example.test", "smtp.example.test")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("install test root")


@pytest.fixture(scope="module")
def intermediate(ca: TestCA) -> TestCA:
    return ca.intermediate()


def pair(issuer: TestCA, key_type: KeyType = KeyType.ECDSA_P256, names: tuple[str, ...] = DOMAINS) -> KeyPair:
    leaf = issuer.issue(list(names), key_type=key_type.value)
    return KeyPair(key_type, leaf.key, leaf.certificate, leaf.intermediates)


def test_a_good_pair_passes_the_gate(ca: TestCA, intermediate: TestCA) -> None:
    check_pairs("mail", [pair(intermediate)], DOMAINS, [ca.certificate], now=now())


def test_a_mismatched_key_is_refused_before_install(ca: TestCA, intermediate: TestCA) -> None:
    good = pair(intermediate)
    other = pki.generate_key(KeyType.ECDSA_P256)
    with pytest.raises(InstallRefused, match=r"certificate 'mail': not installed: the ecdsa-p256 certificate "
                                             r"\(serial [0-9a-f]+\) does not match its private key"):
        check_pairs("mail", [KeyPair(good.key_type, other, good.certificate, good.chain)], DOMAINS,
                    [ca.certificate], now=now())


def test_names_not_covering_the_configuration_are_refused(ca: TestCA, intermediate: TestCA) -> None:
    with pytest.raises(InstallRefused, match="does not cover smtp.example.test"):
        check_pairs("mail", [pair(intermediate, names=("mail.example.test",))], DOMAINS, [ca.certificate], now=now())


def test_a_chain_missing_its_intermediate_is_refused(ca: TestCA, intermediate: TestCA) -> None:
    good = pair(intermediate)
    with pytest.raises(InstallRefused, match="chain .* does not verify"):
        check_pairs("mail", [KeyPair(good.key_type, good.key, good.certificate, ())], DOMAINS,
                    [ca.certificate], now=now())


def test_install_flips_current_to_a_complete_version(tmp_path: Path, intermediate: TestCA) -> None:
    home = CertificateHome(tmp_path, "mail")
    assert home.current() is None
    first = home.write_version([pair(intermediate)], issuer="internal", domains=DOMAINS, now=now())
    assert home.current() is None  # written, not yet active
    home.activate(first)
    current = home.current()
    assert current is not None and current.id == first.id
    link = tmp_path / "certs" / "mail" / "current"
    assert str(link.readlink()) == f"versions/{first.id}"  # relative: survives moving state_dir
    files = sorted(p.name for p in (link).iterdir())
    assert files == ["cert.pem", "chain.pem", "combined.pem", "fullchain.pem", "privkey.pem", "version.json"]
    combined = (link / "combined.pem").read_bytes()
    assert combined.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert combined.count(b"BEGIN CERTIFICATE") == 2
    second = home.write_version([pair(intermediate)], issuer="internal", domains=DOMAINS, now=now())
    assert second.id != first.id and second.id > first.id
    home.activate(second)
    assert home.current() == second


def test_keys_are_0600_and_folders_are_not_world_readable(tmp_path: Path, intermediate: TestCA) -> None:
    home = CertificateHome(tmp_path, "mail")
    version = home.write_version([pair(intermediate)], issuer="internal", domains=DOMAINS, now=now())
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in version.path.iterdir()}
    assert mode["privkey.pem"] == 0o600 and mode["combined.pem"] == 0o600
    assert mode["fullchain.pem"] == 0o644
    for folder in (home.root, home.versions_dir, version.path):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o007 == 0


def test_a_group_gets_read_access_to_the_key(tmp_path: Path, intermediate: TestCA) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name if os.getgid() else "daemon"
    home = CertificateHome(tmp_path, "mail", Ownership(group))
    version = home.write_version([pair(intermediate)], issuer="internal", domains=DOMAINS, now=now())
    key = version.path / "privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert key.stat().st_gid == grp.getgrnam(group).gr_gid
    assert stat.S_IMODE(version.path.stat().st_mode) == 0o750


def test_two_key_types_get_one_subfolder_each(tmp_path: Path, intermediate: TestCA) -> None:
    home = CertificateHome(tmp_path, "mail")
    pairs = [pair(intermediate, KeyType.ECDSA_P256), pair(intermediate, KeyType.RSA_2048)]
    version = home.write_version(pairs, issuer="internal", domains=DOMAINS, now=now())
    home.activate(version)
    current = tmp_path / "certs" / "mail" / "current"
    for family, kind in (("ecdsa", KeyType.ECDSA_P256), ("rsa", KeyType.RSA_2048)):
        cert = pki.load_certificates((current / family / "fullchain.pem").read_bytes())[0]
        key = pki.load_key((current / family / "privkey.pem").read_bytes())
        assert pki.key_matches(key, cert) and pki.key_type_of(key) == kind.value
    assert {p.key_type for p in version.pairs} == {"ecdsa-p256", "rsa-2048"}
    assert home.current() == version  # what write_version returned is what its version.json reads as


def test_prune_keeps_the_newest_and_never_current(tmp_path: Path, intermediate: TestCA) -> None:
    home = CertificateHome(tmp_path, "mail")
    made = [home.write_version([pair(intermediate)], issuer="i", domains=DOMAINS, now=now() + timedelta(seconds=i))
            for i in range(6)]
    home.activate(made[0])  # rolled back to the oldest
    removed = home.prune(keep=3)
    assert removed == [made[1].id, made[2].id]
    assert [v.id for v in home.versions()] == [made[0].id, made[3].id, made[4].id, made[5].id]


def test_copy_to_replaces_fixed_paths_with_their_modes(tmp_path: Path, intermediate: TestCA) -> None:
    home = CertificateHome(tmp_path / "state", "mail")
    version = home.write_version([pair(intermediate)], issuer="i", domains=DOMAINS, now=now())
    targets: dict[CopyTarget, Path] = {"combined": tmp_path / "postfix" / "mail.pem",
                                       "fullchain": tmp_path / "postfix" / "chain.pem"}
    targets["combined"].parent.mkdir()
    targets["combined"].write_text("old")
    home.copy_to(version, targets)
    assert targets["combined"].read_bytes() == (version.path / "combined.pem").read_bytes()
    assert stat.S_IMODE(targets["combined"].stat().st_mode) == 0o600
    assert stat.S_IMODE(targets["fullchain"].stat().st_mode) == 0o644
    assert not [p for p in targets["combined"].parent.iterdir() if "certkeeper-tmp" in p.name]


def _install_forever(state_dir: str, pairs: list[KeyPair]) -> None:
    home = CertificateHome(Path(state_dir), "mail")
    moment = now()
    while True:
        moment += timedelta(seconds=1)
        version = home.write_version([random.choice(pairs)], issuer="i", domains=DOMAINS, now=moment)
        home.activate(version)
        home.prune(keep=3)


def assert_current_is_whole(home: CertificateHome) -> None:
    version = home.current()
    if version is None:
        return
    current = home.current_link
    key = pki.load_key((current / "privkey.pem").read_bytes())
    leaf = pki.load_certificates((current / "fullchain.pem").read_bytes())[0]
    assert pki.key_matches(key, leaf)
    combined = (current / "combined.pem").read_bytes()
    assert pki.key_matches(pki.load_key(combined), pki.load_certificates(combined)[0])
    assert pki.fingerprint(leaf) == version.pairs[0].fingerprint


def test_sigkill_at_random_moments_never_leaves_a_broken_current(tmp_path: Path, intermediate: TestCA) -> None:
    """Kill an installing process 300 times; after each, current is a whole matching pair; recover cleans."""
    pairs = [pair(intermediate) for _ in range(3)]
    home = CertificateHome(tmp_path, "mail")
    # A whole pair is current before the first kill, so that every check below has a pair to judge: a child
    # killed before its first install (likely on a loaded machine) must leave that one in place.
    home.activate(home.write_version([pairs[0]], issuer="i", domains=DOMAINS, now=now()))
    rng = random.Random(7)
    context = multiprocessing.get_context("fork")
    kills = 0
    for _ in range(300):
        child = context.Process(target=_install_forever, args=(str(tmp_path), pairs))
        child.start()
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join()
        kills += child.exitcode == -signal.SIGKILL
        home.recover()
        assert home.current() is not None
        assert_current_is_whole(home)
        assert not [p for p in home.versions_dir.iterdir() if p.name.startswith(".")] if home.versions_dir.exists() \
            else True
    assert kills == 300
    assert home.current() is not None
