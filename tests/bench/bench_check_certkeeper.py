"""Benchmark: ``check_certkeeper`` against Debian's ``check_ssl_cert`` on the same loopback endpoint.

Run on demand (pytest does not collect ``bench_*`` files)::

    python tests/bench/bench_check_certkeeper.py [--rounds 5]

One implicit-TLS (smtps) and one SMTP STARTTLS endpoint on 127.0.0.1, certificates from a throwaway CA.  Each
round runs both plugins once per endpoint, alternately, with the same options (``-H -p -P -r -w 20 -c 15``,
check_ssl_cert with ``--ignore-ocsp --ignore-sct`` so it stays on loopback).  Reported: the median wall time
of each (interpreter or shell start-up included, as Icinga pays it) and the ratio check_ssl_cert /
check_certkeeper (above 1: check_certkeeper is faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.probe_servers import Pki, ServerLoop, _hold, smtp_server  # noqa: E402

CHECK_SSL_CERT = "/usr/lib/nagios/plugins/check_ssl_cert"


def timed(command: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return time.perf_counter() - started, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        pki = Pki.create(Path(directory))
        loop = ServerLoop()
        try:
            context = pki.context(pki.leaf("mail.test"))
            endpoints = [("smtps", loop.serve(_hold, context)), ("smtp", loop.serve(smtp_server(context)))]
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(args.rounds):
                for protocol, port in endpoints:
                    given = ["-H", "mail.test", "--resolve", "127.0.0.1", "-p", str(port), "-P", protocol,
                             "-r", str(pki.ca_file), "-w", "20", "-c", "15"]
                    seconds, status = timed([sys.executable, "-m", "certkeeper.cli.check_certkeeper", *given])
                    assert status == 0, "check_certkeeper did not say OK"
                    ours.append(seconds)
                    seconds, status = timed([CHECK_SSL_CERT, *given, "--ignore-ocsp", "--ignore-sct"])
                    assert status == 0, "check_ssl_cert did not say OK"
                    theirs.append(seconds)
        finally:
            loop.close()
    mine, peer = statistics.median(ours), statistics.median(theirs)
    print(f"check_certkeeper median {mine:.3f} s, check_ssl_cert median {peer:.3f} s over {len(ours)} runs each")
    print(f"ratio check_ssl_cert / check_certkeeper: {peer / mine:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
