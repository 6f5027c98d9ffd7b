"""``certkeeper config check``: validate the configuration and show what it resolves to."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.config import AcmeIssuerConfig, Config, ImapMailbox
from certkeeper.model import KeyType, RenewBefore, format_duration
from certkeeper.targets import Target
from certkeeper.values import fields, is_value

ORDER = 90


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "config", help="validate the configuration file", parents=[common],
        description="Work with the configuration file.",
    )
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate and print the resolved settings (secrets masked)", parents=[common],
        description="Parse the configuration and look up what it names on this machine (hooks: present, "
                    "executable, not writable by others; groups; secret files: present, readable, no wider than "
                    "0640); report every mistake with its file and key path (exit 78), or print the resolved "
                    "settings with defaults filled in (secrets are never printed: they live in files, and only "
                    "the file names are shown).",
    )
    check.add_argument("--json", action="store_true", help="print the resolved settings as JSON")
    check.set_defaults(handler=run_check)
    schema = commands.add_parser(
        "schema", help="print the configuration's JSON Schema", parents=[common],
        description="Print the JSON Schema (draft 2020-12) of certkeeper.toml, read off the parser: every key "
                    "certkeeper accepts, with its type. Editors and TOML language servers use it to complete "
                    "and check the file.",
    )
    schema.set_defaults(handler=run_schema)


def run_schema(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def run_check(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.config.resolve import check_resolvable
    from certkeeper.errors import ConfigErrors

    problems = check_resolvable(context.config)  # the hooks, groups and secret files it names, on this machine
    if problems:
        raise ConfigErrors(problems) if len(problems) > 1 else problems[0]
    notes = check_profiles(context.config)  # and each ACME profile against its CA, when the CA answers
    resolved = describe_config(context.config)
    if args.json:
        resolved["profiles_checked"] = notes
        print(json.dumps(resolved, indent=2))
    else:
        print(f"{context.config_path}: OK")
        _print_tree(resolved, "")
        for name, note in notes.items():
            print(f"issuers.{name}.profile: {note}")
    return 0


def check_profiles(config: Config) -> dict[str, str]:
    """Each ACME issuer's ``profile`` against its CA's ``meta.profiles``, when the CA answers within seconds.

    A profile the CA does not offer is a :class:`ConfigError` (exit 78) naming the offered ones; a CA that cannot
    be reached leaves the profile unchecked (said so in the result), as the order will check it again.
    """
    from certkeeper.errors import CaUnavailable, ConfigError, IssuanceError
    from certkeeper.issuers.acme import AcmeIssuer

    notes: dict[str, str] = {}
    for name, issuer_config in config.issuers.items():
        if not isinstance(issuer_config, AcmeIssuerConfig) or not issuer_config.profile:
            continue
        issuer = AcmeIssuer(issuer_config, config.settings.state_dir)
        try:
            issuer.check_profile()
        except CaUnavailable as exc:
            notes[name] = f"{issuer_config.profile!r} not checked: {exc.detail}"
            continue
        except IssuanceError as exc:
            raise ConfigError(config.path, f"issuers.{name}.profile", repr(issuer_config.profile),
                              "a profile the CA offers", exc.detail) from None
        notes[name] = f"{issuer_config.profile!r} is offered by the CA"
    return notes


def _print_tree(value: Any, indent: str) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{indent}{key}:")
            _print_tree(item, indent + "  ")
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            for i, element in enumerate(item):
                print(f"{indent}{key}[{i}]:")
                _print_tree(element, indent + "  ")
        elif item is not None and item not in ([], {}):
            shown = ", ".join(map(str, item)) if isinstance(item, list) else item
            print(f"{indent}{key} = {shown}")


def describe_config(config: Config) -> dict[str, Any]:
    """The resolved settings as plain data for ``config check``, with secrets and key material masked."""
    return {
        "file": str(config.path),
        "certkeeper": _plain(config.settings),
        "alerts": _plain(config.alerts) if config.alerts else None,
        "issuers": {name: _plain(issuer) for name, issuer in config.issuers.items()},
        "certificates": {name: _plain(cert) for name, cert in config.certificates.items()},
        "watch": [_plain(w) for w in config.watch],
        "mta_sts": {domain: _plain(mta) for domain, mta in config.mta_sts.items()},
        "tlsrpt": _plain(config.tlsrpt) if config.tlsrpt else None,
    }


_MASKED = {"database"}


def _plain(value: Any) -> Any:
    if isinstance(value, ImapMailbox):
        return value.url
    if is_value(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            key = "from" if f.name == "sender" else f.name
            item = getattr(value, f.name)
            out[key] = _mask_url(item) if f.name in _MASKED and isinstance(item, str) else _plain(item)
        return out
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Target):
        return value.text
    if isinstance(value, Path | RenewBefore | KeyType):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{host}"
