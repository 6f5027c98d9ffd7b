"""Issue 23, row 5: one daemon pass with nothing due over ``--count`` certificates, against its floor.

Run: ``python tests/bench/bench_daemon_pass.py [--count 1000] [--rounds 10]``.

In this process, after the daemon's first pass (what it does once at start): the daemon's job
(:meth:`certkeeper.daemon.Daemon._pass`: the pass, the wake computed from the pass's outcomes, the job
rescheduled), one simulated minute apart; and the floor, parse every installed ``cert.pem`` and decide it
(:func:`certkeeper.renewal.policy.decide_renewal`), nothing else.  Alternately, ``--rounds`` times; printed: min
and median of both, the ratio, and the goal (<= 0.1 s for the whole job).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certkeeper.config import load_config  # noqa: E402
from certkeeper.daemon import Daemon  # noqa: E402
from certkeeper.model import RenewBefore  # noqa: E402
from certkeeper.renewal.policy import History, Installed, Wanted, decide_renewal  # noqa: E402
from tests.bench.bench_daemon import SimulatedClock, write_config  # noqa: E402
from tests.bench.rounds import interleave, report  # noqa: E402


def floor(certs: Path, clock: SimulatedClock) -> float:
    started = time.perf_counter()
    now = clock()
    renew_before = RenewBefore.parse("1/3")
    for home in sorted(certs.iterdir()):
        certificate = x509.load_pem_x509_certificate((home / "current" / "cert.pem").read_bytes())
        names = tuple(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                      .get_values_for_type(x509.DNSName))
        installed = Installed("", certificate.not_valid_before_utc, certificate.not_valid_after_utc, names,
                              ("ecdsa-p256",))
        decision = decide_renewal(installed, Wanted(home.name, names, ("ecdsa-p256",), renew_before), History(),
                                  now=now, check_interval=timedelta(hours=12))
        assert not decision.due
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-pass-") as scratch:
        config_path = write_config(Path(scratch), args.count)
        clock = SimulatedClock()
        daemon = Daemon(config_path, load_config(config_path), clock=clock)
        wakes: list[datetime] = []
        schedule = daemon._schedule_pass

        def remember(when: datetime) -> None:  # the scheduler is not started here: the wake is read off the call
            wakes.append(when)
            schedule(when)

        daemon._schedule_pass = remember  # type: ignore[method-assign]
        daemon._pass()  # the first pass at start: every installed file hashed once

        def job(_: int) -> float:
            clock.now += timedelta(minutes=1)
            started = time.perf_counter()
            daemon._pass()
            elapsed = time.perf_counter() - started
            assert wakes[-1] > clock.now
            return elapsed

        certs = Path(scratch) / "state" / "certs"
        floor(certs, clock)  # warm-up, as the daemon's first pass was
        times = interleave(args.rounds, {"floor": lambda _: floor(certs, clock), "certkeeper": job})
        daemon.app.close()
    report(f"daemon pass, {args.count} certificates, none due (in-process; the job: pass + next wake)", times)
    best = min(times["certkeeper"])
    print(f"  goal <= 0.1 s for the whole job: {'met' if best <= 0.1 else 'NOT met'} (min {best:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
