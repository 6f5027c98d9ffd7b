"""``certkeeper daemon``: run in the foreground, renewing, verifying and alerting on schedule."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter

ORDER = 10

DESCRIPTION = """\
Run in the foreground (under systemd Type=notify, or any supervisor). Looks at every certificate when its
renewal decision asks (at the latest every check_interval), probes every endpoint, renews what is due,
reloads what is stale, verifies, rolls back, and sends alert mail.

Signals: SIGHUP re-reads the configuration (an invalid file is rejected and the running configuration
kept); SIGTERM lets a pass in flight finish, then exits.
Logs: one line per event on standard error, with the certificate name; never key material.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("daemon", help="run in the foreground: renew, verify and alert on schedule",
                                   description=DESCRIPTION, parents=[common],
                                   formatter_class=HelpFormatter)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.daemon import Daemon

    # Under journald the journal adds time and unit; elsewhere a timestamp helps.
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(message)s"
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(fmt))
    if args.verbose == 0:
        root.setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    print(f"certkeeper daemon: configuration {context.config_path}", file=sys.stderr)
    return Daemon(context.config_path, context.config).run()
