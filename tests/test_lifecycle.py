"""A pass end to end with the internal CA and real hook scripts: install, batch reloads, failures, locks."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from certkeeper import pki
from certkeeper.app import build_app
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli, write_config


def test_first_pass_issues_installs_and_reloads_then_nothing_is_due(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test", "smtp.example.test"]
        reload = ["{hook}"]
        """)
    app = build_app(config)
    [outcome] = app.run_pass()
    assert outcome.result == "renewed", outcome.detail
    current = CertificateHome(config.settings.state_dir, "mail").current()
    assert current is not None and outcome.version == current.id
    leaf = pki.load_certificates((current.path / "fullchain.pem").read_bytes())[0]
    assert sorted(pki.subject_alternative_names(leaf)) == ["mail.example.test", "smtp.example.test"]
    assert hook_runs(tmp_path) == [f"reload mail {current.id}"]
    [again] = app.run_pass()
    assert again.result == "not-due" and again.detail.startswith("renew_before")
    assert len(hook_runs(tmp_path)) == 1
    assert app.store.renewal_counts() == {("mail", "success"): 1}


def test_five_certificates_served_by_one_daemon_reload_it_once(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "postfix-like")
    tables = "".join(f"""
        [certificates.c{i}]
        issuer = "internal"
        domains = ["c{i}.example.test"]
        reload = ["{hook}"]
        """ for i in range(5))
    config = write_config(tmp_path, tables)
    outcomes = build_app(config).run_pass()
    assert [o.result for o in outcomes] == ["renewed"] * 5
    [run] = hook_runs(tmp_path)
    assert run.split()[1:6] == ["c0", "c1", "c2", "c3", "c4"]


def test_a_failing_hook_fails_the_run_and_is_retried_without_reissuing(tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    hook = hook_script(tmp_path, "reload", body=f'[ -e {flag} ] && {{ echo "daemon not running" >&2; exit 3; }}\n'
                                                 "exit 0")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)
    failed = run_cli(config, "renew")
    assert failed.returncode == 1, failed.stderr
    assert "mail: failed: reload hook" in failed.stdout and "exited with status 3: daemon not running" in failed.stdout
    version = CertificateHome(config.settings.state_dir, "mail").current()
    assert version is not None
    store = SqliteStore(config.settings.state_dir)
    state = store.get_state("mail")
    assert state is not None and state.reload_pending
    store.close()
    flag.unlink()
    retried = run_cli(config, "renew", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == [{"name": "mail", "result": "reloaded",
                                           "detail": f"endpoints now serve {version.id}", "version": version.id}]
    assert CertificateHome(config.settings.state_dir, "mail").current() == version
    quiet = run_cli(config, "renew", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_force_renews_prunes_old_versions_and_rollback_flips_back(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """, settings="keep_versions = 2")
    app = build_app(config)
    ids = [app.run_pass(force=True)[0].version for _ in range(3)]
    home = CertificateHome(config.settings.state_dir, "mail")
    assert [v.id for v in home.versions()] == ids[1:]
    result = run_cli(config, "rollback", "mail")
    assert result.returncode == 0, result.stderr
    current = home.current()
    assert current is not None and current.id == ids[1]
    assert hook_runs(tmp_path)[-1] == f"reload mail {ids[1]}"
    bad = run_cli(config, "rollback", "mail", "--to", "nope")
    assert bad.returncode == 1 and "has no version 'nope'" in bad.stderr


def test_two_key_types_install_one_subfolder_each(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        key_types = ["ecdsa-p256", "rsa-2048"]
        """)
    [outcome] = build_app(config).run_pass()
    assert outcome.result == "renewed"
    current = config.settings.state_dir / "certs" / "mail" / "current"
    for family in ("ecdsa", "rsa"):
        key = pki.load_key((current / family / "privkey.pem").read_bytes())
        assert pki.key_type_of(key).startswith(family)


def test_reuse_key_keeps_the_key_across_renewals(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reuse_key = true
        """)
    app = build_app(config)
    home = CertificateHome(config.settings.state_dir, "mail")
    app.run_pass()
    first = home.current()
    app.run_pass(force=True)
    second = home.current()
    assert first is not None and second is not None and first.id != second.id
    assert (first.path / "privkey.pem").read_bytes() == (second.path / "privkey.pem").read_bytes()


def _hold(state_dir: str, ready: object, done: object) -> None:
    with SqliteStore(Path(state_dir)).lock("mail", wait=5):
        ready.set()  # type: ignore[attr-defined]
        done.wait(30)  # type: ignore[attr-defined]


def test_a_busy_lock_skips_the_certificate_with_exit_75(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(config.settings.state_dir), ready, done))
    holder.start()
    try:
        assert ready.wait(10)
        result = run_cli(config, "renew")
        assert result.returncode == 75, result.stderr
        assert "mail: busy: certificate 'mail': another certkeeper is working on it" in result.stdout
        assert f"held by pid {holder.pid}" in result.stdout
    finally:
        done.set()
        holder.join()
    assert run_cli(config, "renew").returncode == 0


def test_status_shows_expiry_and_the_next_action(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    assert run_cli(config, "renew").returncode == 0
    result = run_cli(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["name"] == "mail" and 29 < row["days_left"] <= 30
    assert row["last_result"]["result"] == "success"
    assert row["next_reason"].startswith("renew_before")
    text = run_cli(config, "status").stdout
    assert "mail  [ecdsa-p256]  mail.example.test" in text and "next: renew at" in text
    assert (config.settings.state_dir / "state.db").exists()


def test_hooks_test_runs_the_hooks_against_current_without_renewing(tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    hook = hook_script(tmp_path, "reload", body=f'[ -e {flag} ] && {{ echo "cannot reload" >&2; exit 2; }}\nexit 0')
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)
    never = run_cli(config, "hooks", "test", "mail")
    assert never.returncode == 1 and "has never been installed; run `certkeeper renew mail`" in never.stderr
    assert run_cli(config, "renew").returncode == 0
    version = CertificateHome(config.settings.state_dir, "mail").current()
    assert version is not None
    result = run_cli(config, "hooks", "test", "mail")
    assert result.returncode == 0, result.stderr
    assert f"serve {version.id}" in result.stdout
    assert hook_runs(tmp_path) == [f"reload mail {version.id}"] * 2
    flag.touch()
    broken = run_cli(config, "hooks", "test", "mail")
    assert broken.returncode == 1 and "exited with status 2: cannot reload" in broken.stderr
    assert CertificateHome(config.settings.state_dir, "mail").current() == version
