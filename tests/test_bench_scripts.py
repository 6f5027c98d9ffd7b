"""The benchmarks start as tests/bench/README.md says to run them: ``python tests/bench/NAME.py --help``.

pytest collects no ``bench_*`` file, so nothing else notices a benchmark that cannot even import when run as a
script (three of them could not: ``ModuleNotFoundError: No module named 'tests'``).  Each is started the way a
user starts it, from another folder and with no ``PYTHONPATH``; the floor scripts, which the benchmarks run with
arguments, answer a bare start with their usage instead of a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name.startswith(("bench_", "sim_")))
FLOORS = sorted(p for p in BENCH.glob("*_floor.py") if not p.name.startswith("bench_"))
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def start_all(scripts: list[Path], *arguments: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every script started at once (each imports heavy libraries; one after another would take seconds each)."""
    running = {p.name: subprocess.Popen([sys.executable, str(p), *arguments], cwd="/", env=ENVIRONMENT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for p in scripts}
    done = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_there_are_benchmarks_to_start() -> None:
    assert len(SCRIPTS) >= 10
    assert {p.name for p in FLOORS} >= {"acme_floor.py", "internal_ca_floor.py"}


def test_every_benchmark_starts_as_a_script_and_prints_its_usage() -> None:
    for name, done in start_all(SCRIPTS, "--help").items():
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        assert done.stdout.startswith("usage:"), name


@pytest.mark.parametrize("floor", FLOORS, ids=lambda p: p.name)
def test_a_floor_script_started_bare_says_how_to_run_it(floor: Path) -> None:
    done = start_all([floor])[floor.name]
    assert done.returncode == 1
    assert done.stderr.startswith(f"usage: python -m tests.bench.{floor.stem} "), done.stderr
    assert "Traceback" not in done.stderr
