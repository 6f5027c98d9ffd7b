"""``check_certkeeper``: the console script taking check_ssl_cert's options (see certkeeper.monitoring.nagios).

Not a ``certkeeper`` subcommand (no ``register``): monitoring systems call plugins by their own name, with
check_ssl_cert's short options, which clash with certkeeper's ``-c`` (the configuration file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from certkeeper.probe import ProbeOptions, ProbeResult
    from certkeeper.targets import Target

EXIT_UNKNOWN = 3
SWITCHES = ("ignore_exp", "ignore_host_cn", "ignore_incomplete_chain", "ignore_sig_alg", "selfsigned", "noauth")


class _Parser(argparse.ArgumentParser):
    """Usage errors are UNKNOWN (3) with check_ssl_cert's prefix, never argparse's 2 (CRITICAL)."""

    def error(self, message: str) -> NoReturn:
        print(f"SSL_CERT UNKNOWN: {message}")
        raise SystemExit(EXIT_UNKNOWN)


def build_parser() -> argparse.ArgumentParser:
    from certkeeper.monitoring.nagios import (
        DEFAULT_CRITICAL,
        DEFAULT_TIMEOUT,
        DEFAULT_WARNING,
        PROTOCOL_CHOICES,
    )

    parser = _Parser(prog="check_certkeeper", description="Check a mail server's TLS certificate with "
                     "certkeeper's probe; options, output and exit codes as check_ssl_cert's.")
    add = parser.add_argument
    add("-H", "--host", required=True, help="server host name or address")
    add("-p", "--port", type=int, help="TCP port (default: the protocol's, 443 for https)")
    add("-P", "--protocol", choices=PROTOCOL_CHOICES, default="https",
        help="smtp, submission, imap, pop3 and sieve switch to TLS with STARTTLS (default https)")
    add("-w", "--warning", type=float, default=DEFAULT_WARNING, metavar="DAYS", help="WARNING below DAYS (20)")
    add("-c", "--critical", type=float, default=DEFAULT_CRITICAL, metavar="DAYS", help="CRITICAL below DAYS (15)")
    add("--sni", metavar="NAME", help="the TLS SNI to send (and the name to verify unless -n is given)")
    add("-n", "--cn", "-m", "--match", dest="match", metavar="NAME",
        help="the name the certificate must carry (default: --sni, else the host)")
    add("-N", "--host-cn", action="store_true", help="match the host name (always on, as in check_ssl_cert 2.60)")
    add("--altnames", action="store_true", help="match alternative names too (always on)")
    add("-r", "--rootcert", "--rootcert-file", dest="rootcert", type=Path, metavar="PATH",
        help="root certificates (a PEM file) to verify against instead of the system store")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--rsa", dest="key_type", action="store_const", const="rsa", help="fetch the RSA certificate")
    keys.add_argument("--ecdsa", dest="key_type", action="store_const", const="ecdsa",
                      help="fetch the ECDSA certificate")
    add("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="deadline (120)")
    add("--resolve", metavar="IP[,IP]",
        help="connect to IP (or each of several) instead of every A and AAAA address of the host; names are still "
             "checked against the host")
    add("--precision", type=int, choices=range(0, 7), metavar="DIGITS",
        help="decimals of days (default 0 when -w and -c are whole numbers, 2 otherwise)")
    add("--no-scale", action="store_true",
        help="thresholds as given for short-lived certificates too (by default they scale with the lifetime "
             "below 3 x -w days, as certkeeper check does; check_ssl_cert never scales)")
    add("--ignore-exp", action="store_true", help="ignore the expiration date")
    add("--ignore-host-cn", action="store_true", help="do not complain if the name does not match")
    add("--ignore-incomplete-chain", action="store_true", help="do not check chain integrity")
    add("--ignore-sig-alg", action="store_true", help="do not refuse SHA-1 or MD5 signatures")
    add("-s", "--selfsigned", action="store_true", help="allow self-signed certificates")
    add("-A", "--noauth", action="store_true", help="ignore authority warnings (expiration only)")
    add("--require-no-tls1", action="store_true", help="CRITICAL if TLS 1.0 is accepted")
    add("--require-no-tls1_1", action="store_true", help="CRITICAL if TLS 1.1 is accepted")
    add("--no-perf", action="store_true", help="no performance data")
    add("-v", "--verbose", action="count", default=0, help="each finding on a line of its own")
    add("-q", "--quiet", action="store_true", help="no output, only the exit code")
    add("-V", "--version", action="store_true", help="print the version and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in ("-V", "--version"):
        import certkeeper

        print(f"check_certkeeper (certkeeper) {certkeeper.__version__}")
        return 0
    args = build_parser().parse_args(arguments)

    from certkeeper.errors import InputError
    from certkeeper.monitoring.nagios import (
        PluginOptions,
        ignored_codes,
        plugin_output,
        probe_options,
        target_for,
        worst_result,
    )
    from certkeeper.probe.report import plugin_text
    from certkeeper.probe.result import refused_versions

    options = PluginOptions(
        host=args.host, port=args.port, protocol=args.protocol, warning=args.warning, critical=args.critical,
        sni=args.sni, match=args.match, rootcert=args.rootcert, key_type=args.key_type, timeout=args.timeout,
        ignored=ignored_codes(s for s in SWITCHES if getattr(args, s)), scale=not args.no_scale,
        resolve=tuple(a.strip().strip("[]") for a in args.resolve.split(",") if a.strip()) if args.resolve else (),
        precision=args.precision, no_perf=args.no_perf,
        refuse_tls=refused_versions(no_tls1=args.require_no_tls1, no_tls1_1=args.require_no_tls1_1),
    )
    try:
        target = target_for(options)
        probing = probe_options(options)
    except ValueError as exc:
        print(f"SSL_CERT UNKNOWN: {exc}")
        return EXIT_UNKNOWN
    addresses = list(options.resolve) or _addresses(target.host, target.port)
    try:
        results = _probe_each(target, probing, addresses)
    except InputError as exc:  # an unreadable -r file
        print(f"SSL_CERT UNKNOWN: {exc}")
        return EXIT_UNKNOWN
    line, status = plugin_output(worst_result(results, options), options, addresses=len(addresses))
    if not args.quiet:
        print(line)
        if args.verbose:
            for result in results:
                for finding in result.findings:
                    print(plugin_text(f"  {result.address or target.host} {finding.severity} {finding.code}: "
                                      f"{finding.message}"))
    return status


def _addresses(host: str, port: int) -> list[str]:
    """Every A and AAAA address of ``host`` (a client may land on any); none when it does not resolve, and the
    probe then reports that in words."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _probe_each(target: Target, options: ProbeOptions, addresses: Sequence[str]) -> list[ProbeResult]:
    """One probe per address (or one resolving the host itself), concurrently, with one set of trust anchors; one
    place alone by the lean probe (certkeeper.probe.lean) unless it leaves the endpoint to the engine."""
    from datetime import UTC, datetime

    from certkeeper.probe import lean

    now = datetime.now(UTC)  # the shell's clock (pki.now_utc would load cryptography)
    if len(addresses) <= 1 and lean.covers(options, [target]):  # one place: no asyncio, pyOpenSSL, cryptography
        result = lean.check_one(target, options, now=now, address=addresses[0] if addresses else None)
        if result is not None:
            return [result]
    import asyncio

    from certkeeper.probe.engine import Prober

    async def run() -> list[ProbeResult]:
        prober = Prober(options, now=now)
        places: list[str | None] = list(addresses) or [None]
        return list(await asyncio.gather(*(prober.probe(target, address=a) for a in places)))

    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
