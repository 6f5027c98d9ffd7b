"""Reported failures grouped by MX and result type, and set against certkeeper's own history (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certkeeper.alerts import catalog
from certkeeper.alerts.rules import Severity
from certkeeper.app import remember_history
from certkeeper.config import TlsrptConfig
from certkeeper.events import (
    CertificateInstalled,
    EventBus,
    MtaStsPolicyPublished,
    TlsaRecordsPublished,
    TlsFailuresReported,
)
from certkeeper.store import HistoryRecord
from certkeeper.store.sqlite import SqliteStore
from certkeeper.tlsrpt.correlate import (
    CertkeeperAction,
    actions_from_history,
    certificates_for,
    correlate,
    group_failures,
)
from certkeeper.tlsrpt.report import TlsReport, parse_document
from certkeeper.tlsrpt.service import Tlsrpt
from tests.tlsrpt_reports import RFC_EXAMPLE, report

DAY = datetime(2026, 12, 1, tzinfo=UTC)
CERTIFICATES = {"mail": ("mail.example.test", "smtp.example.test"), "wild": ("*.mx.example.test",)}


def parsed(report_id: str, **options: Any) -> TlsReport:
    return parse_document(report(report_id, **options), report_id)


def test_failures_are_grouped_by_mx_and_result_over_reporters() -> None:
    reports = [parsed("a", organization="Google", failed=30), parsed("b", organization="Microsoft", failed=12),
               parsed("c", organization="Google", result="starttls-not-supported", failed=99),
               parsed("d", organization="Yahoo", mx="mx2.example.test", result="tlsa-invalid", failed=4)]
    groups = group_failures(reports)
    assert [(g.receiving_mx, g.result_type, g.sessions, g.organizations) for g in groups] == [
        ("mail.example.test", "certificate-expired", 42, ("Google", "Microsoft")),
        ("mx2.example.test", "tlsa-invalid", 4, ("Yahoo",)),
    ]  # starttls-not-supported is not about a certificate


def test_the_rfc_example_groups_its_certificate_failures() -> None:
    groups = group_failures([parse_document(RFC_EXAMPLE, "rfc")])
    assert [(g.receiving_mx, g.result_type, g.sessions) for g in groups] == [
        ("mx-backup.mail.company-y.example", "validation-failure", 3),
        ("mx1.mail.company-y.example", "certificate-expired", 100),
    ]


def test_names_and_wildcards_select_certificates() -> None:
    assert certificates_for("MAIL.example.test.", CERTIFICATES) == ("mail",)
    assert certificates_for("a.mx.example.test", CERTIFICATES) == ("wild",)
    assert certificates_for("a.b.mx.example.test", CERTIFICATES) == ()


def test_an_expired_certificate_is_explained_by_the_rollback_before_it() -> None:
    actions = [
        CertkeeperAction(DAY - timedelta(days=3), "mail", "install", "20261128-1"),
        CertkeeperAction(DAY - timedelta(minutes=2), "mail", "rollback", "20261130-1",
                         "smtp://mail.example.test:25 serves the old certificate"),
        CertkeeperAction(DAY + timedelta(hours=5), "mail", "install", "20261201-1"),
        CertkeeperAction(DAY - timedelta(minutes=1), "other", "rollback", "x"),
    ]
    (found,) = correlate([parsed("a", failed=50)], CERTIFICATES, actions, threshold=10)
    assert found.explanation == actions[1]
    group = found.group
    event = TlsFailuresReported(DAY, group.receiving_mx, group.result_type, group.sessions, group.organizations,
                                group.start, group.end, found.explained_by, group.policy_domains, group.report_ids)
    alert = catalog.alert_for(event).alert
    assert alert is not None and alert.severity is Severity.CRITICAL
    assert alert.key == "tlsrpt:mail.example.test:certificate-expired:2026-12-01"
    facts = dict(alert.facts)
    assert facts["most likely cause"] == (
        "certificate 'mail': rolled back version 20261130-1 at 2026-11-30 23:58 UTC "
        "(smtp://mail.example.test:25 serves the old certificate)")
    assert facts["reported by"] == "Company-X" and facts["failed sessions"] == "50"
    assert facts["window"] == "2026-12-01 00:00 UTC to 2026-12-01 23:59 UTC"


def test_a_mismatch_is_explained_by_an_install_rather_than_a_failure() -> None:
    actions = [CertkeeperAction(DAY - timedelta(hours=2), "mail", "failure", detail="CA said no"),
               CertkeeperAction(DAY - timedelta(hours=3), "mail", "install", "v7")]
    (found,) = correlate([parsed("a", result="certificate-host-mismatch")], CERTIFICATES, actions, threshold=1)
    assert found.explained_by == "certificate 'mail': installed version v7 at 2026-11-30 21:00 UTC"


def test_nothing_explains_failures_without_actions_or_certificates() -> None:
    old = [CertkeeperAction(DAY - timedelta(days=5), "mail", "rollback", "v1")]
    reports = [parsed("a"), parsed("b", mx="partner.example.net")]
    found = correlate(reports, CERTIFICATES, old, threshold=1)
    assert [c.explained_by for c in found] == [
        "nothing certkeeper did explains this (no install, rollback, failed renewal or TLSA change of 'mail', nor "
        "MTA-STS policy change of 'example.test', from 2026-11-30 00:00 UTC on)",
        "nothing certkeeper did explains this (no managed certificate names partner.example.net)",
    ]


def test_below_the_threshold_nothing_is_raised() -> None:
    assert correlate([parsed("a", failed=9)], CERTIFICATES, [], threshold=10) == []


def test_tlsa_invalid_is_explained_by_the_tlsa_change_before_it() -> None:
    actions = actions_from_history(
        [("mail", DAY - timedelta(hours=1), "success", "v8", "")],
        [("mail", DAY - timedelta(hours=2), "dane-publish", "added 3 1 1 aa; removed 3 1 1 cc")])
    (found,) = correlate([parsed("a", result="tlsa-invalid", policy_type="tlsa")], CERTIFICATES, actions,
                         threshold=1)
    assert found.explained_by == ("certificate 'mail': published TLSA records at 2026-11-30 22:00 UTC "
                                  "(added 3 1 1 aa; removed 3 1 1 cc)")


def test_published_tlsa_records_are_remembered_in_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    try:
        bus = EventBus()
        bus.subscribe(remember_history(store))
        bus.publish(TlsaRecordsPublished(DAY, "mail", ("3 1 1 aa",), ("3 1 1 cc",)))
        bus.publish(CertificateInstalled(DAY, "mail", "v1"))  # renewals have their own history
        assert store.history() == [HistoryRecord("mail", DAY, "dane-publish", "added 3 1 1 aa; removed 3 1 1 cc")]
    finally:
        store.close()


def test_an_sts_failure_is_explained_by_the_policy_change_of_its_domain() -> None:
    actions = actions_from_history(
        [("mail", DAY - timedelta(hours=3), "success", "v9", "")],
        [("example.test", DAY - timedelta(hours=1), "mta-sts-policy", "id 20261130T2300, mx mail.example.test"),
         ("other.test", DAY - timedelta(minutes=5), "mta-sts-policy", "id x")])
    (found,) = correlate([parsed("a", result="sts-webpki-invalid")], CERTIFICATES, actions, threshold=1)
    assert found.explained_by == ("MTA-STS policy of 'example.test': published at 2026-11-30 23:00 UTC "
                                  "(id 20261130T2300, mx mail.example.test)")
    # A failure about the certificate itself is still best explained by the certificate's own history.
    (expired,) = correlate([parsed("b")], CERTIFICATES, actions, threshold=1)
    assert expired.explained_by == "certificate 'mail': installed version v9 at 2026-11-30 21:00 UTC"


def test_a_published_policy_is_remembered_and_explains_what_senders_report_later(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    try:
        bus = EventBus()
        bus.subscribe(remember_history(store))
        raised: list[TlsFailuresReported] = []
        bus.subscribe(lambda event: raised.append(event) if isinstance(event, TlsFailuresReported) else None)
        published = DAY + timedelta(hours=1)
        bus.publish(MtaStsPolicyPublished(published, "example.test", "20261201T0100", ("mail.example.test",),
                                          "narrowed to mail.example.test"))
        assert store.history() == [HistoryRecord("example.test", published, "mta-sts-policy",
                                                 "id 20261201T0100, mx mail.example.test; "
                                                 "narrowed to mail.example.test")]
        tlsrpt = Tlsrpt(TlsrptConfig(alert_threshold=5), store, bus, dict(CERTIFICATES),
                        lambda: DAY + timedelta(days=1, hours=2))
        tlsrpt.import_report(parsed("late", organization="Google", result="sts-policy-invalid", failed=7,
                                    start="2026-12-01T00:00:00Z"), "https POST")
        tlsrpt.raise_alerts()
        (event,) = raised
        assert (event.receiving_mx, event.result_type, event.sessions) == ("mail.example.test",
                                                                           "sts-policy-invalid", 7)
        assert event.explained_by.startswith("MTA-STS policy of 'example.test': published at 2026-12-01 01:00 UTC")
    finally:
        store.close()
