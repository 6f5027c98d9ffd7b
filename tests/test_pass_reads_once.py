"""A pass with nothing due reads each installed file once (version.json twice) per process and then only stats it
(issue 23), and still sees every broken install that the full reading sees (issue 21): in the next pass of the
same daemon, and in the next ``certkeeper renew`` (a new process, with the identities kept in
``state_dir/verified-files.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.renewal.policy import Result
from certkeeper.store.versions import CertificateHome, VerifiedFiles
from tests import test_recovery_install
from tests.test_recovery_install import CORRUPTIONS, copy_of

installed = test_recovery_install.installed  # the fixture: two certificates installed once


@pytest.fixture
def trust_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the fixture a moment ago count as old enough to be trusted by identity."""
    monkeypatch.setattr(VerifiedFiles, "RACY_SECONDS", -60)


@pytest.mark.usefixtures("trust_at_once")
@pytest.mark.parametrize("process", ["same daemon", "next renew"])
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_file_broken_after_it_was_verified_is_seen_by_the_next_pass(case: str, process: str, installed: Path,
                                                                       tmp_path: Path) -> None:
    config = copy_of(installed, tmp_path)
    app = build_app(config)
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2  # every file hashed and remembered
    remembered = json.loads((config.settings.state_dir / "verified-files.json").read_text())
    assert len(remembered) == 10  # five files of each of the two certificates
    home = CertificateHome(config.settings.state_dir, "mail")
    before = home.current()
    assert before is not None
    CORRUPTIONS[case](home, before)
    if process == "next renew":
        app.close()
        app = build_app(config)
    outcomes = app.run_pass()
    assert [(o.name, o.result) for o in outcomes] == [("mail", Result.RENEWED), ("other", Result.NOT_DUE)], \
        [o.detail for o in outcomes]
    app.close()


def test_a_file_changed_just_before_its_hash_is_not_trusted_by_identity(installed: Path, tmp_path: Path) -> None:
    """git's racily-clean rule: the fixture's files are seconds old, so they are hashed again next time."""
    config = copy_of(installed, tmp_path)
    (config.settings.state_dir / "verified-files.json").unlink(missing_ok=True)
    app = build_app(config)
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2
    assert not (config.settings.state_dir / "verified-files.json").exists()
    app.close()


@pytest.mark.usefixtures("trust_at_once")
def test_a_daemon_with_nothing_due_stops_reading_installed_files(installed: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass one hashes every file; pass two reads version.json once more (its identity is remembered from then
    on: a single renew spends no stat on it); later passes open nothing under certs/."""
    config = copy_of(installed, tmp_path)
    app = build_app(config)
    app.run_pass()
    app.run_pass()
    opened: list[str] = []
    real_open, real_os_open = open, os.open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def counting_os_open(path: object, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)  # version.json is read with O_NOFOLLOW
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2
    assert [path for path in opened if "/certs/" in path] == []
    app.close()


@pytest.mark.usefixtures("trust_at_once")
def test_a_garbled_list_of_verified_files_only_costs_one_hash_per_file(installed: Path, tmp_path: Path) -> None:
    config = copy_of(installed, tmp_path)
    remembered = config.settings.state_dir / "verified-files.json"
    remembered.write_text("{not json")
    app = build_app(config)
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2
    assert len(json.loads(remembered.read_text())) == 10  # hashed again and written afresh
    app.close()


LEFTOVERS: dict[str, Callable[[CertificateHome], object]] = {
    "an .incoming folder": lambda home: (home.versions_dir / ".incoming-20260101T000000Z").mkdir(),
    "a .current link": lambda home: (home.root / ".current-4242-20260101T000000Z").symlink_to("versions/none"),
}


@pytest.mark.usefixtures("trust_at_once")
@pytest.mark.parametrize("process", ["same daemon", "next renew"])
@pytest.mark.parametrize("leftover", list(LEFTOVERS))
def test_a_folder_seen_without_leftovers_is_listed_again_once_an_install_left_one(
        leftover: str, process: str, installed: Path, tmp_path: Path) -> None:
    """A pass lists each certificate's two folders only while their identity moved since they were seen clean
    (``state_dir/clean-folders.json``); what an interrupted install leaves moves it, and is removed."""
    config = copy_of(installed, tmp_path)
    app = build_app(config)
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2
    remembered = json.loads((config.settings.state_dir / "clean-folders.json").read_text())
    assert sorted(remembered) == [f"certs/{n}/{f}" for n in ("mail", "other") for f in ("", "versions/")]
    home = CertificateHome(config.settings.state_dir, "mail")
    LEFTOVERS[leftover](home)
    assert home.has_leftovers() and home.has_leftovers(app.renewer.clean_folders)
    if process == "next renew":
        app.close()
        app = build_app(config)
    assert [o.result for o in app.run_pass()] == [Result.NOT_DUE] * 2
    assert not home.has_leftovers()
    assert not [p for p in (*home.root.iterdir(), *home.versions_dir.iterdir()) if p.name.startswith(".")]
    app.close()


@pytest.mark.usefixtures("trust_at_once")
def test_the_remembered_folders_agree_with_listing_them(installed: Path, tmp_path: Path) -> None:
    config = copy_of(installed, tmp_path)
    home = CertificateHome(config.settings.state_dir, "mail")
    clean = VerifiedFiles(tmp_path / "clean.json")
    moved = tmp_path / "versions-moved"
    steps: list[Callable[[CertificateHome], object]] = [
        lambda _: None, *LEFTOVERS.values(), CertificateHome.recover,
        lambda h: h.versions_dir.rename(moved), lambda h: moved.rename(h.versions_dir),
    ]
    for step in steps:
        step(home)
        assert home.has_leftovers(clean) == home.has_leftovers()
        assert home.has_leftovers(clean) == home.has_leftovers()  # the second time from what was remembered
