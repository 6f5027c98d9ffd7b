"""``certkeeper demo``: the whole loop, live, on this machine (see :mod:`certkeeper.testbed.demo`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter
from certkeeper.values import replace

ORDER = 90

DESCRIPTION = """\
Show the whole loop on this machine with nothing configured by hand: bring up a local BIND, Pebble (ACME, with
short-lived certificates), Postfix, Dovecot and an SMTP sink on 127.0.0.1 in a temporary folder, write a
configuration for them, issue once, and run the real `certkeeper daemon`, telling what it does as it happens:
issued, installed, Postfix and Dovecot reloaded, verified on every listener, renewed again before expiry, an
alert mail delivered. Ends by itself with a summary, stops everything and removes the folder.

Needs root and the test bed's Debian packages (`python3 -m certkeeper.testbed.install`; `bash deploy/demo`
does both). Ignores -c: the demo writes its own configuration.
Exit status 0 when the loop completed, 1 when it did not.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("demo", help="the whole loop, live, against local Pebble, Postfix and Dovecot",
                                   description=DESCRIPTION, parents=[common],
                                   formatter_class=HelpFormatter)
    parser.add_argument("--validity", type=int, metavar="SECONDS",
                        help="lifetime of the certificates Pebble issues (default 60)")
    parser.add_argument("--renew-before", metavar="DURATION", help="renew this long before expiry (default 30s)")
    parser.add_argument("--renewals", type=int, help="renewals by the daemon before the demo ends (default 2)")
    parser.add_argument("--bound", type=float, metavar="SECONDS", help="give up after this long (default 240)")
    parser.add_argument("--single-key", action="store_true", help="one ECDSA key instead of ECDSA and RSA")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, state)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    if importlib.util.find_spec("aiosmtpd") is None:  # the sink for the demo's alert mail
        print("certkeeper demo: needs aiosmtpd, which a plain install leaves out: pip install 'certkeeper[demo]' "
              "(bash deploy/demo installs it)", file=sys.stderr)
        return 69
    from certkeeper.model import KeyType
    from certkeeper.testbed.demo import DemoSettings, run_demo

    if os.geteuid() != 0:
        print("certkeeper demo: run it as root (it starts Postfix, Dovecot and BIND)", file=sys.stderr)
        return 77
    given = {"validity_seconds": args.validity, "renew_before": args.renew_before, "renewals": args.renewals,
             "bound_seconds": args.bound}
    settings = DemoSettings(**{k: v for k, v in given.items() if v is not None}, keep=args.keep)
    if args.single_key:
        settings = replace(settings, key_types=(KeyType.ECDSA_P256,))
    return 0 if run_demo(settings).completed else 1
