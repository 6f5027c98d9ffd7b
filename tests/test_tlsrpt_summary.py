"""Sessions counted per policy domain, MX, result and reporter: the summary command and the metrics (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from certkeeper.monitoring.metrics import escape_label_value
from certkeeper.store import TlsReportRecord
from certkeeper.store.sqlite import SqliteStore
from certkeeper.tlsrpt.report import parse_document, to_document
from certkeeper.tlsrpt.summary import StoredReport, render_metrics, render_text, session_counts, summarize
from tests.tlsrpt_reports import RFC_EXAMPLE, report

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def stored() -> list[StoredReport]:
    return [StoredReport(parse_document(report("g1", organization="Google", failed=30, succeeded=970), "t"),
                         datetime(2026, 12, 2, 1, 0, tzinfo=UTC), "imap"),
            StoredReport(parse_document(report("m1", organization="Microsoft", failed=0, succeeded=50), "t"),
                         datetime(2026, 12, 2, 3, 0, tzinfo=UTC), "POST"),
            StoredReport(parse_document(report("g0", organization="Google", failed=5, succeeded=5), "t"),
                         datetime(2026, 12, 1, 1, 0, tzinfo=UTC), "imap")]


def test_successes_count_without_an_mx_and_undetailed_failures_as_failure() -> None:
    counts = session_counts([parse_document(RFC_EXAMPLE, "rfc")])
    assert [(c.receiving_mx, c.result, c.sessions) for c in counts] == [
        ("", "success", 5326),
        ("mx-backup.mail.company-y.example", "validation-failure", 3),
        ("mx1.mail.company-y.example", "certificate-expired", 100),
        ("mx2.mail.company-y.example", "starttls-not-supported", 200),
    ]  # 303 failures in the summary, 303 in the details: nothing undetailed


def test_the_summary_document_counts_per_domain_mx_and_reporter() -> None:
    document = summarize(stored(), None, NOW)
    (domain,) = document["domains"]
    assert domain["policy_domain"] == "example.test"
    all_mx, mail = domain["mx"]
    assert (all_mx["receiving_mx"], all_mx["successful_sessions"]) == ("", 1025)
    assert mail["failures"] == {"certificate-expired": 35}
    assert mail["reporters"] == {"Google": {"successful": 0, "failed": 35}}
    assert document["last_report"] == {"Google": "2026-12-02T01:00:00Z", "Microsoft": "2026-12-02T03:00:00Z"}
    text = render_text(document)
    assert "  mail.example.test: 0 succeeded, 35 failed (certificate-expired 35)" in text


def metrics_text(tmp_path: Path) -> str:
    """The reports stored as the daemon stores them, and the metrics rendered from the store's sums."""
    store = SqliteStore(tmp_path / "state")
    try:
        for item in stored():
            report = item.report
            assert store.add_tls_report(TlsReportRecord(
                report.report_id, report.organization_name, report.start, report.end, item.received_at,
                item.source, json.dumps(to_document(report)), tuple(session_counts([report]))))
        return render_metrics(store.tls_session_totals(), store.tls_last_reports(), escape_label_value)
    finally:
        store.close()


def test_the_metrics_are_the_issue_s_names_and_labels(tmp_path: Path) -> None:
    text = metrics_text(tmp_path)
    assert ('certkeeper_tlsrpt_sessions_total{policy_domain="example.test",receiving_mx="mail.example.test",'
            'result="certificate-expired"} 35') in text
    assert 'certkeeper_tlsrpt_sessions_total{policy_domain="example.test",receiving_mx="",result="success"} 1025' \
        in text
    assert f'certkeeper_tlsrpt_last_report_timestamp_seconds{{reporter="Microsoft"}} ' \
           f'{datetime(2026, 12, 2, 3, tzinfo=UTC).timestamp():.0f}' in text


def test_a_prometheus_parser_reads_the_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(metrics_text(tmp_path))}
    sessions = {(s.labels["receiving_mx"], s.labels["result"]): s.value
                for s in families["certkeeper_tlsrpt_sessions"].samples}
    assert sessions == {("", "success"): 1025, ("mail.example.test", "certificate-expired"): 35}
    assert families["certkeeper_tlsrpt_last_report_timestamp_seconds"].type == "gauge"
