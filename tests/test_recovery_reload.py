"""The reload obligation survives a crash and a broken hook (issue 21.4): owed from before the flip until a
verified reload."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from certkeeper.config import Config
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome
from certkeeper.values import replace
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli, write_config

CERTIFICATE = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
reload = ["{hook}"]
"""


def recorded(config: Config) -> list[tuple[str, str]]:
    """The certificate's renewal history as (result, version), newest first."""
    store = SqliteStore(config.settings.state_dir)
    try:
        return [(r.result, r.version) for r in store.renewals("mail")]
    finally:
        store.close()


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


def test_an_order_that_fails_owes_no_reload(tmp_path: Path) -> None:
    """The pass records the reload owed for every certificate it is about to issue, in one commit before the
    first order; one whose order fails is flipped to nothing new and owes nothing: the next pass reloads nothing
    and does not report it reloaded."""
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    runs = hook_runs(tmp_path)
    passphrase = tmp_path / "ca.pass"
    passphrase.write_text("not the passphrase\n")  # the intermediate key no longer opens: the order fails
    failed = run_cli(config, "renew", "--force")
    assert failed.returncode == 1 and "mail: failed: " in failed.stdout, failed.stdout + failed.stderr
    store = SqliteStore(config.settings.state_dir)
    try:
        state = store.get_state("mail")
    finally:
        store.close()
    assert state is not None and state.failures == 1 and not state.reload_pending
    passphrase.write_text("lifecycle tests\n")
    after = run_cli(config, "renew", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout)[0]["result"] == "not-due"
    assert hook_runs(tmp_path) == runs  # no reload of what was served all along


def test_a_crash_right_after_the_flip_is_reloaded_by_the_next_run(tmp_path: Path) -> None:
    flag = tmp_path / "crash-once"
    # The hook runs right after the flip; it SIGKILLs certkeeper (its parent) the first time: a real crash at
    # that point, no test hook in the code needed.
    hook = hook_script(tmp_path, "reload", f'[ -e {flag} ] && {{ rm {flag}; kill -9 $PPID; sleep 1; exit 1; }}\nexit 0')
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    before = home.current()
    assert before is not None
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
    # The renewal the crashed pass could not record is recorded by the pass that reloaded it: its history row,
    # the last success, and the renewals counter (a store locked past busy_timeout at that record leaves the same).
    renewals = recorded(config)
    store = SqliteStore(config.settings.state_dir)
    try:
        state = store.get_state("mail")
    finally:
        store.close()
    assert renewals == [("success", flipped.id), ("success", before.id)], renewals
    assert state is not None and not state.reload_pending and state.last_success_at is not None
    assert state.last_success_at >= flipped.created_at
    metrics = run_cli(config, "metrics")
    assert 'certkeeper_renewals_total{name="mail",result="success"} 2' in metrics.stdout, metrics.stdout
    quiet = run_cli(config, "renew", "--json")
    assert json.loads(quiet.stdout)[0]["result"] == "not-due"


def test_a_store_locked_when_the_renewal_is_recorded_fails_clearly_and_the_next_pass_records_it(
        tmp_path: Path) -> None:
    """Another process holds the state store past busy_timeout (30 s) right after the reload: the renewal is
    installed and served but cannot be recorded.  The run fails naming the store, and the next one records it."""
    flag, held, pid = tmp_path / "lock-once", tmp_path / "held", tmp_path / "holder.pid"
    state_db = tmp_path / "state" / "state.db"
    holder = (f"import os, sqlite3, time; db = sqlite3.connect({str(state_db)!r}, isolation_level=None); "
              f"db.execute('BEGIN EXCLUSIVE'); open({str(pid)!r}, 'w').write(str(os.getpid())); "
              f"os.rename({str(pid)!r}, {str(held)!r}); time.sleep(120)")
    # The hook runs after the flip; the first time, it leaves a process holding the store's write lock.
    hook = hook_script(tmp_path, "reload", f'[ -e {flag} ] && {{ rm {flag}; setsid {sys.executable} -c "{holder}" '
                                           f'</dev/null >/dev/null 2>&1 & while [ ! -e {held} ]; do sleep 0.05; done; '
                                           '}\nexit 0')
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    flag.touch()
    try:
        locked = run_cli(config, "renew", "--force")
    finally:
        if held.exists():
            os.kill(int(held.read_text()), signal.SIGTERM)
    assert locked.returncode == 74, locked.stdout + locked.stderr
    assert f"{state_db}: cannot write the state store: database is locked" in locked.stderr, locked.stderr
    assert "Traceback" not in locked.stderr, locked.stderr
    flipped = home.current()
    assert flipped is not None and hook_runs(tmp_path)[-1] == f"reload mail {flipped.id}"
    after = run_cli(config, "renew", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout)[0]["result"] == "reloaded"
    assert recorded(config)[0] == ("success", flipped.id), recorded(config)


def test_a_reload_of_a_recorded_version_records_no_second_renewal(tmp_path: Path) -> None:
    """A hook that failed after the flip owes a reload; a reload owed for a version already recorded (a served
    key found stale) adds nothing to the history."""
    flag = tmp_path / "fail-once"
    hook = hook_script(tmp_path, "reload", f'[ -e {flag} ] && {{ rm {flag}; exit 3; }}\nexit 0')
    config = write_config(tmp_path, CERTIFICATE.format(hook=hook))
    assert run_cli(config, "renew").returncode == 0
    flag.touch()
    failed = run_cli(config, "renew", "--force")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    flipped = CertificateHome(config.settings.state_dir, "mail").current()
    assert flipped is not None
    reloaded = run_cli(config, "renew", "--json")
    assert reloaded.returncode == 0 and json.loads(reloaded.stdout)[0]["result"] == "reloaded", reloaded.stdout
    first = recorded(config)
    store = SqliteStore(config.settings.state_dir)
    try:
        state = store.get_state("mail")
        assert state is not None and not state.reload_pending
        store.put_state(replace(state, reload_pending=True))  # as a served key found stale leaves it
    finally:
        store.close()
    assert first[0] == ("success", flipped.id) and [r for r, _ in first].count("success") == 2, first
    again = run_cli(config, "renew", "--json")
    assert json.loads(again.stdout)[0]["result"] == "reloaded", again.stdout
    assert recorded(config) == first
