"""``check_certkeeper``: certkeeper's probe behind check_ssl_cert's options, status line, perfdata and exit codes.

A drop-in for an Icinga/Nagios service that runs ``check_ssl_cert -H mail.example.org -p 465 -P smtps -w 20
-c 15``: the same options (those that make sense for mail), the same ``SSL_CERT OK - ...`` line, the same
``days_chain_elemN=DAYS;WARN;CRIT;;`` perfdata and the same exit codes.  Checked side by side against Debian
12's check_ssl_cert 2.60.0 (``tests/test_check_ssl_cert_parity.py``).  What it judges is certkeeper's probe
(:mod:`certkeeper.probe`), so it also names ``chain-incomplete`` and checks the host name on STARTTLS.

This module is pure: options in, :class:`~certkeeper.probe.ProbeOptions` and a target out; a
:class:`~certkeeper.probe.ProbeResult` in, the plugin's line and exit code out.  The console script's argument
parsing is :mod:`certkeeper.cli.check_certkeeper`.

Where check_ssl_cert 2.60 differs from what one might expect
    ``-N`` is ``--host-cn`` (match the host name, on by default), not SNI; ``--sni NAME`` sets SNI.  Days are
    truncated toward zero, with no decimals when ``-w`` and ``-c`` are whole numbers and two otherwise
    (``--precision``).  Defaults are ``-w 20 -c 15``, port 443, protocol https, timeout 120 s.  It has no
    scaling of thresholds for short-lived certificates; certkeeper's probe scales them (see
    :mod:`certkeeper.probe.judge`) unless ``--no-scale`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from certkeeper.probe import ProbeOptions, ProbeResult, worst_status
from certkeeper.probe.report import plugin_text
from certkeeper.probe.result import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_EXPIRING,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_TRUSTED,
    CHAIN_INCOMPLETE,
    EXIT_CODES,
    SELF_SIGNED,
    WEAK_SIGNATURE,
    CertificateSummary,
)
from certkeeper.probe.verdict import problem_message
from certkeeper.targets import PROTOCOLS, Target
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.probe.result import KeyTypeChoice, OldTlsVersion

SHORTNAME = "SSL_CERT"  # check_ssl_cert's, so service output parsers and notification templates still match
# check_ssl_cert's -P values for mail (and its default, https); it has no "submission": 587 is -P smtp -p 587.
PROTOCOL_CHOICES = ("smtp", "smtps", "imap", "imaps", "pop3", "pop3s", "sieve", "https")
DEFAULT_WARNING = 20.0
DEFAULT_CRITICAL = 15.0
DEFAULT_TIMEOUT = 120.0
DEFAULT_PORTS = {"https": 443, "smtp": 25, "smtps": 465, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995,
                 "sieve": 4190}

# check_ssl_cert's --ignore-* switches -> the finding codes they silence.
IGNORES: dict[str, frozenset[str]] = {
    "ignore_exp": frozenset({CERTIFICATE_EXPIRED, CERTIFICATE_EXPIRING}),
    "ignore_host_cn": frozenset({CERTIFICATE_HOST_MISMATCH}),
    "ignore_incomplete_chain": frozenset({CHAIN_INCOMPLETE}),
    "ignore_sig_alg": frozenset({WEAK_SIGNATURE}),
    "selfsigned": frozenset({SELF_SIGNED}),
    # -A: "ignore authority warnings (expiration only)"
    "noauth": frozenset({CERTIFICATE_NOT_TRUSTED, CHAIN_INCOMPLETE, SELF_SIGNED, CERTIFICATE_HOST_MISMATCH}),
}


@frozen
class PluginOptions:
    """check_ssl_cert's options as ``check_certkeeper`` understands them."""

    host: str
    port: int | None = None
    protocol: str = "https"
    warning: float = DEFAULT_WARNING
    critical: float = DEFAULT_CRITICAL
    sni: str | None = None
    match: str | None = None  # -n/--cn, -m/--match: the name the certificate must carry (default: the host)
    rootcert: Path | None = None
    key_type: KeyTypeChoice | None = None
    timeout: float = DEFAULT_TIMEOUT
    ignored: frozenset[str] = frozenset()
    scale: bool = True
    resolve: tuple[str, ...] = ()  # --resolve IP[,IP]: connect there instead of every address of the host
    precision: int | None = None
    no_perf: bool = False
    refuse_tls: tuple[OldTlsVersion, ...] = ()  # --require-no-tls1, --require-no-tls1_1


def target_for(options: PluginOptions) -> Target:
    """The endpoint to probe, written as ``smtp://host:587``."""
    protocol = options.protocol
    if protocol not in PROTOCOLS:
        msg = f"-P {options.protocol}: not a protocol check_certkeeper speaks ({', '.join(PROTOCOL_CHOICES)})"
        raise ValueError(msg)
    port = options.port if options.port is not None else DEFAULT_PORTS[options.protocol]
    host = options.host.strip("[]").lower()
    shown = f"[{host}]" if ":" in host else host
    return Target(text=f"{protocol}://{shown}:{port}", host=host, port=port, protocol=protocol)


def probe_options(options: PluginOptions) -> ProbeOptions:
    """What to ask of the probe.  The name verified is ``-n``/``-m``, else ``--sni``, else the host."""
    if options.critical < 0 or options.warning < options.critical:
        msg = f"-c ({options.critical:g}) must be between 0 and -w ({options.warning:g})"
        raise ValueError(msg)
    if not options.timeout > 0:
        msg = "-t must be more than 0 seconds"
        raise ValueError(msg)
    name = options.match or options.sni
    return ProbeOptions(timeout=options.timeout, servername=name, ca_file=options.rootcert,
                        warning_days=options.warning, critical_days=options.critical,
                        scale_thresholds=options.scale, key_type=options.key_type, refuse_tls=options.refuse_tls)


def ignored_codes(switches: Iterable[str]) -> frozenset[str]:
    """The union of what each given ``--ignore-*``-style switch silences."""
    codes: set[str] = set()
    for switch in switches:
        codes |= IGNORES[switch]
    return frozenset(codes)


def precision_for(options: PluginOptions) -> int:
    """check_ssl_cert's ``--precision`` default: 0 when -w and -c are whole numbers, 2 otherwise."""
    if options.precision is not None:
        return options.precision
    return 0 if float(options.warning).is_integer() and float(options.critical).is_integer() else 2


def days_shown(days_left: float, precision: int) -> str:
    """Days truncated toward zero to ``precision`` decimals, as check_ssl_cert's ``bc`` computes them."""
    factor = 10 ** precision
    value = math.trunc(days_left * factor) / factor
    return f"{value:.{precision}f}"


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def perfdata(result: ProbeResult, precision: int) -> str:
    return " ".join(
        f"days_chain_elem{index}={days_shown(s.days_left, precision)};{_number(s.warning_days)};"
        f"{_number(s.critical_days)};;"
        for index, s in enumerate(result.chain, 1)
    )


def _openssl_date(moment: datetime) -> str:
    """``Mar  1 12:00:00 2027 GMT``: how openssl (and so check_ssl_cert) writes notAfter."""
    moment = moment.astimezone(UTC)
    return f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S %Y} GMT"


def _earliest(result: ProbeResult) -> CertificateSummary | None:
    """The served certificate expiring first: check_ssl_cert's "expires in" is the chain's minimum."""
    return min(result.chain, key=lambda s: s.not_after, default=result.certificate)


def worst_result(results: Sequence[ProbeResult], options: PluginOptions) -> ProbeResult:
    """Of one probe per address of the host, the one to report: the worst after the ``--ignore-*`` switches
    (the first of equals), so one address serving an old certificate cannot hide behind another."""
    def rank(result: ProbeResult) -> int:
        return EXIT_CODES[worst_status([f.severity for f in result.findings if f.code not in options.ignored])]

    return max(results, key=rank)


def plugin_output(result: ProbeResult, options: PluginOptions, *, addresses: int = 1) -> tuple[str, int]:
    """The status line (with perfdata) and the exit code, after the ``--ignore-*`` switches.  With several
    addresses probed, a problem names the address it was seen at."""
    findings = [f for f in result.findings if f.code not in options.ignored]
    status = worst_status([f.severity for f in findings])
    precision = precision_for(options)
    data = "" if options.no_perf else perfdata(result, precision)
    target = result.target
    leaf = result.certificate
    if status == "OK" and leaf is not None:
        earliest = _earliest(result) or leaf
        text = (f"{SHORTNAME} OK - {target.address}, {options.protocol}, x509 certificate '{leaf.subject}' from "
                f"'{leaf.issuer}' valid until {_openssl_date(earliest.not_after)} "
                f"(expires in {days_shown(earliest.days_left, precision)} days)")
    else:
        who = leaf.subject if leaf is not None else (options.sni or options.host)
        where = f"[{result.address}] " if addresses > 1 and result.address else ""
        text = f"{SHORTNAME} {status} {who}: {where}{problem_message(findings, leaf)}"
    # A "|" in the text would start the perfdata: servers choose the certificate names we print.
    text = plugin_text(text)  # servers choose the certificate names and the replies
    return (f"{text}|{data}" if data else text), EXIT_CODES[status]

