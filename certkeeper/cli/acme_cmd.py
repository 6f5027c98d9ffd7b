"""``certkeeper acme persist-record NAME [--publish]``: the dns-persist-01 records to publish once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.errors import IssuanceError, UsageError

ORDER = 45


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "acme", help="ACME account matters: dns-persist-01 records", parents=[common],
        description="Work with the ACME side of a certificate.",
    )
    commands = parser.add_subparsers(dest="acme_command", metavar="SUBCOMMAND", required=True)
    persist = commands.add_parser(
        "persist-record", help="print (or publish once) the dns-persist-01 TXT records of NAME", parents=[common],
        description="Print the _validation-persist.<domain> TXT records that let the issuer's ACME account "
                    "validate NAME's domains with dns-persist-01 (draft-ietf-acme-dns-persist): the CA's issuer "
                    "domain name, accounturi, policy=wildcard for wildcard names, persistUntil when "
                    "persist_until is configured.  The account is registered first if it has none yet.  With "
                    "--publish they are added once over RFC 2136 (TSIG); renewals then need no DNS update.",
    )
    persist.add_argument("name", metavar="NAME", help="the certificate's name in the configuration")
    persist.add_argument("--publish", action="store_true", help="add the records with one RFC 2136 update")
    persist.add_argument("--dns-server", metavar="HOST[:PORT]",
                         help="the zone's primary for --publish (default: the issuer's dns_server)")
    persist.add_argument("--tsig-key-file", metavar="PATH", type=Path,
                         help="TSIG key for --publish (default: the issuer's tsig_key_file); needed only once")
    persist.set_defaults(handler=run_persist_record)


def run_persist_record(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.config import AcmeIssuerConfig
    from certkeeper.dnsclient import parse_tsig_key
    from certkeeper.errors import ChallengeFailed
    from certkeeper.issuers.acme import AcmeIssuer
    from certkeeper.issuers.challenges import publish_persist_records, read_secret_file

    config = context.config
    [certificate] = config.named([args.name])
    issuer_config = config.issuers[certificate.issuer]
    if not isinstance(issuer_config, AcmeIssuerConfig):
        msg = f"issuer {certificate.issuer!r} of {args.name!r} is not an ACME issuer"
        raise UsageError(msg)
    issuer = AcmeIssuer(issuer_config, config.settings.state_dir)
    records = issuer.persist_records(certificate.domains)
    for name, record in records:
        print(f'{name} IN TXT "{record.text}"')
    if not args.publish:
        return 0
    server = args.dns_server or issuer_config.dns_server
    key_file = args.tsig_key_file or issuer_config.tsig_key_file
    if not server or not key_file:
        msg = (
            "--publish needs --dns-server and --tsig-key-file (or dns_server and tsig_key_file in "
                         f"issuers.{certificate.issuer})"
        )
        raise UsageError(msg)
    key = parse_tsig_key(read_secret_file(key_file, "the TSIG key"), str(key_file))
    try:
        publish_persist_records(server, issuer_config.dns_zone, key, [(name, r.text) for name, r in records])
    except ChallengeFailed as exc:
        raise IssuanceError(certificate.issuer, args.name, f"publishing the dns-persist-01 records failed: {exc}") \
            from None
    print(f"published {len(records)} record{'s' if len(records) != 1 else ''} on {server}")
    return 0
