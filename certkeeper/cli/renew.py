"""``certkeeper renew``: one pass over the certificates, doing what is due and nothing else (cron friendly)."""

from __future__ import annotations

import json

from certkeeper.cli.context import Context
from certkeeper.cli.quick import QuickLine

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from certkeeper.cli.quick import Arguments

ORDER = 20

DESCRIPTION = """\
One pass over all certificates (or the NAMEs given): renew what is due, install it, run the reload hooks
once per daemon, verify every endpoint serves the new certificate (rolling back if not), reload where an
endpoint serves a stale certificate, send the alerts that are owed, and exit.

Exit status 0 when everything is valid, 1 when anything failed (the failure is retried on the next run),
75 when another certkeeper held a certificate's lock for longer than lock_timeout.
Safe to run from cron beside the daemon: both take the same per-certificate locks.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from certkeeper.cli.parser import HelpFormatter

    parser = subparsers.add_parser("renew", help="renew what is due, install, reload, verify; then exit",
                                   description=DESCRIPTION, parents=[common],
                                   formatter_class=HelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="certificates to look at (default: all)")
    parser.add_argument("--force", action="store_true", help="renew even when not due")
    parser.add_argument("--dry-run", action="store_true",
                        help="issue against the issuer's staging directory, check the result, install nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when nothing was due")
    parser.add_argument("--json", action="store_true", help="print the outcome of each certificate as JSON")
    parser.set_defaults(**_defaults())


def _defaults() -> dict[str, object]:
    """What a line naming nothing gives, to argparse (set on its parser) and to :data:`QUICK`."""
    return {"names": [], "force": False, "dry_run": False, "quiet": False, "json": False, "handler": run}


# The line cron runs, read without argparse (certkeeper.cli.quick): every option of register's parser.
QUICK = QuickLine(
    positional="names", valued={},
    flags={"--force": "force", "--dry-run": "dry_run", "-q": "quiet", "--quiet": "quiet", "--json": "json"},
    defaults=_defaults,
)


def run(args: Arguments, context: Context) -> int:
    from certkeeper.app import build_app
    from certkeeper.renewal.policy import Result

    app = build_app(context.config, store=context.store)
    outcomes = app.run_pass(args.names, force=args.force, dry_run=args.dry_run)
    if args.json:
        print(json.dumps([{"name": o.name, "result": o.result, "detail": o.detail, "version": o.version}
                          for o in outcomes], indent=2))
    elif not (args.quiet and all(o.result == Result.NOT_DUE for o in outcomes)):
        for outcome in outcomes:
            print(f"{outcome.name}: {outcome.result}: {outcome.detail}")
    if any(o.result == Result.BUSY for o in outcomes) and \
            not any(o.failed and o.result != Result.BUSY for o in outcomes):
        return 75
    return 1 if any(o.failed for o in outcomes) else 0
