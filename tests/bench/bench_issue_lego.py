"""Issuance wall time: ``certkeeper renew`` against a floor, lego 4.35 (Go) and certbot, on the same Pebble 2.10.

Run: ``python -m tests.bench.bench_issue_lego [--counts 1 20] [--rounds 3] [--floor-only] [--certbot PATH]``.
lego comes from the test bed's cache (``python3 -m certkeeper.testbed.install``); certbot is optional (its own
virtualenv: ``python3 -m venv /tmp/certbot-venv && /tmp/certbot-venv/bin/pip install certbot``).

Every side issues N certificates (one name, one ECDSA P-256 key each) by http-01 on Pebble's validation port,
from an empty state (account registration included).  lego and certbot issue one certificate per run, one run
after another (their standalone listeners and locks allow no more).  certkeeper runs its real command line once,
``python -m certkeeper -c CONFIG renew``, with N ``[certificates.*]`` entries renewed concurrently (the default
``concurrency`` of 4).  The floor (issue 23) is the least a Python client does: one process
(:mod:`tests.bench.acme_floor`; interpreter start and the ``acme`` import included, as for certkeeper), the
``acme`` library's messages over one account, one order after another,
polling every 5 ms; no config, no store, no install.

The sides run in interleaved rounds (:mod:`tests.bench.rounds`): min and median of each, and the ratios.
Pebble runs with nonce rejection off (every client pays the same), its validation without sleeps and without
``Retry-After`` (certkeeper honours it; the floor would not).
Goals: certkeeper at most 1.3x the floor (issue 23 row 1; issue 15 asks 1.5x) and at most 0.2x lego for 20.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's certkeeper and tests/

from certkeeper.testbed.bind import Bind  # noqa: E402
from certkeeper.testbed.install import lego_binary  # noqa: E402
from certkeeper.testbed.pebble import Pebble  # noqa: E402
from tests.bench.bench_acme_vs_certbot import run_certbot, run_certkeeper  # noqa: E402
from tests.bench.rounds import Side, interleave, ratios, report  # noqa: E402


def run_lego(lego: Path, pebble: Pebble, work: Path, domains: Sequence[str]) -> float:
    environment = {**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.ca_file)}
    started = time.perf_counter()
    for domain in domains:
        subprocess.run([str(lego), "--server", pebble.directory_url, "--accept-tos", "--email",
                        "bench@example.test", "--path", str(work), "--key-type", "ec256", "--http",
                        "--http.port", f"127.0.0.1:{pebble.http_port}", "--domains", domain, "run"],
                       env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def run_floor(pebble: Pebble, domains: Sequence[str]) -> float:
    """The floor as a process, timed from here like certkeeper's."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tests.bench.acme_floor", pebble.directory_url,
                    str(pebble.ca_file), str(pebble.http_port), *domains], check=True, timeout=600,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    return time.perf_counter() - started


def make_sides(pebble: Pebble, root: Path, count: int, lego: Path | None, certbot: Path | None,
               before: str | None = None) -> dict[str, Side]:
    """Each side issues ``count`` certificates for names of its own, fresh every round."""
    def names(side: str, round_number: int) -> list[str]:
        return [f"{side}{count}-{round_number}-{i}.example.test" for i in range(count)]

    def floor(r: int) -> float:
        return run_floor(pebble, names("floor", r))

    def certkeeper(r: int) -> float:
        return run_certkeeper(pebble, root / f"ck-{count}-{r}", names("ck", r))

    sides: dict[str, Side] = {"floor": floor, "certkeeper": certkeeper}
    if before is not None:  # another certkeeper (e.g. main's) in the same rounds
        sides["before"] = lambda r: run_certkeeper(pebble, root / f"before-{count}-{r}", names("bf", r), before)
    if lego is not None:
        sides["lego"] = lambda r: run_lego(lego, pebble, root / f"lego-{count}-{r}", names("lego", r))
    if certbot is not None:
        sides["certbot"] = lambda r: run_certbot(certbot, pebble, root / f"certbot-{count}-{r}", names("cb", r))
    return sides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--certbot", type=Path, default=Path("/tmp/certbot-venv/bin/certbot"))
    parser.add_argument("--floor-only", action="store_true", help="only certkeeper and the floor (quick iterations)")
    parser.add_argument("--before", help="a Python whose `-m certkeeper` is measured too, as side 'before'")
    args = parser.parse_args()
    lego = lego_binary()
    if not lego.is_file() and not args.floor_only:
        print(f"no lego at {lego}: python3 -m certkeeper.testbed.install", file=sys.stderr)
        return 2
    certbot = args.certbot if args.certbot.exists() and not args.floor_only else None
    with tempfile.TemporaryDirectory(prefix="bench-lego-") as scratch:
        root = Path(scratch)
        with Bind(root / "bind") as bind, Pebble(root / "pebble", bind=bind, nonce_reject_percent=0) as pebble:
            for count in args.counts:
                sides = make_sides(pebble, root, count, None if args.floor_only else lego, certbot, args.before)
                results = interleave(args.rounds, sides)
                print(json.dumps({"certificates": count, **{k: [round(v, 3) for v in t] for k, t in results.items()}}),
                      file=sys.stderr)
                report(f"{count} certificate(s), http-01 on Pebble", results, goal=1.3)
                if "lego" in results:
                    low, middle = ratios(results, "certkeeper", "lego")
                    verdict = ("ok" if low <= 0.2 else "MISSED") if count == 20 else "no goal"
                    print(f"  certkeeper/lego: min {low:.3f}x  median {middle:.3f}x  ({verdict}; goal <= 0.2x for 20)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
