"""The systemd units in deploy/ pass ``systemd-analyze verify`` and score 3.0 or better in its ``security``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("certkeeper.service", "certkeeper-renew.service", "certkeeper-renew.timer")
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


def verify(directory: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on unit files; --man=no: the man page named in Documentation= is not installed."""
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", "--man=no", *(f"./{u}" for u in units)], cwd=directory,
                          capture_output=True, text=True, timeout=60, check=False)


def copies_with_existing_binary(tmp_path: Path) -> Path:
    """The units as shipped, except that ExecStart runs /bin/true: verify insists the program exists."""
    for unit in UNITS:
        text = (DEPLOY / unit).read_text()
        (tmp_path / unit).write_text(text.replace("ExecStart=/usr/local/bin/certkeeper", "ExecStart=/bin/true"))
    return tmp_path


def test_the_deploy_units_verify_without_a_single_complaint(tmp_path: Path) -> None:
    result = verify(copies_with_existing_binary(tmp_path), list(UNITS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_the_check_would_see_a_misspelled_setting(tmp_path: Path) -> None:
    directory = copies_with_existing_binary(tmp_path)
    unit = directory / "certkeeper.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSytem=yes"))
    result = verify(directory, ["certkeeper.service"])
    assert "Unknown key 'ProtectSytem'" in result.stdout + result.stderr


def exposure(unit: str) -> float:
    """The overall exposure ``systemd-analyze security --offline`` gives the shipped unit (0 best, 10 worst)."""
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", f"./{unit}"], cwd=DEPLOY,
                            capture_output=True, text=True, timeout=60, check=False)
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.parametrize("unit", ["certkeeper.service", "certkeeper-renew.service"])
def test_the_service_units_score_3_or_better_in_systemd_analyze_security(unit: str) -> None:
    """certbot's unit scores 9.4; these were 4.5 and 7.1 before issue 22."""
    assert exposure(unit) <= 3.0


def test_the_units_let_a_certificate_group_reach_its_key() -> None:
    for unit in ("certkeeper.service", "certkeeper-renew.service"):
        text = (DEPLOY / unit).read_text()
        assert "StateDirectoryMode=0711" in text and "UMask=0077" in text
