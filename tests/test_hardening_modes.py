"""Folder modes are set, not left to the umask: a `group` key is readable by that group under UMask=0077, and
nothing certkeeper creates is 0777 under umask 000."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper.issuers.acme import _load_or_create_account_key
from certkeeper.store.atomic import write_atomic
from tests.lifecycle_helpers import write_config

NOBODY = pwd.getpwnam("nobody")
MAIL = grp.getgrnam("mail")


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A root-owned 0755 folder in /tmp: another user can walk into it (pytest's own folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="ck-harden-modes-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def renew_with_umask(config_path: Path, umask: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config_path), "renew"],
                          capture_output=True, text=True, timeout=120, umask=umask, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_group_key_is_readable_by_that_group_under_umask_0077(tmp_path: Path, open_base: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        group = "mail"
        """)
    state = open_base / "state"
    config.path.write_text(config.path.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                                           f'state_dir = "{state}"'))
    result = renew_with_umask(config.path, 0o077)
    assert result.returncode == 0, result.stderr
    current = state / "certs" / "mail" / "current"
    for name in ("privkey.pem", "combined.pem"):
        as_mail = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={MAIL.gr_gid}", "--clear-groups",
                                  "cat", str(current / name)], capture_output=True, timeout=30, check=False)
        assert as_mail.returncode == 0, as_mail.stderr
        assert as_mail.stdout == (current / name).read_bytes()
        assert mode(current / name) == 0o640
    as_nobody = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                                "cat", str(current / "privkey.pem")], capture_output=True, timeout=30, check=False)
    assert as_nobody.returncode != 0 and b"Permission denied" in as_nobody.stderr
    assert mode(state) == 0o711
    assert mode(state / "certs") == 0o755
    assert mode(state / "certs" / "mail") == mode(state / "certs" / "mail" / "versions") == 0o750
    assert mode(current.resolve()) == 0o750 and current.resolve().stat().st_gid == MAIL.gr_gid


def test_nothing_is_created_world_writable_under_umask_000(tmp_path: Path) -> None:
    copies = tmp_path / "copies" / "postfix" / "tls"
    config = write_config(tmp_path, f"""
        [certificates.relay]
        issuer = "internal"
        domains = ["relay.example.test"]
        copy_to = {{ combined = "{copies / 'relay.pem'}", fullchain = "{copies / 'relay-chain.pem'}" }}
        """)
    result = renew_with_umask(config.path, 0)
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "copies") == mode(tmp_path / "copies" / "postfix") == mode(copies) == 0o755
    assert mode(copies / "relay.pem") == 0o600 and mode(copies / "relay-chain.pem") == 0o644
    created = [p for p in (tmp_path / "state").rglob("*") if not p.is_symlink()]
    assert created and not [p for p in created if mode(p) & stat.S_IWOTH]


def test_acme_account_folders_are_0700_under_umask_000(tmp_path: Path) -> None:
    account = tmp_path / "state" / "accounts" / "le" / "acme.example-0123456789ab" / "account.key"
    previous = os.umask(0)
    try:
        _load_or_create_account_key(account)
        write_atomic(account.parent / "account.json", b"{}", mode=0o600, dir_mode=0o700)
    finally:
        os.umask(previous)
    for folder in (tmp_path / "state", *account.parents[:3]):
        assert mode(folder) == 0o700, folder
    assert mode(account) == 0o600
