"""A runaway hook gets nowhere: output bounded, background children do not hold the run, keys never copied out."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.errors import HookFailed
from certkeeper.model import KeyType
from certkeeper.process import redact
from certkeeper.renewal.hooks import HookContext, run_hook
from tests.lifecycle_helpers import run_cli, write_config

CONTEXT = HookContext(name="mail", domains=("mail.example.test",), version="20261201T000000Z",
                      cert_dir=Path("/var/lib/certkeeper/certs/mail/current"))
KEY_PEM = pki.key_to_pem(pki.generate_key(KeyType.RSA_2048)).decode()
KEY_LINES = [line for line in KEY_PEM.splitlines() if "-----" not in line]


def script(tmp_path: Path, body: str, name: str = "hook") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def leftover_children(tmp_path: Path) -> Iterator[Path]:
    """Hooks write the pids of children they leave behind here; the test kills them, by pid, afterwards."""
    pids = tmp_path / "pids"
    yield pids
    for pid in pids.read_text().split() if pids.exists() else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def test_exec_yes_until_the_timeout_costs_kilobytes_not_gigabytes(tmp_path: Path) -> None:
    """`exec yes` writes gigabytes in two seconds; certkeeper keeps the last 64 KiB and its peak RSS stays put."""
    before = max_rss_bytes()
    with pytest.raises(HookFailed, match=r"did not finish within 2 s and was killed: y \| y") as raised:
        run_hook(script(tmp_path, "exec yes\n"), CONTEXT, timeout=2)
    growth = max_rss_bytes() - before
    assert raised.value.timed_out
    assert 0 < len(raised.value.output) <= 64 * 1024
    assert growth < 32 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.0f} MiB"


def test_a_setsid_child_holding_stdout_does_not_hold_the_run(tmp_path: Path, leftover_children: Path) -> None:
    """The hook exits 0 at once; its `setsid sleep 40 &` keeps stdout open.  The run ends while the child lives."""
    hook = script(tmp_path, f"setsid sleep 40 &\necho $! >> {leftover_children}\necho reloaded\nexit 0\n")
    run = run_hook(hook, CONTEXT, timeout=60)
    assert run.output == "reloaded\n"
    [pid] = map(int, leftover_children.read_text().split())
    assert alive(pid), "run_hook returned only after the child that held its stdout had exited"


def test_exit_0_with_a_background_child_is_a_success_not_a_timeout(tmp_path: Path, leftover_children: Path) -> None:
    """Judged by the hook's own exit status: a child in its process group holding the pipe changes nothing."""
    hook = script(tmp_path, f"sleep 30 &\necho $! >> {leftover_children}\necho reloaded\n")
    run = run_hook(hook, CONTEXT, timeout=5)
    assert run.output == "reloaded\n"


def test_a_failing_hook_that_prints_a_key_reports_no_key_material(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(KEY_PEM)
    hook = script(tmp_path, f"echo 'dumping the key'\ncat {key_file}\necho 'secret \"c2VjcmV0LXRzaWcta2V5LXZhbHVl\";'\n"
                            "exit 3\n")
    with pytest.raises(HookFailed, match=r"exited with status 3") as raised:
        run_hook(hook, CONTEXT, timeout=10)
    for text in (raised.value.output, str(raised.value)):
        assert "[redacted PRIVATE KEY PEM block]" in text
        assert not any(line in text for line in KEY_LINES)
        assert "c2VjcmV0LXRzaWcta2V5LXZhbHVl" not in text
    assert "dumping the key" in raised.value.output


@pytest.mark.parametrize("cut", [200, 900, len(KEY_PEM) - 40])
def test_a_key_cut_by_the_bounded_buffer_is_still_redacted(cut: int) -> None:
    """The buffer keeps the tail (BEGIN lost) or a hook died half-way (END lost): the pieces go anyway."""
    tail_kept, head_kept = f"{KEY_PEM[cut:]}after\n", f"before\n{KEY_PEM[:cut]}"
    assert redact(tail_kept) == "[redacted PRIVATE KEY PEM block]\nafter\n"
    assert redact(head_kept) == "before\n[redacted PRIVATE KEY PEM block]"
    assert redact(f"before\n{KEY_PEM[:cut]}\nafter\n") == "before\n[redacted PRIVATE KEY PEM block]\nafter\n"


def test_ordinary_hook_output_is_left_alone() -> None:
    text = ("postfix/postfix-script: refreshing the Postfix mail system\n"
            "Job for dovecot.service failed because the control process exited with error code.\n"
            "See \"systemctl status dovecot.service\" and \"journalctl -xeu dovecot.service\" for details.\n"
            "RENEWED_LINEAGE=/var/lib/certkeeper/certs/mail-relay-2026/current\n"
            "/var/lib/certkeeper/certs/mail/versions/20261201T000000Z/fullchain.pem\n")
    assert redact(text) == text


def test_a_printed_key_reaches_neither_status_json_nor_the_store_nor_alert_mail(tmp_path: Path) -> None:
    """End to end: the hook cats the installed key and fails; status --json and state.db (alerts queued) stay clean."""
    hook = script(tmp_path, 'cat "$CERTKEEPER_PRIVKEY"\nexit 1\n', name="leaky")
    config = write_config(tmp_path, textwrap.dedent(f"""
        [alerts]
        to = ["postmaster@example.test"]
        from = "certkeeper@example.test"
        smtp_host = "127.0.0.1"
        smtp_port = 9
        smtp_security = "none"

        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """))
    result = run_cli(config, "-vv", "renew")
    assert result.returncode == 1, result.stderr
    key = (tmp_path / "state" / "certs" / "mail" / "current" / "privkey.pem").read_text()
    body_lines = [line for line in key.splitlines() if "-----" not in line]
    status = run_cli(config, "status", "--json")
    assert "[redacted PRIVATE KEY PEM block]" in status.stdout
    json.loads(status.stdout)
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        stored = "\n".join(str(value) for table in ("cert_state", "renewals", "alerts")
                           for row in db.execute(f"SELECT * FROM {table}") for value in row)
    assert "[redacted PRIVATE KEY PEM block]" in stored
    for text in (result.stdout + result.stderr, status.stdout, stored):
        assert not any(line in text for line in body_lines)


def _mail_with(hook: Path) -> str:
    return textwrap.dedent(f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)


def test_a_key_a_hook_made_readable_by_all_is_given_its_mode_back_at_once(tmp_path: Path) -> None:
    """A reload hook running ``chmod 666`` on the key: it stayed 0666 for good (size and hash unchanged)."""
    hook = script(tmp_path, 'chmod 666 "$CERTKEEPER_PRIVKEY"\n', name="loosen")
    config = write_config(tmp_path, _mail_with(hook))
    result = run_cli(config, "renew")
    assert result.returncode == 0, result.stdout + result.stderr
    key = tmp_path / "state" / "certs" / "mail" / "current" / "privkey.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert f"{key.resolve()} was mode 0666, readable beyond its owner; set back to 0600" in result.stderr


def test_a_hook_that_removes_the_installed_files_fails_and_the_next_pass_installs_anew(tmp_path: Path) -> None:
    """A reload hook deleting the files it was given: "installed and verified", rc 0, with only version.json left."""
    hook = script(tmp_path, 'rm -f "$CERTKEEPER_CERT_DIR"/*.pem\n', name="remove")
    config = write_config(tmp_path, _mail_with(hook))
    result = run_cli(config, "renew")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mail: failed: after the hooks ran, " in result.stdout
    assert "privkey.pem was removed; the next pass installs a new pair (a hook must only read the files)" in \
        result.stdout
    assert "RenewalFailed name=mail" in result.stderr

    config.path.write_text(config.path.read_text().replace(f'reload = ["{hook}"]', ""))
    again = run_cli(config, "renew")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "mail: renewed: installed and verified" in again.stdout
    assert (tmp_path / "state" / "certs" / "mail" / "current" / "privkey.pem").is_file()
