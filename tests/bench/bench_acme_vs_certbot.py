"""Wall time of ``certkeeper renew`` against certbot, same Pebble, same challenge (http-01 standalone).

Run: ``python tests/bench/bench_acme_vs_certbot.py [--certbot /tmp/certbot-venv/bin/certbot] [--count 20]``.
certbot lives in its own virtualenv (``python3 -m venv /tmp/certbot-venv && /tmp/certbot-venv/bin/pip install
certbot``).  Both sides start from an empty state (account registration included in the first certificate).

certbot issues one certificate per run, one run after another (its standalone listener and its lock allow no
more).  certkeeper runs the real command line, ``python -m certkeeper -c CONFIG renew``, once, on a config with
one and then ``--count`` ``[certificates.*]`` entries (one name, one ECDSA P-256 key each, like certbot's
``--key-type ecdsa``; no reload hooks, no endpoints): the figures are process start, issuance and install, with
the entries renewed concurrently (``concurrency`` at its default).  Goals: one certificate in at most 0.5x
certbot's time, twenty in at most 0.15x.
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


def write_certkeeper_config(path: Path, pebble: Pebble, state: Path, domains: Sequence[str]) -> Path:
    """One ACME issuer (the same Pebble, http-01 standalone on Pebble's validation port) and an entry per name."""
    lines = [
        "[certkeeper]",
        f"state_dir = {json.dumps(str(state))}",
        "",
        "[issuers.pebble]",
        'type = "acme"',
        f"directory = {json.dumps(pebble.directory_url)}",
        'challenge = "http-01"',
        'http_address = "127.0.0.1"',
        f"http_port = {pebble.http_port}",
        f"ca_bundle = {json.dumps(str(pebble.ca_file))}",
        f"trust_roots = {json.dumps(str(pebble.write_issuer_chain(path.parent / 'pebble-roots.pem')))}",
    ]
    for domain in domains:
        lines += ["", f"[certificates.{domain.split('.')[0]}]", 'issuer = "pebble"',
                  f"domains = [{json.dumps(domain)}]", 'key_types = ["ecdsa-p256"]']
    path.write_text("\n".join(lines) + "\n")
    return path


def run_certkeeper(pebble: Pebble, work: Path, domains: list[str], python: str = sys.executable) -> float:
    work.mkdir(parents=True)
    config = write_certkeeper_config(work / "certkeeper.toml", pebble, work / "state", domains)
    started = time.perf_counter()
    # Byte code written and used, as after any install (see bench_renew_none_due.ENVIRONMENT).
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # Run from the work folder: from the checkout, ``-m certkeeper`` would find the checkout's package whichever
    # Python runs it (``--before`` would time this tree twice).
    done = subprocess.run([python, "-m", "certkeeper", "-c", str(config), "renew"], cwd=work,
                          capture_output=True, text=True, timeout=600, check=False, env=environment)
    elapsed = time.perf_counter() - started
    renewed = sum(1 for line in done.stdout.splitlines() if ": renewed" in line)
    if done.returncode != 0 or renewed != len(domains):
        msg = (
            f"certkeeper renew failed (exit {done.returncode}, {renewed}/{len(domains)} renewed):\n"
                         f"{done.stdout}{done.stderr}"
        )
        raise SystemExit(msg)
    return elapsed


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
                domains_a = [f"cb{count}-{i}.example.test" for i in range(count)]
                domains_b = [f"ck{count}-{i}.example.test" for i in range(count)]
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
