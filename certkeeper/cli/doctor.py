"""``certkeeper doctor``: why can a client not connect?  The daemons' configuration, files and wire, joined.

The shell around :mod:`certkeeper.mailserver.doctor`: read the daemons' effective configuration, the files they name and
certkeeper's installed versions, probe every listener, then hand it all to the pure judgement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper.cli.context import Context
from certkeeper.cli.parser import HelpFormatter, add_mail_config_argument

if TYPE_CHECKING:
    from certkeeper.mailserver.doctor import Inputs, ManagedCertificate, Report
    from certkeeper.probe import ProbeResult

ORDER = 25

DESCRIPTION = """\
Read the local mail daemons' effective configuration (Postfix: postconf -n/-x/-M/-P; Dovecot: doveconf -a;
Exim: exim [-C FILE] -bP), check every certificate and key file they name (exists, parses, key matches, chain complete
and in order, names cover myhostname and the banner, expiry, modes, managed by certkeeper or a stale copy),
check the TLS settings (submissions on 465 with implicit TLS, 587 requiring STARTTLS before AUTH, TLS 1.2
floor, obsolete settings, SNI maps needing postmap -F), then probe every listener and compare what it serves
with the files on disk.  Every problem comes with the exact command or snippet that fixes it.

Without --postfix-config/--dovecot-config/--exim-config, the default instances are read when installed; with
any of them, only the ones given.  With --mta-sts DOMAIN (and for every [mta_sts.<domain>] configured), also
the domain's MTA-STS as senders see it: TXT record, policy over HTTPS, every MX against the policy, each with
its fix.  Exit status: 0 healthy, 1 warnings only, 2 problems.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "doctor", help="diagnose the mail daemons' TLS configuration, files and served certificates",
        parents=[common], description=DESCRIPTION, formatter_class=HelpFormatter)
    add_mail_config_argument(parser, "postfix", "a Postfix instance (postconf -c DIR)")
    add_mail_config_argument(parser, "dovecot", "a Dovecot configuration (doveconf -c)")
    add_mail_config_argument(parser, "exim", "an Exim configuration (exim -C FILE -bP)")
    parser.add_argument("--exim", metavar="PATH", default="exim", help="the exim binary (default: exim on PATH)")
    parser.add_argument("--ca-file", metavar="PEM", type=Path,
                        help="trust anchors for chain checks (default: the system store)")
    parser.add_argument("--no-probe", action="store_true", help="judge the configuration and files only")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0, help="per listener probe (10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--mta-sts", metavar="DOMAIN", action="append", default=[], dest="mta_sts",
                        help="also check DOMAIN's MTA-STS as senders see it (as check --mta-sts does); every "
                             "[mta_sts.<domain>] of the configuration is checked unless --no-probe")
    parser.add_argument("--resolver", metavar="HOST[:PORT]",
                        help="the DNS resolver for the MTA-STS checks (default: the first nameserver in "
                             "/etc/resolv.conf)")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.mailserver import doctor
    from certkeeper.mailserver.tlsfiles import read_file
    from certkeeper.pki import now_utc
    from certkeeper.probe import load_trust_anchors

    now = now_utc()
    roots, _ = load_trust_anchors(args.ca_file)
    inputs = _read_configs(args)
    inputs = doctor.Inputs(inputs.postfix, inputs.dovecot, inputs.exim, inputs.failures,
                           managed=_managed(context))
    files: dict[Path, Any] = {}
    for _ in range(3):  # SNI map sources name more files: read until nothing new is needed
        missing = doctor.files_needed(_with(inputs, files=files)) - set(files)
        if not missing:
            break
        files.update({path: read_file(path) for path in missing})
    inputs = _with(inputs, files=files)
    if not args.no_probe:
        inputs = _with(inputs, served=_probe(inputs, args, now), probed=True)
    report = doctor.diagnose(inputs, roots=roots, now=now)
    if not args.no_probe:
        report = doctor.with_mta_sts(report, _check_mta_sts(args, context, now))
    report = _with_caa(report, context)
    if args.json:
        json.dump(doctor.report_to_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(doctor.render_text(report))
    return report.exit_code


def _check_mta_sts(args: argparse.Namespace, context: Context, now: Any) -> list[Any]:
    """``check --mta-sts`` for ``--mta-sts`` domains and every configured ``[mta_sts.<domain>]``."""
    domains = list(args.mta_sts)
    if context.config_path.is_file():
        from certkeeper.errors import CertkeeperError

        with contextlib.suppress(CertkeeperError):  # a broken configuration: doctor still diagnoses the daemons
            domains += [d for d in context.config.mta_sts if d not in domains]
    if not domains:
        return []
    from certkeeper.mtasts.check import check_domain
    from certkeeper.mtasts.resolve import LookupFailed, Resolver

    try:
        resolver = Resolver(args.resolver, timeout=args.timeout)
    except LookupFailed as exc:
        print(f"certkeeper doctor: MTA-STS not checked: {exc}", file=sys.stderr)
        return []
    return [check_domain(domain, resolver=resolver, ca_file=args.ca_file, timeout=args.timeout, now=now)
            for domain in domains]


def _with_caa(report: Report, context: Context) -> Report:
    """The CAA pre-flight of the managed ACME certificates whose issuer sets caa_resolver, as ``check --caa``."""
    from certkeeper.app import check_caa
    from certkeeper.errors import CertkeeperError
    from certkeeper.mailserver.doctor import Section
    from certkeeper.mailserver.rules import Diagnosis
    from certkeeper.values import replace

    if not context.config_path.is_file():
        return report
    try:
        verdicts = check_caa(context.config, configured_only=True)
    except CertkeeperError:  # a broken configuration: doctor still diagnoses the daemons, config check says why
        return report
    if not verdicts:
        return report
    title = "CAA (RFC 8659)"
    facts = tuple(f"{name}: {v.describe()}" for name, v in verdicts if v.allowed)
    found = tuple(Diagnosis(title, "caa-forbids-issuance", "problem", f"{name}: {v.describe()}",
                            "change the CAA record as the message says, or the issuer or challenge")
                  for name, v in verdicts if not v.allowed)
    return replace(report, sections=(*report.sections, Section(title, facts)),
                   diagnoses=(*report.diagnoses, *found))


def _with(inputs: Inputs, **changes: Any) -> Inputs:
    from certkeeper.values import replace

    return replace(inputs, **changes)


def _read_configs(args: argparse.Namespace) -> Inputs:
    from certkeeper.errors import MailToolFailed
    from certkeeper.mailserver import config as mailconf
    from certkeeper.mailserver.doctor import Inputs
    from certkeeper.mailserver.exim import read_exim

    explicit = args.postfix_config is not None or args.dovecot_config is not None or args.exim_config is not None
    failures: list[tuple[str, str]] = []
    postfix = dovecot = exim = None
    if args.postfix_config is not None or (not explicit and (mailconf.DEFAULT_POSTFIX_DIR / "main.cf").is_file()
                                            and shutil.which(mailconf.POSTCONF)):
        try:
            postfix = mailconf.read_postfix(args.postfix_config)
        except MailToolFailed as exc:
            failures.append(("postfix", str(exc)))
    if args.dovecot_config is not None or (not explicit and mailconf.DEFAULT_DOVECOT_CONFIG.is_file()
                                            and shutil.which(mailconf.DOVECONF)):
        try:
            dovecot = mailconf.read_dovecot(args.dovecot_config)
        except MailToolFailed as exc:
            failures.append(("dovecot", str(exc)))
    if args.exim_config is not None or (not explicit and shutil.which(args.exim)):
        try:
            exim = read_exim(args.exim_config, binary=args.exim)
        except MailToolFailed as exc:
            failures.append(("exim", str(exc)))
    if postfix is None and dovecot is None and exim is None and not failures:
        failures.append(("mail daemons", "no Postfix, Dovecot or Exim configuration found: give --postfix-config "
                                         "DIR, --dovecot-config FILE or --exim-config FILE"))
    return Inputs(postfix, dovecot, exim, tuple(failures))


def _managed(context: Context) -> tuple[ManagedCertificate, ...]:
    """certkeeper's installed certificates, when a configuration is there; doctor works without one."""
    from certkeeper.errors import CertkeeperError
    from certkeeper.mailserver.doctor import ManagedCertificate
    from certkeeper.store.versions import CertificateHome

    if not context.config_path.is_file():
        return ()
    try:
        config = context.config
        found = []
        for certificate in config.certificates.values():
            home = CertificateHome(config.settings.state_dir, certificate.name)
            current = home.current()
            versions = {pair.fingerprint: version.id for version in home.versions() for pair in version.pairs}
            found.append(ManagedCertificate(
                certificate.name, certificate.domains, home.current_link, current.id if current else None,
                current.fingerprints if current else frozenset(), versions, certificate.reload,
                len(current.pairs) if current else len(certificate.key_types)))
        return tuple(found)
    except CertkeeperError as exc:
        print(f"certkeeper doctor: not comparing with certkeeper's certificates: {exc}", file=sys.stderr)
        return ()


def _probe(inputs: Inputs, args: argparse.Namespace, now: Any) -> dict[str, ProbeResult]:
    """Probe every listener, grouped by the options they need (SNI name, both key types of a dual setup)."""
    from certkeeper.mailserver.doctor import listener_key, listeners, pair_count
    from certkeeper.mailserver.rules import hostnames_for
    from certkeeper.probe import ProbeOptions, probe_sync

    groups: dict[tuple[str | None, bool], list[Any]] = {}
    for listener in listeners(inputs):
        names = hostnames_for(listener)
        groups.setdefault((names[0] if names else None, pair_count(listener, inputs) > 1), []).append(listener)
    served: dict[str, ProbeResult] = {}
    for (servername, dual), members in groups.items():
        options = ProbeOptions(timeout=args.timeout, servername=servername, ca_file=args.ca_file,
                               key_type="all" if dual else None)
        results = probe_sync([member.target for member in members], options, now=now)
        served.update({listener_key(member): result for member, result in zip(members, results, strict=True)})
    return served
