"""``certkeeper hooks test``: run a certificate's reload hooks and verify, renewing nothing."""

from __future__ import annotations

import argparse
from typing import Any

from certkeeper.cli.context import Context

ORDER = 45


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    hooks = subparsers.add_parser("hooks", help="test reload hooks", parents=[common],
                                  description="Work with reload hooks.")
    commands = hooks.add_subparsers(dest="hooks_command", metavar="SUBCOMMAND", required=True)
    test = commands.add_parser(
        "test", parents=[common], help="run NAME's reload hooks and verify, without renewing",
        description="Run the reload hooks of NAME against its current certificate and verify every endpoint "
                    "serves it, renewing nothing: find a broken hook today instead of in 60 days.")
    test.add_argument("name", metavar="NAME")
    test.set_defaults(handler=run_hooks_test)


def run_hooks_test(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app

    outcome = build_app(context.config, store=context.store).renewer.test_hooks(args.name)
    print(f"{outcome.name}: hooks ran; {outcome.detail}")
    return 0
