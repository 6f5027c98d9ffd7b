"""Issuance wall time: ``certkeeper renew`` against lego 4.35 (Go), certbot, and a floor, on the same Pebble 2.10.

Run: ``python -m tests.bench.bench_issue_lego [--counts 1 20 100] [--certbot /tmp/certbot-venv/bin/certbot]``.
lego comes from the test bed's cache (``python3 -m certkeeper.testbed.install``); certbot is optional (its own
virtualenv: ``python3 -m venv /tmp/certbot-venv && /tmp/certbot-venv/bin/pip install certbot``).

Every side issues N certificates (one name, one ECDSA P-256 key each) by http-01 on Pebble's validation port,
from an empty state (account registration included).  lego and certbot issue one certificate per run, one run
after another (their standalone listeners and locks allow no more).  certkeeper runs its real command line once,
``python -m certkeeper -c CONFIG renew``, with N ``[certificates.*]`` entries renewed concurrently (the default
``concurrency`` of 4).  The floor is the least any Python client can do: one process already running, the
``acme`` library's messages over one account, our own 50 ms polling, 4 threads; no config, no store, no install.

Pebble runs with nonce rejection off (every client pays the same) and its validation without sleeps.
Goals: certkeeper at most 0.2x lego's time for 20 certificates and at most 1.5x the floor's.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives import serialization

from certkeeper import pki
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.install import lego_binary
from certkeeper.testbed.pebble import Pebble
from tests.bench.bench_acme_vs_certbot import run_certbot, run_certkeeper

FLOOR_THREADS = 4


def run_lego(lego: Path, pebble: Pebble, work: Path, domains: Sequence[str]) -> float:
    environment = {**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.ca_file)}
    started = time.perf_counter()
    for domain in domains:
        subprocess.run([str(lego), "--server", pebble.directory_url, "--accept-tos", "--email",
                        "bench@example.test", "--path", str(work), "--key-type", "ec256", "--http",
                        "--http.port", f"127.0.0.1:{pebble.http_port}", "--domains", domain, "run"],
                       env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


class _Tokens(http.server.BaseHTTPRequestHandler):
    answers: dict[str, str] = {}

    def do_GET(self) -> None:
        body = self.answers.get(self.path.rsplit("/", 1)[-1], "").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _poll(acme: client.ClientV2, url: str, done: Any) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = acme._post_as_get(url).json()
        if done(body):
            return body
        time.sleep(0.05)


def run_floor(pebble: Pebble, domains: Sequence[str]) -> float:
    """The minimal in-process order loop through the acme library: the floor of a Python client."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http_port), _Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.perf_counter()
    key = jose.jwk.JWKEC(key=pki.generate_key(KeyType.ECDSA_P256))
    local = threading.local()

    def session() -> client.ClientV2:
        # One network per thread: the library's nonce pool is not thread-safe.
        if not hasattr(local, "acme"):
            # requests takes a CA bundle path for verify; the library's annotation says bool only
            net = client.ClientNetwork(key, alg=jose.jwa.ES256, verify_ssl=str(pebble.ca_file),  # type: ignore[arg-type]
                                       user_agent="floor")
            new = client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, net), net)
            try:
                new.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            except errors.ConflictError as existing:
                net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
            local.acme = new
        acme: client.ClientV2 = local.acme
        return acme

    def issue(domain: str) -> None:
        acme = session()
        request = pki.make_csr(pki.generate_key(KeyType.ECDSA_P256), (domain,))
        order = acme.new_order(request.public_bytes(serialization.Encoding.PEM))
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = next(c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01))
            _Tokens.answers[challenge.chall.encode("token")] = challenge.chall.validation(key)
            acme.answer_challenge(challenge, challenge.chall.response(key))
            _poll(acme, authorization.uri, lambda b: b["status"] != "pending")
        _poll(acme, order.uri, lambda b: b["status"] != "pending")
        acme._post(order.body.finalize, messages.CertificateRequest(csr=request))
        body = _poll(acme, order.uri, lambda b: b["status"] not in ("ready", "processing"))
        if body["status"] != "valid":
            msg = f"floor: order for {domain} ended {body['status']}"
            raise SystemExit(msg)
        acme._post_as_get(body["certificate"])

    try:
        with ThreadPoolExecutor(FLOOR_THREADS) as pool:
            list(pool.map(issue, domains))
        return time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--certbot", type=Path, default=Path("/tmp/certbot-venv/bin/certbot"))
    parser.add_argument("--floor-only", action="store_true", help="only certkeeper and the floor (quick iterations)")
    args = parser.parse_args()
    lego = lego_binary()
    if not lego.is_file():
        print(f"no lego at {lego}: python3 -m certkeeper.testbed.install", file=sys.stderr)
        return 2
    certbot = args.certbot if args.certbot.exists() else None
    rows: list[tuple[int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lego-") as scratch:
        root = Path(scratch)
        with Bind(root / "bind") as bind, Pebble(root / "pebble", bind=bind, nonce_reject_percent=0) as pebble:
            for count in args.counts:
                times: dict[str, float] = {}
                names = {side: [f"{side}{count}-{i}.example.test" for i in range(count)]
                         for side in ("lego", "certbot", "ck", "floor")}
                if not args.floor_only:
                    times["lego"] = run_lego(lego, pebble, root / f"lego-{count}", names["lego"])
                if certbot is not None and not args.floor_only:
                    times["certbot"] = run_certbot(certbot, pebble, root / f"certbot-{count}", names["certbot"])
                times["certkeeper"] = run_certkeeper(pebble, root / f"certkeeper-{count}", names["ck"])
                times["floor"] = run_floor(pebble, names["floor"])
                rows.append((count, times))
                print(json.dumps({"certificates": count, **{k: round(v, 3) for k, v in times.items()}}),
                      file=sys.stderr)
    print(f"{'certs':>6}{'lego':>9}{'certbot':>9}{'certkeeper':>12}{'floor':>8}{'ck/lego':>9}{'ck/certbot':>11}"
          f"{'ck/floor':>10}")
    for count, t in rows:
        lego_time, certbot_time = t.get("lego"), t.get("certbot")
        print(f"{count:6}" + (f"{lego_time:8.2f}s" if lego_time else f"{'-':>9}")
              + (f"{certbot_time:8.2f}s" if certbot_time else f"{'-':>9}")
              + f"{t['certkeeper']:11.2f}s{t['floor']:7.2f}s"
              + (f"{t['certkeeper'] / lego_time:9.3f}" if lego_time else f"{'-':>9}")
              + (f"{t['certkeeper'] / certbot_time:11.3f}" if certbot_time else f"{'-':>11}")
              + f"{t['certkeeper'] / t['floor']:10.3f}")
    for count, t in rows:
        if count == 20:
            lego_verdict = ("ok" if t["certkeeper"] / t["lego"] <= 0.2 else "MISSED") if "lego" in t else "not run"
            floor_ok = t["certkeeper"] / t["floor"] <= 1.5
            print(f"goal for 20: ck/lego <= 0.2 {lego_verdict}; ck/floor <= 1.5 {'ok' if floor_ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
