"""``certkeeper metrics``: the Prometheus text, for node_exporter's textfile collector (cron users)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.errors import InputError
from certkeeper.store.atomic import write_atomic

ORDER = 70


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "metrics", help="print Prometheus metrics (for node_exporter's textfile collector)", parents=[common],
        description="Print the metrics the daemon serves on metrics_listen, from the state store and the "
                    "installed certificates.  With --output, write them to a file atomically (node_exporter "
                    "must never read a half-written file): e.g. "
                    "--output /var/lib/prometheus/node-exporter/certkeeper.prom",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    parser.set_defaults(handler=run_metrics)


def run_metrics(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import render_all_metrics

    text = render_all_metrics(context.config, context.store)
    if not args.output:
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    try:
        # Metrics hold no secrets; node_exporter runs as its own user.
        write_atomic(target, text.encode(), mode=0o644)
    except OSError as exc:
        raise InputError(str(target), f"cannot write the metrics file: {exc.strerror}") from None
    return 0
