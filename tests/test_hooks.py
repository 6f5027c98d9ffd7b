"""Reload hooks: no shell, a clean environment, output captured, failures and timeouts reported."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from certkeeper.config.resolve import default_hook_dirs, resolve_hook
from certkeeper.errors import ConfigError, HookFailed
from certkeeper.renewal.hooks import HookContext, run_hook

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = HookContext(name="mail", domains=("mail.example.test", "smtp.example.test"), version="20261129T000000Z",
                      cert_dir=Path("/var/lib/certkeeper/certs/mail/current"), extra_env={"POSTFIX_CONFIG_DIR": "/x"})


def script(tmp_path: Path, body: str, name: str = "hook") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_the_hook_sees_exactly_the_documented_environment(tmp_path: Path) -> None:
    os.environ["CERTKEEPER_LEAK_CHECK"] = "secret"
    try:
        run = run_hook(script(tmp_path, "env | sort\n"), CONTEXT, timeout=10)
    finally:
        del os.environ["CERTKEEPER_LEAK_CHECK"]
    env = dict(line.split("=", 1) for line in run.output.splitlines() if "=" in line)
    assert "CERTKEEPER_LEAK_CHECK" not in env
    assert env["CERTKEEPER_NAME"] == "mail"
    assert env["CERTKEEPER_DOMAINS"] == "mail.example.test smtp.example.test"
    assert env["CERTKEEPER_FULLCHAIN"] == "/var/lib/certkeeper/certs/mail/current/fullchain.pem"
    assert env["CERTKEEPER_PRIVKEY"] == "/var/lib/certkeeper/certs/mail/current/privkey.pem"
    assert env["CERTKEEPER_COMBINED"] == "/var/lib/certkeeper/certs/mail/current/combined.pem"
    assert env["RENEWED_LINEAGE"] == "/var/lib/certkeeper/certs/mail/current"
    assert env["RENEWED_DOMAINS"] == env["CERTKEEPER_DOMAINS"]
    assert env["POSTFIX_CONFIG_DIR"] == "/x"


def test_no_shell_interprets_the_path(tmp_path: Path) -> None:
    odd = script(tmp_path, "echo ran\n", name="re;load $(touch pwned)")
    assert run_hook(odd, CONTEXT, timeout=10).output == "ran\n"
    assert not (Path("/") / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_a_non_zero_exit_is_a_failure_with_the_hooks_words(tmp_path: Path) -> None:
    hook = script(tmp_path, "echo 'postfix/postfix-script: fatal: the Postfix mail system is not running' >&2\n"
                            "exit 1\n")
    with pytest.raises(HookFailed, match=r"reload hook .*hook exited with status 1: .*not running") as raised:
        run_hook(hook, CONTEXT, timeout=10)
    assert raised.value.exit_status == 1


def test_a_hook_whose_interpreter_is_missing_names_the_interpreter_not_the_hook(tmp_path: Path) -> None:
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"#!/bin/sh\r\nexit 0\r\n")
    crlf.chmod(0o755)
    with pytest.raises(HookFailed, match=r"could not be started: its interpreter '/bin/sh\\r' \(the #! line\) does "
                                         r"not exist; the file has Windows line endings \(CRLF\): convert it"):
        run_hook(crlf, CONTEXT, timeout=10)
    gone = tmp_path / "gone"
    gone.write_text("#!/nonexistent/python3 -u\n")
    gone.chmod(0o755)
    with pytest.raises(HookFailed, match=r"its interpreter '/nonexistent/python3' \(the #! line\) does not exist$"):
        run_hook(gone, CONTEXT, timeout=10)


def test_an_absolute_hook_path_says_what_is_there_instead_of_a_program(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "adir").mkdir()
    for name, says in (("dangling", f"a symbolic link to {tmp_path / 'missing'}, which does not exist"),
                       ("adir", "which is a folder, not a program"), ("absent", "which does not exist")):
        with pytest.raises(ConfigError, match=f'c.toml: reload: found hook "{tmp_path / name}", {says}, expected'):
            resolve_hook(str(tmp_path / name), None, Path("c.toml"))


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child-alive"
    hook = script(tmp_path, f"(sleep 3; touch {marker}) &\necho started\nsleep 30\n")
    started = time.monotonic()
    with pytest.raises(HookFailed, match=r"did not finish within 0.5 s and was killed: started") as raised:
        run_hook(hook, CONTEXT, timeout=0.5)
    assert raised.value.timed_out
    assert time.monotonic() - started < 5
    time.sleep(3.5)
    assert not marker.exists()


def test_shipped_hooks_are_executable_and_documented() -> None:
    readme = (ROOT / "hooks" / "README.md").read_text()
    hooks = [p for p in (ROOT / "hooks").iterdir() if p.name != "README.md"]
    assert {p.name for p in hooks} >= {"postfix", "dovecot", "exim", "systemd", "haproxy", "nginx"}
    for hook in hooks:
        assert hook.stat().st_mode & stat.S_IXUSR, hook
        assert f"| `{hook.name}` |" in readme, f"{hook.name} missing from hooks/README.md"


def test_names_resolve_to_shipped_hooks_and_unknown_names_are_config_errors(tmp_path: Path) -> None:
    assert ROOT / "hooks" in default_hook_dirs()
    shipped = resolve_hook("postfix", None, Path("c.toml"))
    assert shipped.name == "postfix" and os.access(shipped, os.X_OK)
    with pytest.raises(ConfigError, match='c.toml: reload: found hook "nope", which is not in'):
        resolve_hook("nope", tmp_path, Path("c.toml"))
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="which is not executable.*chmod 755"):
        resolve_hook(str(plain), None, Path("c.toml"))
