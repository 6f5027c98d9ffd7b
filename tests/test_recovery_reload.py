"""The reload obligation survives a crash and a broken hook (issue 21.4): owed from before the flip until a
verified reload."""

from __future__ import annotations

import json
from pathlib import Path

from certkeeper.store.versions import CertificateHome
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli, write_config

CERTIFICATE = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
reload = ["{hook}"]
"""


def test_a_hook_that_cannot_run_fails_the_renewal_before_the_flip(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    before = home.current()
    hook.chmod(0o644)
    forced = run_cli(config, "renew", "--force")
    assert forced.returncode == 1, forced.stdout + forced.stderr
    assert "which is not executable" in forced.stdout and "chmod 755" in forced.stdout
    assert home.current() == before  # still what the daemons were last reloaded for
    hook.chmod(0o755)
    again = run_cli(config, "renew", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    current = home.current()
    assert current is not None and hook_runs(tmp_path)[-1] == f"reload mail {current.id}"


def test_a_crash_right_after_the_flip_is_reloaded_by_the_next_run(tmp_path: Path) -> None:
    flag = tmp_path / "crash-once"
    # The hook runs right after the flip; it SIGKILLs certkeeper (its parent) the first time: a real crash at
    # that point, no test hook in the code needed.
    hook = hook_script(tmp_path, "reload", f'[ -e {flag} ] && {{ rm {flag}; kill -9 $PPID; sleep 1; exit 1; }}\nexit 0')
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    before = home.current()
    flag.touch()
    crashed = run_cli(config, "renew", "--force")
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    flipped = home.current()
    assert flipped is not None and flipped != before
    after = run_cli(config, "renew", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    [outcome] = json.loads(after.stdout)
    assert outcome["result"] == "reloaded" and outcome["version"] == flipped.id
    assert hook_runs(tmp_path)[-1] == f"reload mail {flipped.id}"
    quiet = run_cli(config, "renew", "--json")
    assert json.loads(quiet.stdout)[0]["result"] == "not-due"
