"""The backoff never outlives the fix (issue 21.9): with nothing installed a waiting failure still exits
non-zero, and a changed configuration or issuer is tried at once."""

from __future__ import annotations

import json
import os
import shutil
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
    original = config.path.read_text()
    # Another table edited, or the file touched: what the attempt is made with is the same; the backoff holds.
    config.path.write_text(original + '\n[issuers.unused]\ntype = "ca"\nca_dir = "/nonexistent"\n')
    os.utime(config.path)
    held = run_cli(config, "renew", "--json")
    assert held.returncode == 1 and "retrying after 1 failure" in json.loads(held.stdout)[0]["detail"], held.stdout
    # The certificate's own table fixed, with the file's old mtime kept (a copy by rsync -t, say): tried at once.
    stat = config.path.stat()
    config.path.write_text(original.replace('reload = ["/nonexistent-hook"]\n', ""))
    os.utime(config.path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3_600_000_000_000))
    fixed = run_cli(config, "renew", "--json")
    assert fixed.returncode == 0 and results(fixed.stdout) == ["renewed"], fixed.stdout + fixed.stderr
