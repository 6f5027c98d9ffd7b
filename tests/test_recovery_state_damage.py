"""Damage inside the state directory: one certificate's damage never stops the others, nor any command.

What a person or a broken tool leaves where certkeeper keeps its state: a folder where a lock file belongs, a file
where a folder belongs, a row of state.db holding what certkeeper never writes (SQLite keeps whatever a column is
given).  Each is named with its path and what to do, the other certificates are renewed in the same pass, and the
next run repairs what it can; never "internal error" with a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from certkeeper.config import Config
from certkeeper.errors import EX_IOERR
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli, write_config


def two_certificates(tmp_path: Path) -> Config:
    reload = hook_script(tmp_path, "reload")
    tables = "".join(f"""
        [certificates.{name}]
        issuer = "internal"
        domains = ["{name}.example.test"]
        reload = ["{reload}"]
        """ for name in ("imap", "mail"))
    config = write_config(tmp_path, tables)
    first = run_cli(config, "renew")
    assert first.returncode == 0, first.stdout + first.stderr
    return config


def versions(tmp_path: Path, name: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "state" / "certs" / name / "versions").iterdir())


def tamper(tmp_path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        db.execute(sql, params)


def assert_no_traceback(result: object) -> None:
    output = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in output and "internal error" not in output, output


def test_a_folder_where_a_lock_belongs_fails_that_certificate_and_the_others_renew(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    lock = tmp_path / "state" / "locks" / "mail.lock"
    lock.unlink()
    lock.mkdir()
    before = versions(tmp_path, "mail")

    result = run_cli(config, "renew", "--force")

    assert result.returncode == 1, result.stdout + result.stderr
    assert_no_traceback(result)
    assert f"mail: failed: {lock}: cannot open the lock of mail: Is a directory (a folder is in the way: move it " \
           f"aside, mv {lock} {lock}.moved)" in result.stdout
    assert "imap: renewed: installed and verified" in result.stdout
    assert versions(tmp_path, "mail") == before  # nothing done without the lock
    assert "RenewalFailed name=mail" in result.stderr  # what the alerts and the metrics hear

    lock.rmdir()  # what the message says to do (moving it aside), then the next run renews it
    again = run_cli(config, "renew", "--force", "mail")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(versions(tmp_path, "mail")) == len(before) + 1


def test_a_file_where_the_locks_folder_belongs_is_named_by_every_command_that_locks(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    locks = tmp_path / "state" / "locks"
    for lock in locks.iterdir():
        lock.unlink()
    locks.rmdir()
    locks.write_text("not a folder\n")

    rollback = run_cli(config, "rollback", "mail")
    renew = run_cli(config, "renew", "--force")

    for result in (rollback, renew):
        assert_no_traceback(result)
        assert f"{locks} is not a folder: move it aside, mv {locks} {locks}.moved" in result.stdout + result.stderr
    assert rollback.returncode == EX_IOERR
    assert renew.returncode == 1
    assert locks.read_text() == "not a folder\n"


def test_a_file_where_the_versions_folder_belongs_is_left_alone_and_named(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    home = tmp_path / "state" / "certs" / "mail"
    (home / "versions").rename(tmp_path / "versions-of-mail")
    in_the_way = home / "versions"
    in_the_way.write_text("someone's notes\n")
    in_the_way.chmod(0o644)

    result = run_cli(config, "renew", "--force")

    assert result.returncode == 1, result.stdout + result.stderr
    assert_no_traceback(result)
    assert f"mail: failed: {in_the_way}: cannot write the new version: something other than a folder is in the " \
           "way (move it aside); the installed pair stays current" in result.stdout
    assert "imap: renewed: installed and verified" in result.stdout
    assert in_the_way.read_text() == "someone's notes\n"
    assert stat.S_IMODE(in_the_way.stat().st_mode) == 0o644  # not given the folder's mode either


def test_a_damaged_state_row_is_salvaged_field_by_field_and_written_back(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    runs = len(hook_runs(tmp_path))
    # A reload owed (it must survive the salvage), and two fields holding what certkeeper never writes.
    tamper(tmp_path, "UPDATE cert_state SET failures = 'x', last_attempt_at = 'yesterday', reload_pending = 1 "
           "WHERE name = 'mail'")

    result = run_cli(config, "renew")

    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_traceback(result)
    assert f"{tmp_path / 'state' / 'state.db'}: the state of certificate 'mail' was damaged (last_attempt_at = " \
           "'yesterday', failures = 'x'): taken as unset, and the row written back repaired" in result.stderr
    assert "mail: reloaded" in result.stdout  # the reload owed was kept
    assert len(hook_runs(tmp_path)) == runs + 1
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        failures, last_attempt = db.execute("SELECT failures, last_attempt_at FROM cert_state WHERE name = 'mail'"
                                            ).fetchone()
    assert failures == 0 and last_attempt is None
    status = run_cli(config, "status")
    assert status.returncode == 0 and "damaged" not in status.stderr, status.stderr


def test_damaged_history_and_endpoint_rows_are_left_out_of_status_and_metrics(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    tamper(tmp_path, "UPDATE renewals SET at = 'garbage' WHERE name = 'mail'")
    tamper(tmp_path, "INSERT INTO endpoints VALUES ('mail', 'smtps://127.0.0.1:1', '2026-12-01T00:00:00', 'ok', "
           "'', '', NULL, 0, '{not json')")

    status = run_cli(config, "status", "--json")
    metrics = run_cli(config, "metrics")

    for result in (status, metrics):
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_traceback(result)
    assert "a damaged row of renewals left out (Invalid isoformat string: 'garbage'): 'mail'" in status.stderr
    assert "a damaged row of endpoints left out" in metrics.stderr
    shown = {c["name"]: c for c in json.loads(status.stdout)}
    assert set(shown) == {"imap", "mail"}
    assert 'ssl_file_cert_not_after{name="mail",' in metrics.stdout  # the rest is still served


def test_a_missing_ca_directory_is_named_not_taken_for_an_empty_one(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    (tmp_path / "ca").rename(tmp_path / "ca-moved")  # an unmounted volume, a restore not yet done

    revoke = run_cli(config, "ca", "revoke", "mail")
    crl = run_cli(config, "ca", "crl")

    for result in (revoke, crl):
        assert result.returncode == 1, result.stdout + result.stderr
        assert_no_traceback(result)
    # Not "'mail' is neither a hex serial number nor a certificate name issued by this CA".
    assert f"internal CA 'internal': the CA directory {tmp_path / 'ca'} does not exist (run `certkeeper ca init`" \
           in revoke.stderr
    assert f"intermediate certificate {tmp_path / 'ca' / 'intermediate.pem'} is missing" in crl.stderr


def run_within(config: Config, seconds: float, *args: str) -> subprocess.CompletedProcess[str]:
    """run_cli with a short leash: a command that blocks (on a named pipe) fails the test, not the whole run."""
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), *args], capture_output=True,
                          text=True, timeout=seconds)


def current_folder(tmp_path: Path, name: str) -> Path:
    home = tmp_path / "state" / "certs" / name
    return home / (home / "current").readlink()


def test_a_named_pipe_or_absurd_json_as_version_json_costs_that_version_not_the_pass(tmp_path: Path) -> None:
    """A named pipe where ``version.json`` belongs blocked every command forever (opened to be read); JSON nested
    100,000 deep was a RecursionError traceback on every run.  Each is that certificate's damage: named, and
    repaired by a new version, the other certificate untouched."""
    config = two_certificates(tmp_path)
    meta = current_folder(tmp_path, "mail") / "version.json"
    meta.unlink()
    os.mkfifo(meta)
    (current_folder(tmp_path, "imap") / "version.json").write_text("[" * 100_000 + "]" * 100_000)

    status = run_within(config, 60, "status", "--json")
    assert_no_traceback(status)
    errors = {row["name"]: row["installed_error"] for row in json.loads(status.stdout)}
    assert errors["mail"].endswith(f"{meta}: unreadable version metadata (is a named pipe, not a file)"), errors
    assert "unreadable version metadata (maximum recursion depth exceeded" in errors["imap"], errors

    renewed = run_within(config, 120, "renew")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert_no_traceback(renewed)
    assert "mail: renewed: installed and verified" in renewed.stdout
    assert "imap: renewed: installed and verified" in renewed.stdout


def test_a_certificate_folder_that_is_a_symlink_is_refused_not_written_through(tmp_path: Path) -> None:
    """``certs/mail`` as a link to a folder elsewhere: renew wrote versions and ``current`` through it, then
    stopped the whole pass with an internal error (fsync of a linked folder), and later runs used it."""
    config = two_certificates(tmp_path)
    home = tmp_path / "state" / "certs" / "mail"
    elsewhere = tmp_path / "elsewhere"
    home.rename(elsewhere)
    home.symlink_to(elsewhere)
    before = sorted(p.name for p in (elsewhere / "versions").iterdir())

    result = run_cli(config, "renew", "--force")

    assert result.returncode == 1, result.stdout + result.stderr
    assert_no_traceback(result)
    assert f"mail: failed: {home}: cannot write the new version: is a symbolic link, which certkeeper never " \
           "follows inside its state directory" in result.stdout
    assert "imap: renewed: installed and verified" in result.stdout
    assert sorted(p.name for p in (elsewhere / "versions").iterdir()) == before  # nothing written through it


def test_a_version_json_naming_files_outside_its_folder_is_not_believed(tmp_path: Path) -> None:
    """``"subdir": "/elsewhere"`` made the pass judge copies outside the version while ``current/`` had lost its
    key: "not-due".  Only a key family's folder is one."""
    config = two_certificates(tmp_path)
    folder = current_folder(tmp_path, "mail")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for pem in folder.glob("*.pem"):
        (elsewhere / pem.name).write_bytes(pem.read_bytes())
    meta = json.loads((folder / "version.json").read_text())
    meta["pairs"][0]["subdir"] = str(elsewhere)
    (folder / "version.json").write_text(json.dumps(meta))
    (folder / "privkey.pem").unlink()

    result = run_cli(config, "renew")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"a pair's folder is {str(elsewhere)!r}, not one of ecdsa, rsa" in result.stderr
    assert "mail: renewed: installed and verified" in result.stdout
    assert (tmp_path / "state" / "certs" / "mail" / "current" / "privkey.pem").is_file()


def test_status_shows_a_damaged_certificate_beside_the_others(tmp_path: Path) -> None:
    """``current`` linked to /etc blanked ``status`` (and ``status --json``) for every certificate; a version
    holding a link was refused by ``rollback`` even to the good ones; ``--to`` 300 characters long was an
    ENAMETOOLONG traceback."""
    config = two_certificates(tmp_path)
    renewed = run_cli(config, "renew", "--force", "imap")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    newest = current_folder(tmp_path, "imap")
    (newest / "version.json").unlink()
    (newest / "version.json").symlink_to("/etc/passwd")
    mail_current = tmp_path / "state" / "certs" / "mail" / "current"
    mail_current.unlink()
    mail_current.symlink_to("/etc")

    text = run_cli(config, "status")
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"nothing usable installed: {mail_current}: points to '/etc', not to a folder in versions/" in text.stdout
    assert "imap  [ecdsa-p256]" in text.stdout and "mail  [ecdsa-p256]" in text.stdout

    rollback = run_cli(config, "rollback", "imap")  # to the version before, which is intact
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert "imap: now serving" in rollback.stdout

    long = run_cli(config, "rollback", "imap", "--to", "x" * 300)
    assert long.returncode != 0
    assert_no_traceback(long)
    assert "certificate 'imap' has no version 'xxx" in long.stdout + long.stderr


def test_a_damaged_schema_version_is_named_with_the_file_by_every_command(tmp_path: Path) -> None:
    config = two_certificates(tmp_path)
    database = tmp_path / "state" / "state.db"
    for value in ("-1", "five", "0"):
        tamper(tmp_path, "UPDATE meta SET value = ? WHERE key = 'schema_version'", value)
        for result in (run_cli(config, "status"), run_cli(config, "renew")):
            assert result.returncode == EX_IOERR, result.stdout + result.stderr
            assert_no_traceback(result)
            assert f"{database}: the state store's schema version (meta table, key schema_version) is " \
                   f"'{value}', which no certkeeper writes; restore state.db from a backup" in result.stderr
    assert len(versions(tmp_path, "mail")) == 1  # nothing renewed or removed meanwhile
