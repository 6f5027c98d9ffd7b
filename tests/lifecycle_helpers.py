"""Building blocks for lifecycle tests: a config on disk with an initialised internal CA and real hook scripts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from certkeeper import pki
from certkeeper.config import CaIssuerConfig, Config, load_config
from certkeeper.issuers.internal_ca import init_ca


def hook_script(directory: Path, name: str, body: str = "") -> Path:
    """A hook that appends one line per run (its name and the certificates it ran for) to ``runs.log``."""
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "{name} $CERTKEEPER_NAMES $CERTKEEPER_VERSION" >> {directory / "runs.log"}\n'
                    f"{body}\n")
    path.chmod(0o755)
    return path


def hook_runs(directory: Path) -> list[str]:
    log = directory / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def write_config(tmp_path: Path, certificates: str, *, settings: str = "") -> Config:
    """A config with an internal CA issuer named ``internal`` (initialised) and the given certificate tables."""
    passphrase = tmp_path / "ca.pass"
    passphrase.write_text("lifecycle tests\n")
    passphrase.chmod(0o600)
    path = tmp_path / "certkeeper.toml"
    defaults = {"hook_timeout": '"20s"', "verify_timeout": '"15s"', "lock_timeout": '"1s"'}
    for line in settings.splitlines():
        defaults.pop(line.split("=", 1)[0].strip(), None)
    lines = "\n        ".join([*(f"{key} = {value}" for key, value in defaults.items()), *settings.splitlines()])
    path.write_text(textwrap.dedent(f"""\
        [certkeeper]
        state_dir = "{tmp_path / "state"}"
        {lines}

        [issuers.internal]
        type = "ca"
        ca_dir = "{tmp_path / "ca"}"
        passphrase_file = "{passphrase}"
        lifetime = "30d"
        """) + textwrap.dedent(certificates))
    config = load_config(path)
    issuer = config.issuers["internal"]
    assert isinstance(issuer, CaIssuerConfig)
    if not (tmp_path / "ca").exists():
        init_ca(issuer, now=pki.now_utc())
    return config


def run_cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), *args],
                          capture_output=True, text=True, timeout=300)
