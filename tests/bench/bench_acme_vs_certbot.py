"""Wall time of certkeeper's ACME issuer against certbot, same Pebble, same challenge (http-01 standalone).

Run: ``python tests/bench/bench_acme_vs_certbot.py [--certbot /tmp/certbot-venv/bin/certbot] [--count 20]``.
certbot lives in its own virtualenv (``python3 -m venv /tmp/certbot-venv && /tmp/certbot-venv/bin/pip install
certbot``).  Both sides start from an empty state (account registration included in the first certificate).

certbot issues one certificate per run, one run after another (its standalone listener and its lock allow no
more).  certkeeper issues through :class:`certkeeper.issuers.acme.AcmeIssuer` from a ThreadPoolExecutor, the
way the daemon renews concurrently; the ``certkeeper renew`` command is not used, so install, reload and verify
are not in these figures.  Goals: one certificate in at most 0.5x certbot's time, twenty in at most 0.15x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from certkeeper import pki
from certkeeper.config import AcmeIssuerConfig
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.issuers.base import IssueRequest
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble


def run_certbot(certbot: Path, pebble: Pebble, work: Path, domains: list[str]) -> float:
    environment = {**os.environ, **pebble.client_env()}
    started = time.perf_counter()
    for domain in domains:
        subprocess.run(
            [str(certbot), "certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
             "--server", pebble.directory_url, "--standalone", "--http-01-port", str(pebble.http_port),
             "--http-01-address", "127.0.0.1", "--no-random-sleep-on-renew", "--key-type", "ecdsa",
             "--config-dir", str(work / "config"), "--work-dir", str(work / "work"),
             "--logs-dir", str(work / "logs"), "-d", domain],
            env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def run_certkeeper(pebble: Pebble, state: Path, domains: list[str]) -> float:
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              http_address="127.0.0.1", http_port=pebble.http_port, timeout=timedelta(seconds=120))
    started = time.perf_counter()
    issuer = AcmeIssuer(config, state)
    requests = [IssueRequest(certificate=d.split(".")[0], domains=(d,), key=pki.generate_key(KeyType.ECDSA_P256),
                             key_type=KeyType.ECDSA_P256) for d in domains]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        list(pool.map(issuer.issue, requests))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certbot", type=Path, default=Path("/tmp/certbot-venv/bin/certbot"))
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    if not args.certbot.exists():
        print(f"no certbot at {args.certbot}: python3 -m venv /tmp/certbot-venv && "
              "/tmp/certbot-venv/bin/pip install certbot", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-acme-") as scratch:
        root = Path(scratch)
        with Bind(root / "bind") as bind, Pebble(root / "pebble", bind=bind) as pebble:
            results: dict[str, tuple[float, float]] = {}
            for label, count in (("1 certificate", 1), (f"{args.count} certificates", args.count)):
                domains_a = [f"cb{label[0:2].strip()}-{i}.example.test" for i in range(count)]
                domains_b = [f"ck{label[0:2].strip()}-{i}.example.test" for i in range(count)]
                certbot_time = run_certbot(args.certbot, pebble, root / f"certbot-{count}", domains_a)
                certkeeper_time = run_certkeeper(pebble, root / f"certkeeper-{count}", domains_b)
                results[label] = (certbot_time, certkeeper_time)
    goals = {"1 certificate": 0.5}
    print(f"{'':18}{'certbot':>10}{'certkeeper':>12}{'ratio':>8}{'goal':>7}")
    for label, (certbot_time, certkeeper_time) in results.items():
        ratio = certkeeper_time / certbot_time
        goal = goals.get(label, 0.15)
        verdict = "ok" if ratio <= goal else "MISSED"
        print(f"{label:18}{certbot_time:9.2f}s{certkeeper_time:11.2f}s{ratio:8.3f}{goal:7.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
