"""``certkeeper import certbot [DIR]``: take over certbot's lineages, accounts and deploy hooks, ordering nothing."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter

ORDER = 85

DESCRIPTION = """\
Read certbot's configuration directory (default /etc/letsencrypt) and turn every lineage into a
[certificates.NAME] entry: its names, key type, reuse_key and deploy hooks (run once per certificate and key
type with RENEWED_LINEAGE, as certbot runs them), under an [issuers.*] entry for its ACME server (an ACME
issuer already configured for that directory is reused). The current pair of each lineage is installed as
its first version and certbot's account key and URL are taken over, so nothing is ordered and the CA sees the
same account. What cannot be mapped is listed. certbot's own timer is left alone.

With --dry-run the TOML is printed and nothing is written. Otherwise it is appended to the configuration file
(-c; created with a [certkeeper] table when missing), after checking that the result parses.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("import", help="take over certificates from another tool (certbot)",
                                   description=DESCRIPTION, parents=[common],
                                   formatter_class=HelpFormatter)
    parser.add_argument("tool", choices=["certbot"], help="what to import from")
    parser.add_argument("directory", nargs="?", type=Path, help="certbot's directory (default /etc/letsencrypt)")
    parser.add_argument("--dry-run", action="store_true", help="print the TOML, write nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.adopt.certbot import (
        DEFAULT_DIRECTORY,
        apply_import,
        check_importable,
        plan_import,
        read_certbot,
        summary_notes,
    )
    from certkeeper.config import parse_config
    from certkeeper.errors import ConfigError
    from certkeeper.pki import now_utc

    state = read_certbot(args.directory or DEFAULT_DIRECTORY)
    path = context.config_path
    try:
        before = path.read_text() if path.exists() else '[certkeeper]\nstate_dir = "/var/lib/certkeeper"\n'
        existing = tomllib.loads(before)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"a file that cannot be read ({getattr(exc, 'strerror', None) or exc})",
                          "a readable configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"invalid TOML ({exc})", "valid TOML") from None
    plan = plan_import(state, existing)
    check_importable(state)
    text = before.rstrip("\n") + "\n\n# imported from certbot\n" + plan.toml
    try:  # the whole result must parse before anything is written (and for the dry run to say so)
        config = parse_config(tomllib.loads(text), path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML that does not parse with the imported tables ({exc})",
                          "certificate and issuer names that are not taken yet") from None
    if args.dry_run:
        print(plan.toml, end="")
        for note in plan.notes:
            print(f"# not mapped: {note}")
        return 0
    from certkeeper.store.atomic import write_atomic

    write_atomic(path, text.encode(), mode=0o640)
    print(f"wrote {len(state.lineages)} certificate(s) to {path}")
    for line in apply_import(state, plan, config, now=now_utc()):
        print(line)
    for note in (*plan.notes, *summary_notes(state)):
        print(f"note: {note}", file=sys.stderr)
    return 0
