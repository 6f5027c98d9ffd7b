"""Sessions counted per policy domain, receiving MX, result and reporter: ``certkeeper tlsrpt summary`` and the
metrics.  Pure, but for :func:`stored_reports`, which reads them back from the store.

Successful sessions carry no MX in RFC 8460 (only failures name one), so they count under ``receiving_mx=""``
and ``result="success"``.  Failed sessions count under their ``failure-details`` MX and result type; failures a
report summarises without details count under ``receiving_mx=""`` and ``result="failure"``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from certkeeper.store import Store, TlsSessionCount
from certkeeper.tlsrpt.report import TlsReport, parse_document
from certkeeper.values import frozen

SUCCESS = "success"
UNDETAILED_FAILURE = "failure"


@frozen
class StoredReport:
    """A report as the store gives it back: parsed, with when and how it arrived."""

    report: TlsReport
    received_at: datetime
    source: str


def stored_reports(store: Store, since: datetime | None) -> list[StoredReport]:
    """The reports in the store whose window ends after ``since``, parsed again."""
    found = []
    for record in store.tls_reports(since):
        report = parse_document(json.loads(record.document), f"{store.location}: report {record.report_id}")
        found.append(StoredReport(report, record.received_at, record.source))
    return found


def session_counts(reports: Iterable[TlsReport]) -> list[TlsSessionCount]:
    totals: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for report in reports:
        for policy in report.policies:
            base = (policy.policy_domain, "", SUCCESS, report.organization_name)
            totals[base] += policy.successful_sessions
            detailed = 0
            for failure in policy.failures:
                key = (policy.policy_domain, failure.receiving_mx_hostname, failure.result_type,
                       report.organization_name)
                totals[key] += failure.failed_session_count
                detailed += failure.failed_session_count
            if policy.failed_sessions > detailed:
                totals[(policy.policy_domain, "", UNDETAILED_FAILURE, report.organization_name)] += \
                    policy.failed_sessions - detailed
    return [TlsSessionCount(*key, sessions) for key, sessions in sorted(totals.items())]


def summarize(stored: Sequence[StoredReport], since: datetime | None, now: datetime) -> dict[str, Any]:
    """The ``--json`` document: per policy domain and MX, sessions by result and reporter."""
    domains: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for count in session_counts(s.report for s in stored):
        entry = domains[count.policy_domain].setdefault(
            count.receiving_mx, {"receiving_mx": count.receiving_mx, "successful_sessions": 0,
                                 "failed_sessions": 0, "failures": {}, "reporters": {}})
        if count.result == SUCCESS:
            entry["successful_sessions"] += count.sessions
        else:
            entry["failed_sessions"] += count.sessions
            entry["failures"][count.result] = entry["failures"].get(count.result, 0) + count.sessions
        reporter = entry["reporters"].setdefault(count.organization, {"successful": 0, "failed": 0})
        reporter["successful" if count.result == SUCCESS else "failed"] += count.sessions
    return {
        "since": _iso(since) if since else None,
        "now": _iso(now),
        "reports": len(stored),
        "domains": [{"policy_domain": domain, "mx": [mx[name] for name in sorted(mx)]}
                    for domain, mx in sorted(domains.items())],
        "last_report": last_report_times(stored),
    }


def last_report_times(stored: Iterable[StoredReport]) -> dict[str, str]:
    return {name: _iso(at) for name, at in sorted(_latest(stored).items())}


def _latest(stored: Iterable[StoredReport]) -> dict[str, datetime]:
    latest: dict[str, datetime] = {}
    for item in stored:
        name = item.report.organization_name
        latest[name] = max(latest.get(name, item.received_at), item.received_at)
    return latest


def render_text(document: dict[str, Any]) -> str:
    lines = [f"TLS reports since {document['since'] or 'the beginning'}: {document['reports']}"]
    for domain in document["domains"]:
        lines.append(f"{domain['policy_domain']}")
        for mx in domain["mx"]:
            failures = ", ".join(f"{result} {n}" for result, n in sorted(mx["failures"].items())) or "none"
            name = mx["receiving_mx"] or "(all MX)"
            lines.append(f"  {name}: {mx['successful_sessions']} succeeded, {mx['failed_sessions']} failed "
                         f"({failures})")
            for reporter, counts in sorted(mx["reporters"].items()):
                lines.append(f"    {reporter}: {counts['successful']} succeeded, {counts['failed']} failed")
    for reporter, at in document["last_report"].items():
        lines.append(f"last report from {reporter}: {at}")
    return "\n".join(lines)


def render_metrics(totals: Mapping[tuple[str, str, str], int], last_reports: Mapping[str, datetime],
                   escape: Callable[[str], str]) -> str:
    """The two TLS-RPT families in Prometheus text format, from the store's sums (:meth:`Store.tls_session_totals`,
    :meth:`Store.tls_last_reports`: no report is parsed again); ``escape`` quotes a label value."""
    lines = ["# HELP certkeeper_tlsrpt_sessions_total TLS sessions senders reported (RFC 8460), by result",
             "# TYPE certkeeper_tlsrpt_sessions_total counter"]
    for (domain, mx, result), sessions in sorted(totals.items()):
        lines.append(f'certkeeper_tlsrpt_sessions_total{{policy_domain="{escape(domain)}",'
                     f'receiving_mx="{escape(mx)}",result="{escape(result)}"}} {sessions}')
    lines += ["# HELP certkeeper_tlsrpt_last_report_timestamp_seconds When the last report of each reporter "
              "arrived", "# TYPE certkeeper_tlsrpt_last_report_timestamp_seconds gauge"]
    for name, at in sorted(last_reports.items()):
        lines.append(f'certkeeper_tlsrpt_last_report_timestamp_seconds{{reporter="{escape(name)}"}} '
                     f"{at.timestamp():.0f}")
    return "\n".join(lines) + "\n"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
