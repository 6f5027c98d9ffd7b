"""``certkeeper setup postfix|dovecot --certificate NAME [--apply]``: configure a daemon to serve certkeeper's files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper.cli.context import Context

if TYPE_CHECKING:
    from certkeeper.mailserver.setup import CertificateFiles

ORDER = 26

DESCRIPTION = """\
Print the configuration that makes the daemon serve certkeeper's current files for NAME (both key types when
NAME has two): Postfix gets smtpd_tls_chain_files (combined.pem), SMTPS on --smtps-port with implicit TLS
(RFC 8314), STARTTLS required before AUTH on --submission-port, STARTTLS offered on 25, a TLS 1.2 floor;
Dovecot gets a conf.d snippet with ssl_cert/ssl_key, the TLS 1.2 floor and IMAPS on --imaps-port.  Also prints
what to add to certkeeper.toml (reload hook, endpoints).

With --apply: back up the configuration, apply it, validate it (postfix check / doveconf -n, new ports free),
reload, probe every listener until it serves the current certificate, and restore the backup and reload again
if anything fails.  Exit status: 0 applied and verified (or printed), 1 failed and rolled back.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("setup", help="configure Postfix or Dovecot to serve a certificate",
                                   parents=[common], description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("daemon", choices=("postfix", "dovecot"))
    parser.add_argument("--certificate", metavar="NAME", required=True, help="a [certificates.NAME] of certkeeper")
    parser.add_argument("--apply", action="store_true", help="apply, reload and verify (rolled back on failure)")
    parser.add_argument("--postfix-config", metavar="DIR", type=Path, help="Postfix instance (default /etc/postfix)")
    parser.add_argument("--dovecot-config", metavar="FILE", type=Path,
                        help="Dovecot configuration (default /etc/dovecot/dovecot.conf)")
    parser.add_argument("--dovecot-snippet", metavar="FILE", type=Path,
                        help="where to write the Dovecot snippet (default conf.d/99-certkeeper.conf)")
    parser.add_argument("--smtps-port", metavar="PORT", type=int, default=465, help="implicit TLS submission (465)")
    parser.add_argument("--submission-port", metavar="PORT", type=int, default=587, help="STARTTLS submission (587)")
    parser.add_argument("--imaps-port", metavar="PORT", type=int, default=993, help="IMAPS (993)")
    parser.add_argument("--verify-timeout", metavar="SECONDS", type=float, default=30.0,
                        help="how long listeners may take to serve the certificate after the reload (30)")
    parser.set_defaults(handler=run_setup)


def run_setup(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.mailserver import config as mailconf
    from certkeeper.mailserver import setup as setup_mail
    from certkeeper.pki import now_utc

    files = _certificate_files(context, args.certificate)
    if args.daemon == "postfix":
        postfix = mailconf.read_postfix(args.postfix_config)
        config_path = postfix.config_dir
        plan = setup_mail.plan_postfix(postfix, files, smtps_port=args.smtps_port,
                                       submission_port=args.submission_port)
        planned = {args.smtps_port: "smtps", args.submission_port: "smtp"}
        endpoints = [(x.protocol, x.port) for x in mailconf.postfix_listeners(postfix) if x.port not in planned]
        endpoints += [(protocol, port) for port, protocol in planned.items()]
    else:
        dovecot = mailconf.read_dovecot(args.dovecot_config)
        config_path = dovecot.config_file
        plan = setup_mail.plan_dovecot(dovecot, files, imaps_port=args.imaps_port, snippet_path=args.dovecot_snippet)
        endpoints = [(x.protocol, x.port) for x in mailconf.dovecot_listeners(dovecot) if x.port != args.imaps_port]
        endpoints.append(("imaps", args.imaps_port))
    print(f"# {args.daemon}: serve certkeeper's {files.name} ({', '.join(str(f) for f in files.folders)})")
    sys.stdout.write(plan.text())
    print("\n# certkeeper.toml")
    sys.stdout.write(setup_mail.certkeeper_snippet(files, args.daemon, endpoints, config_path))
    if not args.apply:
        print("\n# nothing changed; run again with --apply to apply, reload and verify")
        return 0
    outcome = setup_mail.apply_plan(plan, config_path=config_path, files=files, now=now_utc(),
                                    verify_timeout=args.verify_timeout)
    print()
    for step in outcome.steps:
        print(f"setup: {step}")
    if outcome.ok:
        print(f"setup: {args.daemon} serves {files.name} on every listener")
        return 0
    print("setup: failed; the previous configuration is back"
          + ("" if outcome.serving_after_rollback else " but NOT every listener answers: check the daemon now"),
          file=sys.stderr)
    return 1


def _certificate_files(context: Context, name: str) -> CertificateFiles:
    from certkeeper.errors import CertkeeperError
    from certkeeper.mailserver.setup import CertificateFiles
    from certkeeper.store.versions import CertificateHome

    certificate = context.config.certificates.get(name)
    if certificate is None:
        known = ", ".join(context.config.certificates) or "none"
        msg = f"no certificate {name!r} in {context.config.path} (certificates: {known})"
        raise CertkeeperError(msg)
    home = CertificateHome(context.config.settings.state_dir, name)
    current = home.current()
    if current is None:
        msg = f"{name} has no installed version yet: run certkeeper renew {name} first"
        raise CertkeeperError(msg)
    folders = tuple(home.current_link / pair.directory.name if len(current.pairs) > 1 else home.current_link
                    for pair in current.pairs)
    return CertificateFiles(name, folders, current.fingerprints, certificate.domains)
