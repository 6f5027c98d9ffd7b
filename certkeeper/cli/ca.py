"""``certkeeper ca init|revoke|crl|export|status``: run the internal CA of a ``type = "ca"`` issuer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter
from certkeeper.config import CaIssuerConfig, Config
from certkeeper.errors import UsageError

ORDER = 60

_REASONS = ("unspecified", "keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged")

_ROLLOVER_HELP = """\
rollover (new intermediate under the same root, when `ca status` says rollover due):
  certkeeper ca init --intermediate-only [--root-key PATH]
The old intermediate is archived in <ca_dir>/archive/; clients trust the root, so nothing is redistributed.
Certificates from the old intermediate stay valid until they expire; revoke what must be revoked first.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "ca", help="run the internal certificate authority", parents=[common],
        description="Create and operate the internal CA of an issuer with type = \"ca\": a root, an issuing "
                    "intermediate, revocation and CRLs.", epilog=_ROLLOVER_HELP,
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", required=True)
    issuer_help = "the CA issuer (default: the only issuer with type = \"ca\")"

    init = commands.add_parser(
        "init", help="create the root and intermediate CA", parents=[common], epilog=_ROLLOVER_HELP,
        formatter_class=HelpFormatter,
        description="Create a root and an intermediate CA under the issuer's ca_dir, keys encrypted with the "
                    "configured passphrase and written 0600.  Refuses to touch an existing CA without --force.",
    )
    init.add_argument("--issuer", metavar="NAME", help=issuer_help)
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA (the old ca_dir is renamed to <ca_dir>.replaced-<time>)")
    init.add_argument("--export-root-key", metavar="PATH", type=Path,
                      help="write the root key to PATH instead of ca_dir (offline root: move PATH away)")
    init.add_argument("--intermediate-only", action="store_true",
                      help="rollover: a new intermediate under the existing root")
    init.add_argument("--root-key", metavar="PATH", type=Path,
                      help="with --intermediate-only: the offline root key (default: ca_dir/root.key)")
    init.set_defaults(handler=run_init)

    revoke = commands.add_parser(
        "revoke", help="revoke a certificate by serial or by certificate name", parents=[common],
        description="Record a revocation and write a fresh CRL.  NAME revokes the latest serial issued for that "
                    "certificate; a SERIAL is hexadecimal (colons allowed).",
    )
    revoke.add_argument("target", metavar="SERIAL|NAME")
    revoke.add_argument("--reason", choices=_REASONS, default="unspecified", help="RFC 5280 reason code")
    revoke.add_argument("--issuer", metavar="NAME", help=issuer_help)
    revoke.set_defaults(handler=run_revoke)

    crl = commands.add_parser("crl", help="write a signed CRL", parents=[common],
                              description="Sign a CRL with the intermediate, write ca_dir/crl.pem and crl.der "
                                          "(next update per crl_next_update), and copy it to --out.")
    crl.add_argument("--issuer", metavar="NAME", help=issuer_help)
    crl.add_argument("--out", metavar="PATH", type=Path, help="also write it here (DER if PATH ends in .der or .crl)")
    crl.set_defaults(handler=run_crl)

    export = commands.add_parser("export", help="print the trust bundle clients need", parents=[common],
                                 description="Print (or write to --out) the root certificate, the trust anchor to "
                                             "give to clients and to openssl -CAfile.")
    export.add_argument("--issuer", metavar="NAME", help=issuer_help)
    export.add_argument("--with-intermediate", action="store_true", help="append the intermediate after the root")
    export.add_argument("--out", metavar="PATH", type=Path, help="write the bundle to PATH instead of stdout")
    export.set_defaults(handler=run_export)

    status = commands.add_parser("status", help="show CA expiry and issued/revoked counts", parents=[common],
                                 description="Show when the root and intermediate expire, whether a rollover is "
                                             "due, and how many certificates were issued and revoked.")
    status.add_argument("--issuer", metavar="NAME", help=issuer_help)
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(handler=run_status)


def select_issuer(config: Config, name: str | None) -> CaIssuerConfig:
    """``--issuer NAME``, or the only issuer of type "ca"; a usage error naming the choices otherwise."""
    cas = {n: issuer for n, issuer in config.issuers.items() if isinstance(issuer, CaIssuerConfig)}
    if name is not None:
        if name not in cas:
            msg = (
                f"--issuer {name}: no issuer of type \"ca\" by that name in {config.path}; "
                             f"choices: {', '.join(sorted(cas)) or 'none'}"
            )
            raise UsageError(msg)
        return cas[name]
    if len(cas) == 1:
        return next(iter(cas.values()))
    if not cas:
        msg = f"{config.path} has no issuer with type = \"ca\""
        raise UsageError(msg)
    msg = f"several CA issuers in {config.path}; pick one with --issuer ({', '.join(sorted(cas))})"
    raise UsageError(msg)


def run_init(args: argparse.Namespace, context: Context) -> int:
    from certkeeper import pki
    from certkeeper.issuers.internal_ca import init_ca, init_intermediate

    config = select_issuer(context.config, args.issuer)
    if args.intermediate_only:
        if args.force or args.export_root_key:
            msg = "--intermediate-only keeps the root: it takes neither --force nor --export-root-key"
            raise UsageError(msg)
        result = init_intermediate(config, now=pki.now_utc(), root_key=args.root_key)
        new = result.intermediate
        print(f"new intermediate for issuer {config.name}: {pki.common_name(new.subject)}, "
              f"serial {pki.serial_hex(new)}, valid until {pki.not_after(new):%Y-%m-%d}")
        return 0
    if args.root_key:
        msg = "--root-key only goes with --intermediate-only"
        raise UsageError(msg)
    result = init_ca(config, now=pki.now_utc(), force=args.force, export_root_key=args.export_root_key)
    if result.replaced:
        print(f"previous CA moved to {result.replaced}")
    print(f"created CA for issuer {config.name} in {result.ca_dir}")
    for label, certificate in (("root", result.root), ("intermediate", result.intermediate)):
        print(f"  {label}: {pki.common_name(certificate.subject)}, {pki.key_type_of(certificate.public_key())}, "  # type: ignore[arg-type]
              f"valid until {pki.not_after(certificate):%Y-%m-%d}, sha256 {pki.fingerprint(certificate)}")
    if args.export_root_key:
        print(f"  root key written to {result.root_key}: keep it offline; issuing needs only the intermediate")
    print("clients trust it through: certkeeper ca export")
    return 0


def run_revoke(args: argparse.Namespace, context: Context) -> int:
    from certkeeper import pki
    from certkeeper.issuers.internal_ca import revoke, write_crl

    config = select_issuer(context.config, args.issuer)
    now = pki.now_utc()
    entry = revoke(config, args.target, args.reason, now=now)
    if entry.revoked_at != now:  # revoke() hands back the earlier record when the serial was already revoked
        print(f"serial {entry.serial:x} was already revoked on {entry.revoked_at:%Y-%m-%d %H:%M} ({entry.reason})")
    else:
        named = f" (certificate {entry.certificate})" if entry.certificate else ""
        print(f"revoked serial {entry.serial:x}{named}: {entry.reason}")
    print(f"CRL written to {write_crl(config, now)}")
    return 0


def run_crl(args: argparse.Namespace, context: Context) -> int:
    from certkeeper import pki
    from certkeeper.issuers.ca_store import CRL_DER
    from certkeeper.issuers.internal_ca import write_crl

    config = select_issuer(context.config, args.issuer)
    path = write_crl(config, pki.now_utc())
    print(f"CRL written to {path}")
    if args.out:
        source = config.ca_dir / CRL_DER if args.out.suffix in {".der", ".crl"} else path
        _write_output(args.out, source.read_bytes())
        print(f"copied to {args.out}")
    return 0


def run_export(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.issuers.internal_ca import export_bundle

    bundle = export_bundle(select_issuer(context.config, args.issuer), args.with_intermediate)
    if args.out:
        _write_output(args.out, bundle)
    else:
        sys.stdout.write(bundle.decode())
    return 0


def run_status(args: argparse.Namespace, context: Context) -> int:
    from certkeeper import pki
    from certkeeper.issuers.internal_ca import ca_status

    status = ca_status(select_issuer(context.config, args.issuer), pki.now_utc())
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    print(f"issuer {status.issuer} ({status.ca_dir})")
    print(f"  root:         {status.root_subject}, expires {status.root_not_after:%Y-%m-%d} "
          f"({status.root_days_left} days), key {'offline' if status.root_key_offline else 'in ca_dir'}")
    print(f"  intermediate: {status.intermediate_subject}, expires {status.intermediate_not_after:%Y-%m-%d} "
          f"({status.intermediate_days_left} days){'; ROLLOVER DUE' if status.rollover_due else ''}")
    print(f"  issued {status.issued}, revoked {status.revoked}, active {status.active}")
    if status.crl_next_update:
        print(f"  CRL next update {status.crl_next_update:%Y-%m-%d %H:%M} UTC")
    return 0


def _write_output(path: Path, data: bytes) -> None:
    from certkeeper.errors import InputError
    from certkeeper.store.atomic import write_atomic

    try:
        # Public material (certificates, CRLs): world-readable is what clients need.
        write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise InputError(str(path), f"cannot write it ({exc.strerror})") from None
