"""Issue 23, row 4: ``certkeeper renew`` with ``--count`` certificates and none due, against its floor.

Run: ``python tests/bench/bench_renew_floor.py [--count 1000] [--rounds 5]``.

The floor is the bare work of the pass, as a process too: parse every installed ``cert.pem`` (through the
``current`` link) with ``cryptography`` and decide it with :func:`certkeeper.renewal.policy.decide_renewal`, with
no configuration, no store, no locks and no checks of the installed files.  certkeeper runs its real command
(``certkeeper -c ... renew --quiet``), which also reads the configuration, the state store and checks each
installed file against ``version.json``.  Both run once to warm up (byte code, page cache), then alternately,
``--rounds`` times; printed: min and median of each and the ratio (goal <= 1.5x).

The certificates come from the internal CA with a 90-day lifetime, issued once beforehand (a minute for 1,000).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_renew_none_due import ENVIRONMENT, certkeeper_command, write_certkeeper  # noqa: E402
from tests.bench.rounds import interleave, report  # noqa: E402

FLOOR = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from certkeeper.model import RenewBefore
from certkeeper.renewal.policy import History, Installed, Wanted, decide_renewal

now = datetime.now(UTC)
due = 0
for home in sorted(Path(sys.argv[1]).iterdir()):
    certificate = x509.load_pem_x509_certificate((home / "current" / "cert.pem").read_bytes())
    names = tuple(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName))
    installed = Installed("", certificate.not_valid_before_utc, certificate.not_valid_after_utc, names, ("ecdsa-p256",))
    wanted = Wanted(home.name, names, ("ecdsa-p256",), RenewBefore.parse("1/3"))
    due += decide_renewal(installed, wanted, History(), now=now, check_interval=timedelta(hours=12)).due
assert due == 0, due
"""


def timed(command: list[str], source: str | None = None) -> float:
    """Seconds of one run; ``source``: a folder holding another ``certkeeper`` package to run instead."""
    environment = {**ENVIRONMENT, "PYTHONPATH": source} if source else ENVIRONMENT
    started = time.perf_counter()
    # From /: from the checkout, ``-m certkeeper`` would find the checkout's package before PYTHONPATH's.
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment, cwd="/")
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        msg = f"{command[0]} exited {done.returncode}: {done.stdout}{done.stderr}"
        raise SystemExit(msg)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", metavar="SRC", help="also time the certkeeper package in SRC (e.g. `git archive "
                        "main certkeeper | tar -x -C SRC`), as the side 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-renew-floor-") as scratch:
        base = Path(scratch)
        config = write_certkeeper(base, args.count)
        python = certkeeper_command()[0]
        python = str(Path(python).with_name("python")) if python.endswith("certkeeper") else sys.executable
        floor = [python, "-c", FLOOR, str(base / "state" / "certs")]
        certkeeper = [*certkeeper_command(), "-c", str(config), "renew", "--quiet"]
        timed(floor)  # warm-up: byte code written, page cache filled, for both alike
        timed(certkeeper)
        sides = {"floor": lambda _: timed(floor), "certkeeper": lambda _: timed(certkeeper)}
        if args.base:  # through -m: the console script names this tree's entry point, which SRC may not have
            before = [python, "-m", "certkeeper", "-c", str(config), "renew", "--quiet"]
            timed(before, args.base)
            sides["before"] = lambda _: timed(before, args.base)
        times = interleave(args.rounds, sides)
    report(f"renew, {args.count} certificates, none due (processes, start-up included)", times, goal=1.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
