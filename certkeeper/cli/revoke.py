"""``certkeeper revoke NAME [--reason ...]``: revoke the installed certificate(s) of NAME at its ACME CA."""

from __future__ import annotations

import argparse
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.errors import UsageError

ORDER = 40

REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "revoke", help="revoke the installed certificate of NAME", parents=[common],
        description="Revoke every key type's certificate of the current version of NAME at the CA that issued "
                    "it (RFC 8555 section 7.6).  Use keyCompromise when the private key leaked: the CA then "
                    "refuses that key in future orders too.  The files stay installed; renew afterwards.",
    )
    parser.add_argument("name", metavar="NAME", help="the certificate's name in the configuration")
    parser.add_argument("--reason", choices=REASONS, default="unspecified",
                        help="RFC 5280 revocation reason (default: unspecified)")
    parser.set_defaults(handler=run_revoke)


def run_revoke(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.app import build_issuer
    from certkeeper.issuers.base import Revoker
    from certkeeper.store.versions import CertificateHome

    config = context.config
    [certificate] = config.named([args.name])
    issuer = build_issuer(config.issuers[certificate.issuer], config.settings)
    if not isinstance(issuer, Revoker):
        msg = f"issuer {certificate.issuer!r} of {args.name!r} cannot revoke certificates"
        raise UsageError(msg)
    home = CertificateHome(config.settings.state_dir, args.name)
    version = home.current()
    if version is None:
        msg = f"certificate {args.name!r} has nothing installed to revoke"
        raise UsageError(msg)
    for pair in version.pairs:
        issued = home.load_pair_certificate(pair)
        issuer.revoke(issued, args.reason)
        print(f"{args.name}: revoked {pair.key_type} certificate, serial {pair.serial} ({args.reason})")
    return 0
