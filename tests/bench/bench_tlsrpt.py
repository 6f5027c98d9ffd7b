"""What bounding and checking TLS reports costs, as ratios against doing the same work unbounded, in one run.

1. Parsing: :func:`certkeeper.tlsrpt.report.parse_report` (UTF-8 check, duplicate-key hook, every field typed)
   against a bare ``json.loads`` of the same report (a large sender's day: 2,000 failure details).  Goal: at most
   10x ``json.loads`` (the summary and the correlation parse the stored reports of their window again).
2. A gzip bomb (4 GiB of zeros in ~4 MiB): :func:`certkeeper.tlsrpt.intake.inflate` refusing it, against
   inflating the whole of it with ``zlib`` (what an unbounded reader does).  Goal: under 0.05x.

Run from the repository: ``.venv/bin/python -m tests.bench.bench_tlsrpt [--runs 7]``; the medians count.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's certkeeper and tests/

from certkeeper.errors import ReportRefused  # noqa: E402
from certkeeper.tlsrpt.intake import inflate  # noqa: E402
from certkeeper.tlsrpt.report import parse_report  # noqa: E402
from tests.tlsrpt_reports import RFC_EXAMPLE, gzip_bomb  # noqa: E402


def big_report(details: int) -> bytes:
    document = copy.deepcopy(RFC_EXAMPLE)
    template = document["policies"][0]["failure-details"][0]
    document["policies"][0]["failure-details"] = [
        {**template, "sending-mta-ip": f"192.0.2.{i % 250}", "receiving-mx-hostname": f"mx{i % 7}.example.test",
         "failed-session-count": i} for i in range(details)]
    return json.dumps(document).encode()


def median_seconds(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_ratio(work: Callable[[], object], baseline: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """Both timed alternately (a busy machine slows both alike); the medians and the median of the ratios."""
    pairs = [(median_seconds(work, 1), median_seconds(baseline, 1)) for _ in range(runs)]
    return (statistics.median(w for w, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(w / b for w, b in pairs))


def refuse(bomb: bytes) -> None:
    try:
        inflate(bomb, "bench")
    except ReportRefused:
        return
    msg = "the bomb was not refused"
    raise AssertionError(msg)


def inflate_all(bomb: bytes) -> int:
    """Every byte of the bomb, 64 MiB at a time (kept by nobody: an unbounded reader would keep all 4 GiB)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total, data = 0, bomb
    try:
        while data:
            total += len(inflater.decompress(data, 64 * 1024 * 1024))
            data = inflater.unconsumed_tail
    except zlib.error:  # the bomb's trailer carries no real CRC (see gzip_bomb): reached only at the very end
        pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    report = big_report(2000)
    checked, bare, ratio = median_ratio(lambda: parse_report(report, "bench"), lambda: json.loads(report),
                                        args.runs * 3)
    print(f"parse_report {checked * 1000:.1f} ms, json.loads {bare * 1000:.1f} ms ({len(report):,} bytes): "
          f"{ratio:.2f}x (goal <= 10x)")
    bomb = gzip_bomb(4)
    refused = median_seconds(lambda: refuse(bomb), args.runs)
    unbounded = median_seconds(lambda: inflate_all(bomb), max(1, args.runs // 3))
    print(f"gzip bomb ({len(bomb):,} bytes, 4 GiB inflated): refused in {refused * 1000:.1f} ms, inflating it "
          f"all takes {unbounded * 1000:.0f} ms: {refused / unbounded:.3f}x (goal < 0.05x)")


if __name__ == "__main__":
    main()
