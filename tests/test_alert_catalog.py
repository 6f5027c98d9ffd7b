"""The alert table: every event type is either given an alert rule or declared to owe none, and the rules are pure."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

from certkeeper import events
from certkeeper.alerts.catalog import RULES, alert_for
from certkeeper.alerts.rules import Severity, renewal_prefix

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
# Events that owe no alert of their own, and why.
SILENT = {
    events.CertificateIssued: "its serial and expiry go into the installed mail",
    events.CertificateInstalled: "handled with its issuance event (recovered / notify_success)",
    events.RenewalWaitingForTlsa: "waiting is the DANE rollover working; UnsafeKeyRollover alerts when it cannot",
    events.TlsReportImported: "a report stored is the intake working; TlsFailuresReported alerts on what it says",
    events.TlsReportRefused: "logged: a sender's broken or hostile input must not become mail of its own",
    events.TlsaRecordsRetiring: "keeping the old key's records over the dwell is the rollover working",
}


def test_every_event_type_has_a_rule_or_is_declared_silent() -> None:
    kinds = {obj for _, obj in inspect.getmembers(events, inspect.isclass)
             if issubclass(obj, events.Event) and obj is not events.Event}
    undecided = sorted(k.__name__ for k in kinds - set(RULES) - set(SILENT))
    assert kinds == set(RULES) | set(SILENT), f"decide what these owe: {undecided}"


def test_a_renewal_failure_alerts_once_per_error_and_a_different_error_alerts_again() -> None:
    first = alert_for(events.RenewalFailed(NOW, "mail", "CA said no", None)).alert
    again = alert_for(events.RenewalFailed(NOW.replace(hour=9), "mail", "CA said no", None)).alert
    other = alert_for(events.RenewalFailed(NOW, "mail", "timeout", None)).alert
    assert first is not None and again is not None and other is not None
    assert first.key == again.key != other.key
    assert first.key.startswith(renewal_prefix("mail")) and first.severity is Severity.WARNING


def test_an_install_after_failures_re_arms_them_and_says_recovered_not_renewed() -> None:
    issued = events.CertificateIssued(NOW, "mail", "ecdsa-p256", "le", "0a1b", NOW.replace(year=2027))
    action = alert_for(events.CertificateInstalled(NOW, "mail", "v2"), issued=issued, notify_success=False)
    assert action.forget == (renewal_prefix("mail"),)
    assert action.alert is None
    assert action.recovered is not None and "after failures" in action.recovered.subject
    assert ("serial", "0a1b") in action.recovered.facts
    with_success = alert_for(events.CertificateInstalled(NOW, "mail", "v2"), notify_success=True)
    assert with_success.alert is not None and with_success.alert.subject == "mail renewed"


def test_a_rollback_is_critical() -> None:
    action = alert_for(events.RolledBack(NOW, "mail", "v2", "v1", "not served"))
    assert action.alert is not None and action.alert.severity is Severity.CRITICAL
    assert action.alert.key == "rollback:mail:v2"


def test_an_mta_sts_publish_failure_alerts_and_the_next_publication_re_arms_it() -> None:
    failed = alert_for(events.MtaStsPublishFailed(NOW, "example.org", "REFUSED")).alert
    assert failed is not None and failed.severity is Severity.WARNING
    assert failed.subject == "MTA-STS policy of example.org not published"
    published = alert_for(events.MtaStsPolicyPublished(NOW, "example.org", "ab12", ("mx.example.org",), "widened"))
    assert published.alert is None and failed.key.startswith(published.forget[0])
