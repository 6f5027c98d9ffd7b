"""certkeeper as an administrator installs it: a wheel in a virtualenv of its own, hooks found by name, missing
optional extras named with the command that installs them, a refused state folder explained."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import internal_ca_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pipx install .`` (Debian's pipx), as the README says: a virtualenv of its own with the dependencies and no
    extras, so neither psycopg nor aiosmtpd is there (a real absence, not a patched import).  Yields the venv."""
    base = tmp_path_factory.mktemp("pipx")
    env = {**os.environ, "PIPX_HOME": str(base / "home"), "PIPX_BIN_DIR": str(base / "bin")}
    subprocess.run(["pipx", "install", str(ROOT)], env=env, check=True, capture_output=True, timeout=600)
    venv = base / "home" / "venvs" / "certkeeper"
    assert (base / "bin" / "certkeeper").resolve() == (venv / "bin" / "certkeeper").resolve()
    yield venv


def test_every_shipped_hook_is_packaged() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    packaged = {Path(p).name for p in data_files["share/certkeeper/hooks"]}
    assert packaged == {p.name for p in (ROOT / "hooks").iterdir()}


def test_an_installed_certkeeper_finds_its_hooks_by_name(plain_install: Path, tmp_path: Path) -> None:
    """After `pipx install .` (a venv of its own) `reload = ["postfix"]` resolves to the packaged hook."""
    python = plain_install / "bin" / "python"
    code = ("from pathlib import Path; from certkeeper.config.resolve import resolve_hook; "
            "print(resolve_hook('postfix', None, Path('/etc/certkeeper/certkeeper.toml')))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    hook = Path(done.stdout.strip())
    assert hook == plain_install / "share" / "certkeeper" / "hooks" / "postfix"
    assert hook.stat().st_mode & stat.S_IXUSR


def test_a_database_without_psycopg_is_a_config_error_naming_the_extra(plain_install: Path, tmp_path: Path) -> None:
    config = tmp_path / "certkeeper.toml"
    config.write_text(f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\ndatabase = "postgresql://u@127.0.0.1/db"\n'
                      f'fleet_key_file = "{tmp_path / "fleet.key"}"\n[[watch]]\nendpoints = ["smtps://127.0.0.1:465"]\n')
    for command in (["config", "check"], ["renew"], ["status"]):
        done = subprocess.run([str(plain_install / "bin" / "certkeeper"), "-c", str(config), *command],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 78, (command, done.stderr)
        assert "psycopg is not installed" in done.stderr and "certkeeper[postgresql]" in done.stderr
        assert "Traceback" not in done.stderr


def test_the_demo_without_aiosmtpd_names_the_extra(plain_install: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(plain_install / "bin" / "certkeeper"), "demo"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 69
    assert "certkeeper[demo]" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A folder other users may traverse (pytest's are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="certkeeper-public-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_state_folder_the_user_may_not_write_says_who_runs_and_who_owns(public_tmp: Path) -> None:
    """certkeeper running as nobody (the suite runs as root): the refusal names the uid, the owner and the mode.

    The interpreter lives under /root, which nobody cannot read, so the child imports certkeeper first and then
    drops to nobody, as a service manager starting it with User=nobody would have it run."""
    tmp_path = public_tmp
    (tmp_path / "locked").mkdir(mode=0o755)
    config = internal_ca_config(tmp_path)
    text = config.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                      f'state_dir = "{tmp_path / "locked" / "state"}"')
    config.write_text(text)
    config.chmod(0o644)
    code = ("import os, sys, tomllib; import certkeeper.cli, certkeeper.cli.parser, certkeeper.cli.status, "
            "certkeeper.app, certkeeper.store.sqlite; "
            "os.setgroups([]); os.setgid(65534); os.setuid(65534); "
            f"sys.exit(certkeeper.cli.main(['-c', {str(config)!r}, 'status']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 74, done.stderr
    assert "cannot create the state directory: Permission denied" in done.stderr
    assert "runs as uid 65534" in done.stderr and "belongs to uid 0 with mode 0755" in done.stderr
