"""The daemon's footprint with 100 certificates: resident memory after an hour of simulated time, and CPU idle.

Run: ``python tests/bench/bench_daemon.py [--count 100] [--idle 30]``.

1. Memory: a :class:`certkeeper.daemon.Daemon` in this process with an injected clock; its pass (what each
   wake-up runs) is driven once per simulated minute for an hour (60 passes over ``--count`` certificates, none
   due).  Resident memory (VmRSS) after the first pass is the baseline; the figure after the hour, and the ratio,
   show whether passes leak.
2. Idle CPU: the real ``certkeeper daemon`` as a process with nothing due, left alone for ``--idle`` seconds
   after its first pass; utime + stime from ``/proc/<pid>/stat`` over that window, against the wall time.
   Idle means idle: the daemon sleeps until the next decision asks for it, it does not poll.

The certificates come from the internal CA (quick to set up) with a 30-day lifetime, issued once beforehand.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's certkeeper and tests/

from certkeeper import pki  # noqa: E402
from certkeeper.config import load_config  # noqa: E402
from certkeeper.daemon import Daemon  # noqa: E402
from tests.bench.bench_renew_none_due import write_certkeeper  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_config(directory: Path, count: int) -> Path:
    """``count`` certificates of 30 days, all issued: a daemon with nothing due for days."""
    return write_certkeeper(directory, count, lifetime="30d")


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = "no VmRSS"
    raise RuntimeError(msg)


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 (utime, stime) in clock ticks; the command name (field 2) may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class SimulatedClock:
    def __init__(self) -> None:
        self.now = pki.now_utc()

    def __call__(self) -> datetime:
        return self.now


def simulated_hour(config_path: Path) -> tuple[int, int, float]:
    """RSS (KiB) after the first pass and after 60 passes one simulated minute apart; seconds per pass."""
    clock = SimulatedClock()
    daemon = Daemon(config_path, load_config(config_path), clock=clock)
    daemon._pass()  # the job each wake-up runs, driven here without the scheduler's timing
    first = rss_kib()
    started = time.perf_counter()
    for _ in range(60):
        clock.now += timedelta(minutes=1)
        daemon._pass()
    per_pass = (time.perf_counter() - started) / 60
    after = rss_kib()
    daemon.app.close()
    return first, after, per_pass


def idle_cpu(config_path: Path, seconds: float) -> tuple[float, int]:
    """CPU seconds used by the real daemon process over ``seconds`` with nothing due, and its RSS (KiB)."""
    log_path = config_path.parent / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "certkeeper", "-c", str(config_path), "daemon"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "certkeeper daemon started" not in log_path.read_text():
            if time.monotonic() > deadline or process.poll() is not None:
                msg = f"the daemon did not start:\n{log_path.read_text()}"
                raise SystemExit(msg)
            time.sleep(0.1)
        time.sleep(3)  # let the first pass finish
        before = cpu_seconds(process.pid)
        time.sleep(seconds)
        used = cpu_seconds(process.pid) - before
        return used, rss_kib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as scratch:
        config = write_config(Path(scratch), args.count)
        first, after, per_pass = simulated_hour(config)
        used, daemon_rss = idle_cpu(config, args.idle)
    print(f"daemon with {args.count} certificates, none due:")
    print(f"  RSS after the first pass        {first / 1024:7.1f} MiB   (in-process, injected clock)")
    print(f"  RSS after 1 h simulated (60 passes, {per_pass * 1000:.0f} ms each)"
          f" {after / 1024:7.1f} MiB   ratio {after / first:.3f}x the first pass")
    print(f"  RSS of the daemon process idle   {daemon_rss / 1024:7.1f} MiB")
    print(f"  CPU idle: {used:.3f} s over {args.idle:.0f} s = {100 * used / args.idle:.3f} % of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
