"""Crash-only recovery of a broken install (issue 21, items 2 and 3): each broken state is reported once, naming
the path, and counts as "nothing usable installed" for that certificate only, so the pass issues a fresh pair."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.app import build_app
from certkeeper.config import Config
from certkeeper.model import KeyType
from certkeeper.renewal.policy import Result
from certkeeper.store.versions import CertificateHome, Version
from tests.lifecycle_helpers import write_config

TWO = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]

[certificates.other]
issuer = "internal"
domains = ["other.example.test"]
"""


def _relink(target: str) -> Callable[[CertificateHome, Version], str]:
    def corrupt(home: CertificateHome, version: Version) -> str:
        home.current_link.unlink()
        home.current_link.symlink_to(target.format(root=home.root, id=version.id))
        return str(home.current_link)
    return corrupt


def _replace_link(kind: str) -> Callable[[CertificateHome, Version], str]:
    def corrupt(home: CertificateHome, version: Version) -> str:
        home.current_link.unlink()
        if kind == "file":
            home.current_link.write_text("not a link\n")
        else:
            shutil.copytree(version.path, home.current_link)
        return str(home.current_link)
    return corrupt


def _edit_meta(edit: Callable[[dict[str, object]], object]) -> Callable[[CertificateHome, Version], str]:
    def corrupt(home: CertificateHome, version: Version) -> str:
        path = version.path / "version.json"
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
        return str(path)
    return corrupt


def _bad_json(home: CertificateHome, version: Version) -> str:
    (version.path / "version.json").write_text("{not json")
    return str(version.path / "version.json")


def _truncate(filename: str, size: int, *, keep_mtime: bool = False) -> Callable[[CertificateHome, Version], str]:
    def corrupt(home: CertificateHome, version: Version) -> str:
        path = version.path / filename
        stat = path.stat()
        with path.open("r+b") as handle:
            handle.truncate(size)
        if keep_mtime:
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return str(path)
    return corrupt


def _remove(filename: str) -> Callable[[CertificateHome, Version], str]:
    def corrupt(home: CertificateHome, version: Version) -> str:
        (version.path / filename).unlink()
        return str(version.path / filename)
    return corrupt


def _swap_key(home: CertificateHome, version: Version) -> str:
    """Another key of the same type in privkey.pem, mtime kept: what a careless restore from backup does."""
    path = version.path / "privkey.pem"
    stat = path.stat()
    path.write_bytes(pki.key_to_pem(pki.generate_key(KeyType.ECDSA_P256)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return str(path)


CORRUPTIONS: dict[str, Callable[[CertificateHome, Version], str]] = {
    "dangling current": _relink("versions/nosuch"),
    "absolute current": _relink("{root}/versions/{id}"),
    "looping current": _relink("current"),
    "current is a file": _replace_link("file"),
    "current is a folder": _replace_link("folder"),
    "bad version.json": _bad_json,
    "no pairs in version.json": _edit_meta(lambda meta: meta.update(pairs=[])),
    "truncated fullchain.pem": _truncate("fullchain.pem", 100),
    "empty combined.pem": _truncate("combined.pem", 0, keep_mtime=True),
    "corrupt cert.pem, mtime kept": _truncate("cert.pem", 200, keep_mtime=True),
    "missing combined.pem": _remove("combined.pem"),
    "missing cert.pem": _remove("cert.pem"),
    "swapped key, mtime kept": _swap_key,
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both certificates installed once (an internal CA); each test starts from a copy."""
    base = tmp_path_factory.mktemp("installed")
    config = write_config(base, TWO)
    outcomes = build_app(config).run_pass()
    assert [o.result for o in outcomes] == [Result.RENEWED] * 2
    return base


def copy_of(installed: Path, tmp_path: Path) -> Config:
    shutil.copytree(installed, tmp_path, symlinks=True, dirs_exist_ok=True)
    text = (tmp_path / "certkeeper.toml").read_text().replace(str(installed), str(tmp_path))
    (tmp_path / "certkeeper.toml").write_text(text)
    return write_config(tmp_path, TWO)


def assert_whole_pair_current(home: CertificateHome) -> Version:
    current = home.current()
    assert current is not None
    for pair in current.pairs:
        key = pki.load_key(pair.privkey.read_bytes())
        leaf = pki.load_certificates((pair.directory / "cert.pem").read_bytes())[0]
        combined = (pair.directory / "combined.pem").read_bytes()
        assert pki.key_matches(key, leaf) and pki.fingerprint(leaf) == pair.fingerprint
        assert pki.key_matches(pki.load_key(combined), pki.load_certificates(combined)[0])
        assert home.changed_files(pair) == []
    return current


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_broken_install_is_reported_once_and_renewed_for_that_certificate_only(
        case: str, installed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = copy_of(installed, tmp_path)
    home = CertificateHome(config.settings.state_dir, "mail")
    other = CertificateHome(config.settings.state_dir, "other").current()
    before = home.current()
    assert before is not None
    path = CORRUPTIONS[case](home, before)
    with caplog.at_level(logging.WARNING, logger="certkeeper"):
        outcomes = build_app(config).run_pass()
    assert [(o.name, o.result) for o in outcomes] == [("mail", Result.RENEWED), ("other", Result.NOT_DUE)], \
        [o.detail for o in outcomes]
    reports = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(reports) == 1 and path in reports[0], caplog.text
    after = assert_whole_pair_current(home)
    assert after.id != before.id
    assert CertificateHome(config.settings.state_dir, "other").current() == other
    [again] = build_app(config).run_pass(["mail"])
    assert again.result == Result.NOT_DUE, again.detail


def test_a_truncated_fullchain_does_not_block_a_forced_renewal(installed: Path, tmp_path: Path) -> None:
    config = copy_of(installed, tmp_path)
    home = CertificateHome(config.settings.state_dir, "mail")
    before = home.current()
    assert before is not None
    _truncate("fullchain.pem", 100)(home, before)
    [outcome] = build_app(config).run_pass(["mail"], force=True)
    assert outcome.result == Result.RENEWED, outcome.detail
    assert_whole_pair_current(home)


def test_version_json_records_the_size_and_hash_of_every_file(installed: Path) -> None:
    home = CertificateHome(installed / "state", "mail")
    current = home.current()
    assert current is not None
    [pair] = current.pairs
    assert sorted(name for name, _, _ in pair.files) == sorted(
        ["privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "combined.pem"])
    assert home.changed_files(pair) == []
