"""The probe's judgements that need no certificate library: thresholds, dates, names, the status line's words
and the :class:`ProbeResult` a probe adds up to.

Pure and light: :mod:`certkeeper.probe.judge` (the engine's, over ``cryptography``) and
:mod:`certkeeper.probe.lean` (one ``certkeeper check`` over the stdlib ``ssl``, with the certificates read by
:mod:`certkeeper.probe.der`) both build their results here, so the two cannot word a verdict differently.
See :mod:`certkeeper.probe.judge` for the threshold scaling of short-lived certificates and the one rounding of
days.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from certkeeper.model import SHORT_LIVED_FACTOR, names_cover
from certkeeper.probe.result import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_EXPIRING,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_YET_VALID,
    SERVED_CERTIFICATE_STALE,
    TIMEOUT,
    CertificateSummary,
    Finding,
    ProbeResult,
    worst_status,
)
from certkeeper.targets import Target
from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from certkeeper.probe.result import Severity

_DAY = 86400.0


@frozen
class ChainJudgement:
    """Everything that depends on the served certificates only; cached per distinct chain and name."""

    chain: tuple[CertificateSummary, ...]
    findings: tuple[Finding, ...]
    chain_valid: bool
    hostname_valid: bool



def thresholds_for(lifetime_days: float, warning_days: float, critical_days: float, *,
                   scale: bool = True) -> tuple[float, float]:
    """(warning, critical) days for a certificate of this lifetime; scaled down for short-lived ones."""
    if scale and warning_days > 0 and 0 < lifetime_days < SHORT_LIVED_FACTOR * warning_days:
        factor = lifetime_days / (SHORT_LIVED_FACTOR * warning_days)
        return warning_days * factor, critical_days * factor
    return warning_days, critical_days


def whole_days(days_left: float) -> int:
    """Whole days left, truncated toward zero (59.99 -> 59, -1.5 -> -1): the one rounding of text and perfdata."""
    return math.trunc(days_left)



def describe(summary: CertificateSummary) -> str:
    """``'mail.example.org' from 'R11' valid until 2027-02-01 (expires in 64 days)``, as the Nagios line says it."""
    until = _minute(summary.not_after)
    return f"'{summary.subject}' from '{summary.issuer}' valid until {until} (expires in {_days(summary.days_left)})"


@lru_cache(maxsize=1024)
def _minute(moment: datetime) -> str:
    # Cached: the results of one run share their certificates (one judgement per distinct chain).
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _days(days: float) -> str:
    if abs(days) >= 2:
        return f"{whole_days(days)} days"
    hours = days * 24
    return f"{hours:.0f} hours" if abs(hours) >= 1 else f"{days * 1440:.0f} minutes"


def hostname_matches(names: Sequence[str], hostname: str) -> bool:
    """RFC 6125 §6.4: exact DNS name or a left-most ``*`` label; IP addresses compare as addresses."""
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return not names_cover(list(names), [hostname.rstrip(".")])
    for name in names:
        try:
            if ipaddress.ip_address(name) == address:
                return True
        except ValueError:
            continue
    return False



def date_finding(summary: CertificateSummary, index: int, now: datetime) -> Finding | None:
    what = "the certificate" if index == 0 else f"chain certificate #{index + 1}"
    who = f"{what} '{summary.subject}' from '{summary.issuer}'"
    if now < summary.not_before:
        return Finding(CERTIFICATE_NOT_YET_VALID, "CRITICAL",
                       f"{who} is not valid before {summary.not_before:%Y-%m-%d %H:%M} UTC")
    if now >= summary.not_after:
        return Finding(CERTIFICATE_EXPIRED, "CRITICAL",
                       f"{who} expired on {summary.not_after:%Y-%m-%d %H:%M} UTC ({_days(-summary.days_left)} ago)")
    # Exact, not the rounded days_left: a certificate living minutes (tests, demos) would read 0 days left
    # against 0 critical days, CRITICAL from its first second.
    left = (summary.not_after - now).total_seconds() / _DAY
    if left <= summary.critical_days or left <= summary.warning_days:
        severity: Severity = "CRITICAL" if left <= summary.critical_days else "WARNING"
        return Finding(CERTIFICATE_EXPIRING, severity,
                       f"{who} expires in {_days(summary.days_left)} ({summary.not_after:%Y-%m-%d %H:%M} UTC)")
    return None



def stale_finding(leaf: CertificateSummary, expected: frozenset[str] | None) -> Finding | None:
    """A managed endpoint that serves something other than what certkeeper installed."""
    if expected is None or leaf.fingerprint_sha256 in expected:
        return None
    return Finding(SERVED_CERTIFICATE_STALE, "CRITICAL",
                   f"the server still serves {leaf.fingerprint_sha256[:16]}... ('{leaf.subject}', serial "
                   f"{leaf.serial}), not the installed certificate: reload the service")



def problem_message(findings: Sequence[Finding], leaf: CertificateSummary | None) -> str:
    """The message part of the status line: the problems, worst first, else the certificate's description."""
    order = {"UNKNOWN": 0, "CRITICAL": 1, "WARNING": 2, "INFO": 3}
    problems = [f for f in findings if f.severity != "INFO"]
    if problems:
        return "; ".join(f"{f.code}: {f.message}" for f in sorted(problems, key=lambda f: order[f.severity]))
    if leaf is not None:
        return describe(leaf)
    return "no certificate received"


@frozen
class Facts:
    """What a summary needs of a certificate, read by ``cryptography`` (the engine) or the DER reader (lean)."""

    subject_name: str  # the subject's first CN, else its whole RFC 4514 name
    issuer: str  # the same of the issuer
    serial: str
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]  # DNS names, then IP addresses
    fingerprint: str
    key_type: str
    spki_sha256: str
    subject_dn: str
    issuer_dn: str


def summarize_facts(facts: Facts, *, now: datetime, warning_days: float, critical_days: float,
                    scale: bool = True) -> CertificateSummary:
    """A served certificate's summary, its thresholds scaled to its lifetime."""
    lifetime = (facts.not_after - facts.not_before).total_seconds() / _DAY
    warning, critical = thresholds_for(lifetime, warning_days, critical_days, scale=scale)
    names = facts.names
    return CertificateSummary(
        # Certificates without a subject CN are common now (RFC 5280 4.2.1.6; Let's Encrypt's short-lived ones):
        # name them by their first SAN rather than as ''.
        subject=facts.subject_name or (names[0] if names else "(no subject name)"),
        issuer=facts.issuer,
        serial=facts.serial,
        not_before=facts.not_before,
        not_after=facts.not_after,
        days_left=(facts.not_after - now).total_seconds() / _DAY,  # exact: whole_days() truncates, JSON rounds
        fingerprint_sha256=facts.fingerprint,
        subject_alternative_names=names,
        key_type=facts.key_type,
        warning_days=round(warning, 6),
        critical_days=round(critical, 6),
        spki_sha256=facts.spki_sha256,
        subject_dn=facts.subject_dn,
        issuer_dn=facts.issuer_dn,
    )


def name_findings(summary: CertificateSummary, hostname: str) -> tuple[bool, Finding | None]:
    """Whether the leaf names ``hostname``, and the finding when it does not."""
    if hostname_matches(summary.subject_alternative_names, hostname):
        return True, None
    names = ", ".join(summary.subject_alternative_names) or "no subject alternative names"
    return False, Finding(CERTIFICATE_HOST_MISMATCH, "CRITICAL", f"the certificate names {names}, not {hostname!r}")


@frozen
class Fetch:
    """One handshake's outcome: the key type asked for, the version and cipher agreed, the judged chain."""

    key_type: str | None
    tls_version: str
    cipher: str
    judgement: ChainJudgement


def assemble(target: Target, address: str | None, fetches: Sequence[Fetch], failures: Sequence[Finding], *,
             several_key_types: bool, expected_fingerprints: frozenset[str] | None, transcript: Sequence[str],
             elapsed: float) -> ProbeResult:
    """The :class:`ProbeResult` of a probe's fetches and the failures met on the way."""
    findings: list[Finding] = []
    for fetch in fetches:
        prefix = f"[{fetch.key_type}] " if several_key_types else ""
        own = list(fetch.judgement.findings)
        stale = stale_finding(fetch.judgement.chain[0], expected_fingerprints)
        if stale is not None:
            own.append(stale)
        findings += [Finding(f.code, f.severity, prefix + f.message) for f in own]
    findings += failures
    first = fetches[0] if fetches else None
    leaf = first.judgement.chain[0] if first else None
    return ProbeResult(
        target=target,
        status=worst_status([f.severity for f in findings]),
        message=problem_message(findings, leaf),
        tls_version=first.tls_version if first else None,
        cipher=first.cipher if first else None,
        chain_valid=all(f.judgement.chain_valid for f in fetches) if fetches else None,
        hostname_valid=all(f.judgement.hostname_valid for f in fetches) if fetches else None,
        certificate=leaf,
        chain=first.judgement.chain if first else (),
        findings=tuple(findings),
        elapsed_ms=round(elapsed * 1000, 1),
        transcript=tuple(transcript),
        served=tuple(f.judgement.chain[0] for f in fetches),
        address=address,
    )


def timeout_finding(target: Target, timeout: float, stage: str, received: int, partial: int = 0) -> Finding:
    """The deadline passed while ``stage``; a STARTTLS server that never spoke may be an implicit-TLS port.
    ``received``: bytes of whole lines before TLS; ``partial``: bytes of a line never ended."""
    hint = ""
    if partial and stage.startswith("waiting for"):
        hint = f"; the server sent {partial} byte{'s' if partial > 1 else ''} but never ended the line"
    elif received == 0 and target.tls == "starttls" and "greeting" in stage:
        hint = "; the server never spoke: is this an implicit-TLS port (try smtps://, imaps://, pop3s://)?"
    return Finding(TIMEOUT, "CRITICAL", f"no answer within {timeout:g} s while {stage}{hint}")


def connecting_stage(target: Target, address: str | None) -> str:
    return f"connecting to {target.address}" + (f" ({address})" if address else "")


def os_reason(exc: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('127.0.0.1', 1)``."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror})"
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def connect_reason(errors: Sequence[OSError]) -> str:
    """Why no address of an endpoint took the connection, as asyncio's ``create_connection`` words it."""
    if not errors:
        return "no address to connect to"
    if len(errors) == 1 or len({str(error) for error in errors}) == 1:
        return os_reason(errors[0])
    return f"Multiple exceptions: {', '.join(str(error) for error in errors)}"


def ehlo_name(sockname: object) -> str:
    """Our own address (a socket's name) as an RFC 5321 §4.1.3 address literal: always valid, reveals nothing."""
    if not sockname or not isinstance(sockname, tuple):
        return "[127.0.0.1]"
    host = str(sockname[0])
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"
