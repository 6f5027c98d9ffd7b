"""``certkeeper tlsrpt summary|fetch``: what sending servers reported (RFC 8460), from the state store."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any

from certkeeper import pki
from certkeeper.cli.context import Context
from certkeeper.errors import ConfigError, UsageError
from certkeeper.model import parse_duration

ORDER = 65


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "tlsrpt", help="TLS reports (RFC 8460) senders sent about this domain's MX", parents=[common],
        description="Sessions succeeded and failed, by policy domain, receiving MX, result type and reporter, "
                    "from the reports the daemon fetched over IMAPS or received on its POST endpoint.",
    )
    commands = parser.add_subparsers(dest="tlsrpt_command", metavar="COMMAND", required=True)
    summary = commands.add_parser("summary", help="sessions per domain and MX, by result type and reporter",
                                  parents=[common])
    summary.add_argument("--since", metavar="DURATION", default="7d",
                         help="reports whose window ended within this long (default 7d; e.g. 24h, 30d)")
    summary.add_argument("--json", action="store_true", help="one JSON document instead of text")
    summary.set_defaults(handler=run_summary)
    fetch = commands.add_parser("fetch", help="fetch new report mails over IMAPS once (what the daemon does)",
                                parents=[common])
    fetch.set_defaults(handler=run_fetch)


def _since(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        msg = f"--since {text!r}: expected a duration such as 24h, 7d or 30d"
        raise UsageError(msg) from None


def run_summary(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.tlsrpt.summary import render_text, stored_reports, summarize

    now = pki.now_utc()
    since = now - _since(args.since)
    document = summarize(stored_reports(context.store, since), since, now)
    if args.json:
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_text(document))
    return 0


def run_fetch(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app

    config = context.config
    if config.tlsrpt is None or config.tlsrpt.imap is None:
        raise ConfigError(config.path, "tlsrpt.imap", "nothing", 'an IMAPS mailbox such as '
                          '"imaps://reports@mail.example.org/INBOX"')
    app = build_app(config, store=context.store)
    assert app.tlsrpt is not None
    fetched = app.tlsrpt.fetch()
    if fetched is not None:
        print(f"{fetched.read} mails read, {fetched.seen} marked seen, {fetched.deleted} deleted")
    if app.notifier is not None:
        app.notifier.deliver(pki.now_utc())
    return 0
