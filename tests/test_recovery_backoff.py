"""The backoff never outlives the fix (issue 21.9): with nothing installed a waiting failure still exits
non-zero, and a changed configuration or issuer is tried at once."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.lifecycle_helpers import run_cli, write_config

CERTIFICATE = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
"""


def results(stdout: str) -> list[str]:
    return [row["result"] for row in json.loads(stdout)]


def test_after_ca_init_the_renewal_is_tried_at_once_and_until_then_every_run_fails(tmp_path: Path) -> None:
    config = write_config(tmp_path, CERTIFICATE)
    shutil.rmtree(tmp_path / "ca")  # the CA was never initialised
    first = run_cli(config, "renew", "--json")
    assert first.returncode == 1 and results(first.stdout) == ["failed"], first.stdout + first.stderr
    waiting = run_cli(config, "renew", "--json")
    assert waiting.returncode == 1, waiting.stdout + waiting.stderr
    [row] = json.loads(waiting.stdout)
    assert row["result"] == "failed" and "no certificate installed yet; retrying after 1 failure" in row["detail"]
    assert "last error:" in row["detail"]
    time.sleep(0.01)  # the CA folder's mtime must be after the failed attempt's timestamp
    init = run_cli(config, "ca", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    fixed = run_cli(config, "renew", "--json")
    assert fixed.returncode == 0 and results(fixed.stdout) == ["renewed"], fixed.stdout + fixed.stderr


def test_a_changed_configuration_ends_the_backoff(tmp_path: Path) -> None:
    broken = CERTIFICATE.replace('issuer = "internal"', 'issuer = "internal"\nreload = ["/nonexistent-hook"]')
    config = write_config(tmp_path, broken)
    first = run_cli(config, "renew", "--json")
    assert first.returncode == 1, first.stdout + first.stderr
    assert run_cli(config, "renew", "--json").returncode == 1  # waiting out the backoff, nothing installed
    text = config.path.read_text().replace('reload = ["/nonexistent-hook"]\n', "")
    config.path.write_text(text)
    os.utime(config.path)
    fixed = run_cli(config, "renew", "--json")
    assert fixed.returncode == 0 and results(fixed.stdout) == ["renewed"], fixed.stdout + fixed.stderr
