"""``certkeeper check``: probe mail TLS endpoints and judge their certificates, as a Nagios plugin would."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from certkeeper.cli import configure_logging
from certkeeper.cli.context import Context
from certkeeper.cli.quick import QuickLine
from certkeeper.errors import InputError
from certkeeper.targets import STARTTLS_CHOICES, Target, encode_host_name, parse_target

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from certkeeper.cli.quick import Arguments
    from certkeeper.probe.result import ProbeOptions, ProbeResult

ORDER = 20

# Monitoring-plugins guidelines: invalid arguments are UNKNOWN (3), never CRITICAL (2, argparse's default).
EXIT_UNKNOWN = 3

DESCRIPTION = """\
Connect to each endpoint, upgrade to TLS (implicit, or STARTTLS per RFC 3207 / RFC 2595 / RFC 5804), and judge
the certificate chain it serves: days left on the leaf and on every served certificate, not-yet-valid, chain
verification against the system store or --ca-file, host name (SAN) against the target host or --servername,
missing intermediate, self-signed, weak key or signature.

TARGET is host:port or a URL: smtps://host:465, smtp://host:587 or :25 (STARTTLS), imaps://, imap://, pop3s://,
pop3://, sieve://host:4190.  A bare host:port takes the protocol of its well-known port; --starttls overrides
it for other ports.  IPv6 literals go in brackets: smtp://[2001:db8::25]:25.

Thresholds: a certificate is WARNING with --warning days left and CRITICAL with --critical days left.  A
short-lived certificate (lifetime under 4 x --warning, 84 days by default) gets thresholds scaled by
lifetime / (4 x --warning): with the defaults it warns when a quarter of its lifetime is left and is critical
when a twelfth is left (a 160-hour certificate: 40 and 13.3 hours), after certkeeper's default renewal point.
--no-scale uses the thresholds as given.
-c is the configuration file here, as in every certkeeper command: a number given to -c or -w is refused
(write --critical DAYS / --warning DAYS, or use check_certkeeper, which takes check_ssl_cert's -c and -w).

Output: one Nagios plugin line per target with perfdata days_chain_elemN=days;warn;crit;; (or --json).  The
exit status is the worst over all targets: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.  An endpoint that cannot
be reached, times out, lacks or refuses STARTTLS, or fails the TLS handshake is CRITICAL; UNKNOWN means
invalid arguments or an internal error.  -v adds the protocol dialogue and the chain after each line.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    import argparse

    from certkeeper.cli.parser import HelpFormatter

    parser = subparsers.add_parser(
        "check", help="probe mail TLS endpoints (Nagios plugin output)", parents=[common],
        description=DESCRIPTION, formatter_class=HelpFormatter,
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="host:port or URL (smtps://host, ...)")
    parser.add_argument("--file", metavar="LIST", action="append",
                        help="read targets from LIST, one per line, '#' starts a comment; '-' is stdin")
    parser.add_argument("--starttls", choices=STARTTLS_CHOICES,
                        help="protocol for bare host:port targets on non-standard ports (none = implicit TLS)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--servername", metavar="NAME", help="name to send as SNI and to verify (default: the host)")
    names.add_argument("--no-sni", action="store_true",
                       help="send no SNI, as many sending MTAs on port 25 do (the host name is still verified)")
    # As given (a str): one check takes no pathlib (issue 23); the engine makes it a Path.
    parser.add_argument("--ca-file", metavar="PEM", help="trust anchors (default: the system store)")
    parser.add_argument("--warning", metavar="DAYS", type=float, help="WARNING threshold (21)")
    parser.add_argument("--critical", metavar="DAYS", type=float, help="CRITICAL threshold (7)")
    parser.add_argument("--require-no-tls1", action="store_true", help="CRITICAL if the server accepts TLS 1.0")
    parser.add_argument("--require-no-tls1_1", action="store_true", help="CRITICAL if the server accepts TLS 1.1")
    parser.add_argument("--no-scale", action="store_true",
                        help="use --warning and --critical as given for short-lived certificates too")
    # check_ssl_cert's -w DAYS: only caught, to say what to write instead (see _misplaced_days).
    parser.add_argument("-w", dest="short_warning", metavar="DAYS", help=argparse.SUPPRESS)
    parser.add_argument("--key-type", choices=("rsa", "ecdsa", "all"),
                        help="fetch the RSA or the ECDSA certificate of a dual-certificate server (offering only "
                             "that authentication in TLS 1.2), or both and judge both (default: what the "
                             "server picks)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float,
                        help="deadline for each whole target: connect, dialogue and handshakes (10)")
    parser.add_argument("--concurrency", metavar="N", type=int, help="targets probed at once (50)")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per target")
    parser.add_argument("--dane", action="store_true",
                        help="look up the TLSA records of _PORT._tcp.HOST (RFC 7672) and report whether the served "
                             "certificate matches them (tlsa-invalid otherwise) and whether the answer was "
                             "DNSSEC-validated (the AD bit); SMTP targets are probed without SNI as well")
    parser.add_argument("--resolver", metavar="HOST[:PORT]",
                        help="the DNS resolver for --dane, --mta-sts and --caa (default: the first nameserver in "
                             "/etc/resolv.conf; for --caa the issuer's caa_resolver first)")
    parser.add_argument("--mta-sts", metavar="DOMAIN", action="append", dest="mta_sts",
                        help="check DOMAIN's MTA-STS (RFC 8461) as a sender would: the _mta-sts TXT record, the "
                             "policy over HTTPS from mta-sts.DOMAIN (certificate verified for that name, --ca-file "
                             "applies), its syntax, and every MX host on port 25 with STARTTLS against the policy's "
                             "mx patterns; findings in RFC 8460 words (sts-policy-fetch-error, sts-policy-invalid, "
                             "sts-webpki-invalid, certificate-host-mismatch, starttls-not-supported, ...)")
    parser.add_argument("--caa", action="store_true",
                        help="instead of probing: the CAA pre-flight (RFC 8659, RFC 8657) of every ACME certificate "
                             "of the configuration, as an order runs it; CRITICAL when a record forbids the CA, "
                             "this account or this challenge")
    parser.set_defaults(**_defaults())
    parser.usage_status = EXIT_UNKNOWN


def _defaults() -> dict[str, object]:
    """What a line that names nothing gives, for both readers of the line: argparse (set on its parser, so these
    are the defaults its help and parsing use) and :data:`QUICK`.  ``own_logging``: the lean path of one
    endpoint logs nothing, and logging is imported only for the full engine."""
    return {"targets": [], "file": [], "starttls": "auto", "servername": None, "no_sni": False, "ca_file": None,
            "warning": 21.0, "critical": 7.0, "require_no_tls1": False, "require_no_tls1_1": False,
            "no_scale": False, "short_warning": None, "key_type": None, "timeout": 10.0, "concurrency": 50,
            "json": False, "dane": False, "resolver": None, "mta_sts": [], "caa": False,
            "handler": run_check, "usage_status": EXIT_UNKNOWN, "own_logging": True}


# The line as monitoring systems write it, read without argparse (certkeeper.cli.quick): each option of register's
# parser by its whole name, but -h and the common -c and -v, which the quick reader knows itself.
QUICK = QuickLine(
    positional="targets",
    valued={"--file": ("file", str, None), "--starttls": ("starttls", str, STARTTLS_CHOICES),
            "--servername": ("servername", str, None), "--ca-file": ("ca_file", str, None),
            "--warning": ("warning", float, None), "--critical": ("critical", float, None),
            "-w": ("short_warning", str, None), "--key-type": ("key_type", str, ("rsa", "ecdsa", "all")),
            "--timeout": ("timeout", float, None), "--concurrency": ("concurrency", int, None),
            "--resolver": ("resolver", str, None), "--mta-sts": ("mta_sts", str, None)},
    flags={"--no-sni": "no_sni", "--require-no-tls1": "require_no_tls1", "--require-no-tls1_1": "require_no_tls1_1",
           "--no-scale": "no_scale", "--json": "json", "--dane": "dane", "--caa": "caa"},
    defaults=_defaults,
    exclusive=(("servername", "no_sni"),),
)


class _BadArguments(Exception):
    pass


def run_check(args: Arguments, context: Context) -> int:
    if args.caa or args.mta_sts:
        configure_logging(args.verbose)
    if args.caa:
        return _run_caa(args, context)
    if args.mta_sts:
        if args.targets or args.file:
            print("certkeeper check: --mta-sts takes domains, not TARGET arguments or --file", file=sys.stderr)
            return EXIT_UNKNOWN
        return _run_mta_sts(args)
    try:
        _misplaced_days(args)
        targets = _targets(args)
        options = _options(args)
    except _BadArguments as exc:
        print(f"certkeeper check: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN

    now = datetime.now(UTC)  # the shell's clock, as pki.now_utc (not imported: it loads cryptography)
    try:
        results = _probe(targets, options, args, now=now)
    except InputError as exc:  # an unreadable --ca-file is a bad argument: UNKNOWN
        print(f"certkeeper check: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    _print(results, args)
    return max(result.exit_code for result in results)


def _probe(targets: list[Target], options: ProbeOptions, args: Arguments, *,
           now: datetime) -> list[ProbeResult]:
    """One endpoint without --dane: the lean probe (certkeeper.probe.lean: no asyncio, pyOpenSSL or
    cryptography), unless it hands the endpoint to the engine, whose deadline then counts from the lean path's
    start.  Anything else: the engine, and the DANE judge with --dane."""
    from certkeeper.probe import lean

    tried = not args.dane and lean.covers(options, targets)
    begun = time.monotonic()
    answer = lean.check_one(targets[0], options, now=now) if tried else None
    if answer is not None:
        return [answer]
    configure_logging(args.verbose)
    from certkeeper.probe.engine import probe_sync

    results = probe_sync(targets, options, now=now, concurrency=args.concurrency, begun=begun if tried else None)
    if args.dane:
        from certkeeper.dane.judge import check_dane

        results = check_dane(results, options, now=now, resolver=args.resolver, concurrency=args.concurrency)
    return results


def _print(results: list[ProbeResult], args: Arguments) -> None:
    """Nagios lines (with -v, each target's findings and transcript as its long output), or --json's array."""
    from certkeeper.probe.report import nagios_line, plugin_text, result_to_json

    if args.json:
        _write_json_array(result_to_json(result) for result in results)
        return
    lines = []
    for result in results:
        lines.append(nagios_line(result))
        if args.verbose:
            # Nagios's long output, made of what servers said: worded as the status line is
            lines += [plugin_text(f"  {f.severity} {f.code}: {f.message}") for f in result.findings]
            lines += [plugin_text(f"  {line}") for line in result.transcript]
    sys.stdout.write("\n".join(lines) + "\n")


def _write_json_array(objects: Iterable[object]) -> None:
    """A JSON array with one object per line: what ``json.dump(indent=2)`` held, written by the C encoder (the
    indenting one is pure Python: a tenth of a 5,000-endpoint run), one line per target, in writes of about
    64 KiB (an unbuffered stdout, ``PYTHONUNBUFFERED``, would otherwise make a system call of every line)."""
    import json

    chunk: list[str] = []
    size = 0
    separator = "[\n"
    for item in objects:
        line = separator + json.dumps(item)
        separator = ",\n"
        chunk.append(line)
        size += len(line)
        if size >= 65536:
            sys.stdout.write("".join(chunk))
            chunk, size = [], 0
    chunk.append("[\n]\n" if separator == "[\n" else "\n]\n")
    sys.stdout.write("".join(chunk))


def _run_mta_sts(args: Arguments) -> int:
    try:
        options = _options(args)
    except _BadArguments as exc:
        print(f"certkeeper check: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    from certkeeper.mtasts.check import check_domain, nagios_line, report_to_json
    from certkeeper.mtasts.resolve import LookupFailed, Resolver
    from certkeeper.pki import now_utc
    from certkeeper.probe.report import plugin_text

    try:
        resolver = Resolver(args.resolver, timeout=options.timeout)
    except LookupFailed as exc:
        print(f"certkeeper check: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    try:
        if options.ca_file is not None:
            from certkeeper.probe import load_trust_anchors

            load_trust_anchors(options.ca_file)  # unreadable: a bad argument, before anything is asked
        reports = [check_domain(domain, resolver=resolver, ca_file=options.ca_file, timeout=options.timeout,
                                now=now_utc(), warning_days=options.warning_days,
                                critical_days=options.critical_days)
                   for domain in args.mta_sts]
    except InputError as exc:  # an unreadable --ca-file is a bad argument: UNKNOWN
        print(f"certkeeper check: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    if args.json:
        import json

        json.dump([report_to_json(report) for report in reports], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        lines = []
        for report in reports:
            lines.append(nagios_line(report))
            if args.verbose:
                findings = [*report.findings, *(f for mx in report.mx for f in mx.findings)]
                lines += [plugin_text(f"  {f.severity} {f.code}: {f.message}") for f in findings]
        sys.stdout.write("\n".join(lines) + "\n")
    return max(report.exit_code for report in reports)


def _run_caa(args: Arguments, context: Context) -> int:
    from certkeeper.app import check_caa

    verdicts = check_caa(context.config, resolver=args.resolver)
    rows = [{"certificate": name, "identifier": v.identifier, "allowed": v.allowed, "owner": v.owner,
             "records": [r.text for r in v.records], "problem": v.problem} for name, v in verdicts]
    if args.json:
        import json

        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for name, verdict in verdicts:
            print(f"CAA {'OK' if verdict.allowed else 'CRITICAL'} - {name}: {verdict.describe()}")
    return 2 if any(not v.allowed for _, v in verdicts) else 0
_DAYS = re.compile(r"[0-9]+(\.[0-9]+)?")


def _misplaced_days(args: Arguments) -> None:
    """``-c 90`` / ``-w 30`` written as for check_ssl_cert: an error, never a configuration path read as "90"."""
    config = getattr(args, "config", None)
    if config is not None and _DAYS.fullmatch(config):
        msg = (f"-c {config}: -c is the configuration file in certkeeper check; for a CRITICAL threshold in days "
               f"write --critical {config} (check_certkeeper takes -c {config})")
        raise _BadArguments(msg)
    if args.short_warning is not None:
        msg = (f"-w {args.short_warning}: for a WARNING threshold in days write --warning {args.short_warning} "
               f"(check_certkeeper takes -w {args.short_warning})")
        raise _BadArguments(msg)


def _targets(args: Arguments) -> list[Target]:
    texts = [(text, "command line") for text in args.targets]
    for name in args.file:
        texts += _read_list(name)
    if not texts:
        msg = "no targets: give TARGET arguments or --file LIST"
        raise _BadArguments(msg)
    targets = []
    for text, where in texts:
        try:
            targets.append(parse_target(text, args.starttls))
        except ValueError as exc:
            msg = f"{where}: {exc}"
            raise _BadArguments(msg) from None
    return targets


def _read_list(name: str) -> list[tuple[str, str]]:
    try:
        from pathlib import Path  # --file runs the engine, which has it loaded already

        content = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"--file {name}: cannot read it ({exc})"
        raise _BadArguments(msg) from None
    entries = []
    for number, line in enumerate(content.splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            entries.append((text, f"{name}:{number}"))
    return entries


def _check_servername(name: str) -> None:
    """A name SNI can carry (RFC 6066 section 3: a DNS host name): labels of 1 to 63 octets, 253 in all; checked
    here so that ``a..b`` is a usage error, not the IDNA codec's UnicodeError deep in the handshake."""
    try:
        encoded = encode_host_name(name.rstrip("."))
    except UnicodeError as exc:
        msg = f"--servername {name!r}: not a host name ({exc})"
        raise _BadArguments(msg) from None
    labels = encoded.split(b".")
    if not encoded or len(encoded) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        msg = f"--servername {name!r}: not a host name (labels of 1 to 63 characters, at most 253 in all)"
        raise _BadArguments(msg)


def _options(args: Arguments) -> ProbeOptions:
    from certkeeper.probe.result import ProbeOptions, refused_versions

    if args.warning < 0 or args.critical < 0 or args.critical > args.warning:
        msg = f"--critical ({args.critical:g}) must be between 0 and --warning ({args.warning:g})"
        raise _BadArguments(msg)
    if not args.timeout > 0:
        msg = "--timeout must be more than 0 seconds"
        raise _BadArguments(msg)
    if args.concurrency < 1:
        msg = "--concurrency must be at least 1"
        raise _BadArguments(msg)
    if args.ca_file == "":  # as a str, nothing is no file (a Path made it ".", the current folder)
        msg = "--ca-file must name a PEM file of trust anchors"
        raise _BadArguments(msg)
    if args.servername is not None:
        _check_servername(args.servername)
    return ProbeOptions(
        timeout=args.timeout,
        servername=args.servername,
        sni=not args.no_sni,
        ca_file=args.ca_file,
        warning_days=args.warning,
        critical_days=args.critical,
        scale_thresholds=not args.no_scale,
        refuse_tls=refused_versions(no_tls1=args.require_no_tls1, no_tls1_1=args.require_no_tls1_1),
        key_type=args.key_type,
        verbose=bool(args.verbose),
    )
