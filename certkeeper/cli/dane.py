"""``certkeeper dane show NAME``: the TLSA records that should be published now, in zone-file syntax."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter
from certkeeper.errors import UsageError

ORDER = 45

DESCRIPTION = """\
Print the TLSA records (RFC 7672, RFC 6698) certificate NAME needs in DNS now, in zone-file syntax: the current
key's, the next key's (made now if there is none yet) and the issuing CAs', one per key type, host and port.

certkeeper publishes them itself through RFC 2136 when dane.dns_server and dane.tsig_key_file (or the ACME
issuer's) are set; without dynamic DNS, publish these lines and keep them: a renewal changes the key only after
the next key's records have been visible for two TTLs.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("dane", help="DANE TLSA records of a certificate", parents=[common],
                                   description="Work with the DANE TLSA records of certificates.")
    commands = parser.add_subparsers(dest="dane_command", metavar="SUBCOMMAND", required=True)
    show = commands.add_parser("show", parents=[common], help="print the TLSA records to publish now",
                               description=DESCRIPTION, formatter_class=HelpFormatter)
    show.add_argument("name", metavar="NAME")
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_app
    from certkeeper.dane.records import CROWDED_NAME, crowded_names
    from certkeeper.dane.rollover import DaneRollover
    from certkeeper.mailserver.config import server_process_lifetime

    app = build_app(context.config, store=context.store)
    certificate = app.renewer.select([args.name])[0]
    if certificate.dane is None:
        msg = f"certificate {args.name!r} has no dane = {{...}} in {context.config.path}"
        raise UsageError(msg)
    home = app.renewer.home(certificate)
    rollover = DaneRollover(certificate, home, context.config.issuers.get(certificate.issuer), app.bus.publish,
                            app.clock,
                            process_lifetime=lambda: server_process_lifetime(certificate.reload, certificate.hook_env),
                            store=context.store)
    # The lock: a next key made here must be the one a concurrent renewal would make, not a second one.
    with context.store.lock(certificate.name, context.config.settings.lock_timeout.total_seconds()):
        records = rollover.record_sets()
        state = rollover.load_state()
        step = rollover.decide(state, records)
    dane = certificate.dane
    retiring = state.published - records.desired
    lines = [f"; TLSA records of certificate {certificate.name} ({', '.join(dane.tlsa)}; ports "
             f"{', '.join(map(str, dane.ports))}), RFC 7672",
             f"; rollover: {step.phase}: {step.reason}"]
    lines += [f"; lagging: {line}" for line in state.lagging]
    if retiring:
        lines.append(f"; retiring: kept until every address has served the new key for {rollover.dwell()} "
                     f"(dane.retire_after, at least the server processes' lifetime)")
    for record in sorted(records.desired | retiring):
        role = ("retiring" if record in retiring else "issuing CA" if record.usage == 2
                else "current" if record in records.current else "next")
        lines.append(f"{record.zone_line(dane.ttl)} ; {role}")
    sys.stdout.write("\n".join(lines) + "\n")
    for name, count in crowded_names(records.desired | retiring):
        sys.stderr.write(f"warning: {name} would carry {count} TLSA records, more than {CROWDED_NAME}: some large "
                         f"senders handle no more than about a dozen; list fewer dane.issuers or key types\n")
    return 0
