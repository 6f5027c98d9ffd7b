"""``certkeeper config check``: validate the configuration and show what it resolves to."""

from __future__ import annotations

import argparse
import json
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.config import describe_config

ORDER = 90


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "config", help="validate the configuration file", parents=[common],
        description="Work with the configuration file.",
    )
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate and print the resolved settings (secrets masked)", parents=[common],
        description="Parse the configuration, report every mistake with its file and key path (exit 78), "
                    "or print the resolved settings with defaults filled in (secrets are never printed: "
                    "they live in files, and only the file names are shown).",
    )
    check.add_argument("--json", action="store_true", help="print the resolved settings as JSON")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, context: Context) -> int:
    resolved = describe_config(context.config)
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        print(f"{context.config_path}: OK")
        _print_tree(resolved, "")
    return 0


def _print_tree(value: Any, indent: str) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{indent}{key}:")
            _print_tree(item, indent + "  ")
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            for i, element in enumerate(item):
                print(f"{indent}{key}[{i}]:")
                _print_tree(element, indent + "  ")
        elif item is not None and item != [] and item != {}:
            shown = ", ".join(map(str, item)) if isinstance(item, list) else item
            print(f"{indent}{key} = {shown}")
