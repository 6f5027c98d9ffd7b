"""Probe results as text for people and monitoring systems: the Nagios plugin line and JSON.

The Nagios line follows the monitoring-plugins development guidelines: ``SERVICE STATUS - text|perfdata``,
perfdata as ``'label'=value;warn;crit;min;max``.  One ``days_chain_elemN`` per served certificate, so a graph
shows an intermediate running out as well as the leaf; its value is :func:`~certkeeper.probe.verdict.whole_days`,
the same number the text says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from certkeeper.probe.result import CertificateSummary, ProbeResult
from certkeeper.probe.verdict import whole_days

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from typing import Any


@lru_cache(maxsize=1024)
def _iso(moment: datetime) -> str:
    # Cached: the results of a run share their certificates' dates (one judgement per distinct chain), and
    # strftime was half of turning a result into JSON.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def perfdata(result: ProbeResult) -> str:
    """``days_chain_elem1=64;21;7;; ...``; with several key types each leaf's chain is labelled by its key."""
    items: list[str] = []
    if len(result.served) > 1:
        for summary in result.served:
            family = summary.key_type.split("-", 1)[0]
            items.append(f"days_{family}=" + _perf_value(summary))
    for index, summary in enumerate(result.chain, 1):
        items.append(f"days_chain_elem{index}=" + _perf_value(summary))
    if result.elapsed_ms:
        items.append(f"time={result.elapsed_ms / 1000:.3f}s;;;0;")
    return " ".join(items)


def _perf_value(summary: CertificateSummary) -> str:
    # Whole days, as the status line says them (and as check_ssl_cert's perfdata has them).
    return f"{whole_days(summary.days_left)};{_number(summary.warning_days)};{_number(summary.critical_days)};;"


def printable(text: str) -> str:
    """``text`` with each control or format character (ESC, CR, NUL, a bidirectional override) as "?": servers
    choose the certificate names and replies we print, and a terminal or a monitoring system would act on them
    (an ESC sequence retitling the terminal, a CR and a second status line)."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def plugin_text(text: str) -> str:
    """``text`` for a line of a plugin's output: a "|" would start perfdata (in the status line and in the long
    output alike), so it is "/"; a line break is a space; control characters are "?" (:func:`printable`)."""
    return printable(text.replace("|", "/").replace("\n", " "))


def nagios_line(result: ProbeResult) -> str:
    """``CERTKEEPER OK - mail.example.org:465, smtps, '...' from 'R11' valid until ... |days_chain_elem1=...``"""
    message = plugin_text(result.message)  # servers choose the certificate names and the replies we print
    line = f"CERTKEEPER {result.status} - {result.target.address}, {result.target.protocol}, {message}"
    data = perfdata(result)
    return f"{line}|{data}" if data else line


def _certificate(summary: CertificateSummary) -> dict[str, Any]:
    return {
        "subject": summary.subject,
        "issuer": summary.issuer,
        "subject_dn": summary.subject_dn,
        "issuer_dn": summary.issuer_dn,
        "serial": summary.serial,
        "not_before": _iso(summary.not_before),
        "not_after": _iso(summary.not_after),
        "days_left": round(summary.days_left, 3),
        "fingerprint_sha256": summary.fingerprint_sha256,
        "subject_alternative_names": list(summary.subject_alternative_names),
        "key_type": summary.key_type,
        "warning_days": summary.warning_days,
        "critical_days": summary.critical_days,
    }


def result_to_json(result: ProbeResult) -> dict[str, Any]:
    """One target as the JSON object ``certkeeper check --json`` prints (``certificate`` null only when none
    was received: an expired or untrusted certificate is still shown)."""
    target = result.target
    document: dict[str, Any] = {
        "target": target.text,
        "host": target.host,
        "port": target.port,
        "protocol": target.protocol,
        "tls": target.tls,
        "status": result.status,
        "message": result.message,
        "tls_version": result.tls_version,
        "cipher": result.cipher,
        "chain_valid": result.chain_valid,
        "hostname_valid": result.hostname_valid,
        "certificate": _certificate(result.certificate) if result.certificate else None,
        "chain": [
            {"subject": s.subject, "issuer": s.issuer, "not_after": _iso(s.not_after),
             "fingerprint_sha256": s.fingerprint_sha256, "days_left": round(s.days_left, 3)}
            for s in result.chain
        ],
        "served": [_certificate(s) for s in result.served],
        "findings": [{"code": f.code, "severity": f.severity, "message": f.message} for f in result.findings],
        "elapsed_ms": result.elapsed_ms,
    }
    if result.address is not None:
        document["address"] = result.address
    if result.transcript:
        document["transcript"] = list(result.transcript)
    return document
