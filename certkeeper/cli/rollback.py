"""``certkeeper rollback``: serve a previous version again, reload and verify."""

from __future__ import annotations

import argparse
from typing import Any

from certkeeper.cli.context import Context

ORDER = 40


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    rollback = subparsers.add_parser(
        "rollback", help="serve the previous version of a certificate again", parents=[common],
        description="Flip NAME's current version back to the previous one (or --to VERSION), run its reload "
                    "hooks and verify every endpoint serves it. Versions are listed by `certkeeper status`.")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--to", metavar="VERSION", help="the version to serve (default: the previous one)")
    rollback.set_defaults(handler=run_rollback)


def run_rollback(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app

    outcome = build_app(context.config, store=context.store).renewer.rollback(args.name, args.to)
    print(f"{outcome.name}: {outcome.detail}")
    return 0
