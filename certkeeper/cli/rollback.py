"""``certkeeper rollback`` and ``certkeeper hooks test``: put a previous version back; test reloads today."""

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

    hooks = subparsers.add_parser("hooks", help="test reload hooks", parents=[common],
                                  description="Work with reload hooks.")
    commands = hooks.add_subparsers(dest="hooks_command", metavar="SUBCOMMAND", required=True)
    test = commands.add_parser(
        "test", parents=[common], help="run NAME's reload hooks and verify, without renewing",
        description="Run the reload hooks of NAME against its current certificate and verify every endpoint "
                    "serves it, renewing nothing: find a broken hook today instead of in 60 days.")
    test.add_argument("name", metavar="NAME")
    test.set_defaults(handler=run_hooks_test)


def run_rollback(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app

    outcome = build_app(context.config, store=context.store).renewer.rollback(args.name, args.to)
    print(f"{outcome.name}: {outcome.detail}")
    return 0


def run_hooks_test(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app

    outcome = build_app(context.config, store=context.store).renewer.test_hooks(args.name)
    print(f"{outcome.name}: hooks ran; {outcome.detail}")
    return 0
