"""The .deb: built with Debian's tools by deploy/debian/build, installed with apt-get into this machine, and
then used as an administrator would: the command on PATH, its hooks found by name, the units verified."""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certkeeper.testbed.postfix import Postfix
from tests.configs import internal_ca_config

ROOT = Path(__file__).resolve().parent.parent
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

pytestmark = pytest.mark.slow


def purge() -> None:
    if subprocess.run(["dpkg-query", "-W", "certkeeper"], capture_output=True, check=False).returncode == 0:
        subprocess.run(["apt-get", "purge", "-y", "-q", "certkeeper"], env=APT_ENV, check=True, capture_output=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package built from this tree and installed with apt-get; purged afterwards."""
    purge()  # a package left by an earlier, interrupted run
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run(["bash", str(ROOT / "deploy" / "debian" / "build"), str(out)], capture_output=True,
                           text=True, check=True, timeout=600)
    deb = Path(built.stdout.strip().splitlines()[-1])
    subprocess.run(["apt-get", "install", "-y", "-q", str(deb)], env=APT_ENV, check=True, capture_output=True,
                   timeout=300)
    yield deb
    purge()


def test_the_installed_command_is_the_packaged_version(installed: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = subprocess.run(["/usr/bin/certkeeper", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"certkeeper {version}"
    arch = subprocess.check_output(["dpkg", "--print-architecture"], text=True).strip()
    assert installed.name == f"certkeeper_{version}-1_{arch}.deb"
    assert subprocess.run(["getent", "passwd", "certkeeper"], capture_output=True, check=False).returncode == 0
    assert subprocess.run(["man", "-w", "certkeeper"], capture_output=True, text=True, check=True).stdout.strip() \
        == "/usr/share/man/man1/certkeeper.1.gz"
    assert Path("/usr/share/bash-completion/completions/certkeeper").is_file()


def test_the_installed_units_verify(installed: Path) -> None:
    units = [f"/lib/systemd/system/{u}" for u in ("certkeeper.service", "certkeeper-renew.service",
                                                   "certkeeper-renew.timer")]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    assert "ExecStart=/usr/bin/certkeeper " in Path(units[0]).read_text()


def test_the_installed_certkeeper_reloads_postfix_with_its_packaged_hook(
    installed: Path, tmp_path: Path, postfix_factory: Callable[..., Postfix],
) -> None:
    """The Quick start with the package: renew, point Postfix at the files, `hooks test` with reload = ["postfix"]."""
    postfix = postfix_factory()
    passphrase = tmp_path / "ca.pass"
    passphrase.write_text("debian package test\n")
    passphrase.chmod(0o600)
    config = internal_ca_config(tmp_path, domains=["mail.example.test"], issuer=f'passphrase_file = "{passphrase}"')
    certkeeper = ["/usr/bin/certkeeper", "-c", str(config)]
    subprocess.run([*certkeeper, "ca", "init"], check=True, capture_output=True, cwd=tmp_path)
    first = subprocess.run([*certkeeper, "renew"], capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    current = tmp_path / "state" / "certs" / "mail" / "current"
    postfix.postconf(smtpd_tls_chain_files=str(current / "combined.pem"))
    postfix.reload()
    endpoint = f"smtp://127.0.0.1:{postfix.ports['smtp']}"
    config.write_text(config.read_text().replace(
        'domains = ["mail.example.test"]\n',
        f'domains = ["mail.example.test"]\nreload = ["postfix"]\nendpoints = ["{endpoint}"]\n'
        f'hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}\n'))
    tested = subprocess.run([*certkeeper, "hooks", "test", "mail"], capture_output=True, text=True, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "probe points serve" in tested.stdout
    assert "/opt/certkeeper/share/certkeeper/hooks/postfix" in subprocess.run(
        [*certkeeper, "-v", "hooks", "test", "mail"], capture_output=True, text=True, cwd=tmp_path).stderr
