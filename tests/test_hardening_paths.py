"""A hostile local user gets nowhere through paths root trusts: the state dir, copy_to folders, hooks, secrets.

The suite runs as root; the attacker's steps run as ``nobody`` through ``setpriv``, as in issue 22.
"""

from __future__ import annotations

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

from certkeeper.errors import EX_CONFIG, EX_NOPERM
from tests.lifecycle_helpers import hook_script, run_cli, write_config

NOBODY = pwd.getpwnam("nobody")


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", *argv],
                   check=True, capture_output=True, timeout=30)


@pytest.fixture
def nobodys_dir() -> Iterator[Path]:
    """A folder ``nobody`` owns, in /tmp (sticky, so its parent is not the problem); pytest's own is 0700 root."""
    folder = Path(tempfile.mkdtemp(prefix="ck-harden-nobody-", dir="/tmp"))
    os.chown(folder, NOBODY.pw_uid, NOBODY.pw_gid)
    yield folder
    shutil.rmtree(folder)


def certificate(reload: Path | None = None, extra: str = "") -> str:
    hooks = f'reload = ["{reload}"]' if reload else ""
    return f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        {hooks}
        {extra}
        """


def with_state_dir(config_path: Path, old: Path, new: Path) -> None:
    config_path.write_text(config_path.read_text().replace(f'state_dir = "{old}"', f'state_dir = "{new}"'))


def test_a_lock_symlink_planted_by_nobody_never_truncates_its_target(tmp_path: Path, nobodys_dir: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's precious file\n")
    state = nobodys_dir / "state"
    as_nobody("mkdir", "-p", str(state / "locks"))
    as_nobody("ln", "-s", str(victim), str(state / "locks" / "mail.lock"))
    config = write_config(tmp_path, certificate())
    with_state_dir(config.path, tmp_path / "state", state)
    result = run_cli(config, "renew")
    assert result.returncode == EX_NOPERM, result.stdout + result.stderr
    assert victim.read_text() == "root's precious file\n"
    assert f"state_dir {state}/locks belongs to a user other than root" in result.stderr
    assert "(owner nobody, mode 0755)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_state_dir_below_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename state/ away and put their own in its place
    config = write_config(tmp_path, certificate())
    with_state_dir(config.path, tmp_path / "state", shared / "state")
    result = run_cli(config, "renew")
    assert result.returncode == EX_NOPERM
    assert f"state_dir {shared} is writable by others than root and the service user (owner root, mode 0777)" \
        in result.stderr
    assert not (shared / "state" / "certs").exists()


def test_a_symlink_where_the_lock_should_be_is_refused_not_followed(tmp_path: Path) -> None:
    """O_NOFOLLOW behind the folder checks: a link that got there anyway (an old root mistake, a race)."""
    victim = tmp_path / "victim"
    victim.write_text("root's precious file\n")
    config = write_config(tmp_path, certificate())
    (tmp_path / "state" / "locks").mkdir(parents=True)
    (tmp_path / "state" / "locks" / "mail.lock").symlink_to(victim)
    result = run_cli(config, "renew")
    assert result.returncode != 0
    assert victim.read_text() == "root's precious file\n"
    assert f"{tmp_path}/state/locks/mail.lock is a symbolic link, which certkeeper never follows" \
        in result.stdout + result.stderr


def test_a_hook_in_a_folder_nobody_owns_is_never_run(tmp_path: Path, nobodys_dir: Path) -> None:
    hooks = nobodys_dir / "hooks"
    as_nobody("mkdir", str(hooks))
    hook = hook_script(hooks, "reload")  # root wrote it, but nobody can replace it through the folder
    config = write_config(tmp_path, certificate(reload=hook))
    result = run_cli(config, "renew")
    # That certificate fails before anything is flipped (exit 1, the others of the pass go on: crash-only, as
    # tests/test_recovery_reload.py holds); config check calls it the configuration error it is (below).
    assert result.returncode == 1, result.stdout + result.stderr
    assert f'certificates.mail.reload: found hook "{hook}", but {hooks} belongs to a user other than root and ' \
           "the service user (owner nobody" in result.stderr
    assert not (hooks / "runs.log").exists()
    check = run_cli(config, "config", "check")
    assert check.returncode == EX_CONFIG and f"{hooks} belongs to a user other than root" in check.stderr


def test_a_group_writable_hook_is_never_run(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    os.chown(hook, 0, NOBODY.pw_gid)
    hook.chmod(0o775)
    config = write_config(tmp_path, certificate(reload=hook))
    result = run_cli(config, "renew")
    assert result.returncode == 1  # that certificate fails before the flip, as above
    assert f'found hook "{hook}" with mode 0775, writable by others' in result.stderr
    assert f"chmod go-w {hook}" in result.stderr
    assert not (tmp_path / "runs.log").exists()


def test_a_copy_to_folder_nobody_owns_gets_no_copy(tmp_path: Path, nobodys_dir: Path) -> None:
    config = write_config(tmp_path, certificate(extra=f'copy_to = {{ combined = "{nobodys_dir}/mail.pem" }}'))
    result = run_cli(config, "renew")
    assert result.returncode != 0
    assert f"copy_to.combined folder {nobodys_dir} belongs to a user other than root" in result.stdout + result.stderr
    assert not (nobodys_dir / "mail.pem").exists()
    assert not (tmp_path / "state" / "certs" / "mail" / "current").exists()  # refused before ordering


@pytest.mark.parametrize("kind", ["named pipe", "folder", "folder taking no file"])
def test_a_copy_to_that_cannot_take_a_file_fails_before_anything_is_ordered(tmp_path: Path, kind: str) -> None:
    """A ``copy_to`` of /dev/null renamed the key over the device node every program writes to (a named pipe
    here stands for it: the test must not break the host's /dev/null); /proc takes no file at all."""
    if kind == "named pipe":
        destination = tmp_path / "device"
        os.mkfifo(destination)
        says = f"copy_to.combined: {destination}: is a named pipe, which certkeeper never replaces (name a file)"
    elif kind == "folder":
        destination = tmp_path / "a-folder"
        destination.mkdir()
        says = f"copy_to.combined: {destination}: is a folder, which certkeeper never replaces (name a file)"
    else:
        destination = Path("/proc/certkeeper-test/mail.pem")
        says = "copy_to.combined: /proc takes no new file (No such file or directory)"
    config = write_config(tmp_path, certificate(extra=f'copy_to = {{ combined = "{destination}" }}'))

    result = run_cli(config, "renew")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"mail: failed: certificate 'mail': not installed: {says}" in result.stdout
    assert not (tmp_path / "state" / "certs" / "mail" / "current").exists()  # refused before ordering
    assert kind != "named pipe" or stat.S_ISFIFO(destination.lstat().st_mode)


def test_metrics_output_to_something_that_is_no_file_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, certificate())
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    result = run_cli(config, "metrics", "-o", str(pipe))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"{pipe}" in result.stderr and "is a named pipe, which certkeeper never replaces" in result.stderr
    assert stat.S_ISFIFO(pipe.lstat().st_mode)


def test_a_passphrase_file_others_can_write_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, certificate())
    (tmp_path / "ca.pass").chmod(0o666)
    result = run_cli(config, "renew")
    assert result.returncode != 0
    assert f"issuers.internal.passphrase_file {tmp_path / 'ca.pass'} is writable by others" \
        in result.stdout + result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660 | 0o002])
def test_a_fleet_key_file_other_users_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    from certkeeper.errors import UnsafePath
    from certkeeper.store.fleet import FleetKey

    key_file = tmp_path / "fleet.key"
    key_file.write_text("a fleet key of more than sixteen bytes\n")
    key_file.chmod(mode)
    with pytest.raises(UnsafePath, match=rf"fleet_key_file {key_file} is (readable by every user|writable by "
                                         rf"others).*\(owner root, mode 0{mode:o}\)"):
        FleetKey.from_file(key_file)
    key_file.chmod(0o640)
    FleetKey.from_file(key_file)  # 0640 root:<service group> is fine


def test_rows_sealed_before_the_fleet_had_a_salt_still_open() -> None:
    from certkeeper.store.fleet import FleetKey

    secret = b"a fleet key of more than sixteen bytes"
    legacy = FleetKey(secret)
    assert legacy.key_version == 0
    sealed = legacy.seal("mail", 1, "ecdsa-p256", b"key material")
    salted = FleetKey(secret, {1: b"s" * 32})
    assert salted.key_version == 1
    assert salted.open("mail", 1, "ecdsa-p256", sealed, 0) == b"key material"
    with pytest.raises(Exception, match="does not decrypt"):
        salted.open("mail", 1, "ecdsa-p256", sealed, 1)


def test_a_copy_to_folder_reached_through_a_link_takes_its_copy_every_time(tmp_path: Path) -> None:
    """/etc/ssl/private as a link to the real folder: the copy was written, then its folder's fsync refused the
    link, so every run failed "retried" while config check said OK."""
    real = tmp_path / "real-private"
    real.mkdir(mode=0o755)
    linked = tmp_path / "private"
    linked.symlink_to(real)
    config = write_config(tmp_path, certificate(extra=f'copy_to = {{ combined = "{linked}/mail.pem" }}'))
    for _ in range(2):
        result = run_cli(config, "renew", "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "mail: renewed: installed and verified" in result.stdout
    assert (real / "mail.pem").read_bytes() == \
        (tmp_path / "state" / "certs" / "mail" / "current" / "combined.pem").read_bytes()


def test_doctor_refuses_a_named_pipe_as_a_daemons_file_and_takes_a_relative_folder(tmp_path: Path) -> None:
    """A named pipe named by smtpd_tls_cert_file hung doctor forever; a relative --postfix-config was read from /
    (the folder postconf runs in)."""
    postfix = tmp_path / "pf"
    postfix.mkdir()
    (postfix / "master.cf").write_text("")
    pipe = postfix / "cert.pem"
    os.mkfifo(pipe)
    (postfix / "main.cf").write_text(f"smtpd_tls_cert_file = {pipe}\nsmtpd_tls_key_file = {pipe}\n")
    done = subprocess.run([sys.executable, "-m", "certkeeper", "-c", "/nonexistent/certkeeper.toml", "doctor",
                           "--postfix-config", "pf"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Traceback" not in done.stdout + done.stderr
    assert f"cannot read {pipe}: is a named pipe, not a file" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 2
