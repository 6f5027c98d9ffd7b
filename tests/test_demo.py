"""The main job (`bash deploy/demo`) stays working: the demo completes the loop against the real test bed."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from certkeeper.testbed.demo import DemoSettings, run_demo

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_issues_installs_reloads_verifies_renews_and_mails_then_cleans_up() -> None:
    out = io.StringIO()
    # In /tmp itself: pytest's deep tmp_path would make Postfix's socket paths longer than a unix socket allows.
    summary = run_demo(DemoSettings(renewals=1, bound_seconds=150), out=out)
    text = out.getvalue()
    assert summary.completed, text
    assert summary.renewals >= 1 and summary.renewed_before_expiry == summary.renewals, text
    assert len(summary.listeners) == 8, text  # 3 Postfix + 5 Dovecot listeners, each serving both key types
    assert all(len(served) == 2 for served in summary.listeners.values()), text
    assert "[certkeeper] INFO mail renewed" in summary.mails, text
    for step in ("Pebble issued a ecdsa-p256 certificate", "installed version", "Postfix reloaded",
                 "Dovecot reloaded", "verified from the outside", "alert mail landed in the sink",
                 "summary: the loop completed"):
        assert step in text
    assert summary.directory is not None and not summary.directory.exists()  # everything stopped and removed


def test_the_demo_command_is_wired_and_documented() -> None:
    script = ROOT / "deploy" / "demo"
    assert script.stat().st_mode & 0o111
    assert "certkeeper demo" in script.read_text()
    assert "bash deploy/demo" in (ROOT / "README.md").read_text()
    result = subprocess.run([sys.executable, "-m", "certkeeper", "demo", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "--renewals" in result.stdout
