"""The TLS-RPT shell: reports in (IMAPS, the POST endpoint) to the store, failures out as alerts.

Everything that decides is pure and lives beside this module; here are the side effects, in one place, so the
daemon and the command line share them: :meth:`Tlsrpt.fetch` (one IMAPS pass), :meth:`Tlsrpt.start_endpoint`,
:meth:`Tlsrpt.raise_alerts` (correlation of the recent reports with the store's history).  Hostile input never
stops the others: each refusal is logged, published as an event, and the next mail or part goes on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from certkeeper.config import TlsrptConfig
from certkeeper.errors import ReportRefused
from certkeeper.events import EventBus, TlsFailuresReported, TlsReportImported, TlsReportRefused
from certkeeper.store import Store, TlsReportRecord
from certkeeper.tlsrpt.correlate import LOOKBACK, actions_from_history, correlate
from certkeeper.tlsrpt.intake import read_mail
from certkeeper.tlsrpt.report import TlsReport, to_document
from certkeeper.tlsrpt.summary import session_counts, stored_reports
from certkeeper.values import field, mutable

if TYPE_CHECKING:
    from certkeeper.tlsrpt.http import ReportEndpoint
    from certkeeper.tlsrpt.imap import Fetched

log = logging.getLogger("certkeeper.tlsrpt")

# Reports whose window ended this long ago still count towards an alert: senders mail daily, some a day late.
ALERT_HORIZON = timedelta(days=3)
HISTORY_LIMIT = 1000


@mutable
class Tlsrpt:
    config: TlsrptConfig
    store: Store
    bus: EventBus
    certificates: Mapping[str, Sequence[str]]
    clock: Callable[[], datetime]
    endpoint: ReportEndpoint | None = None
    _alert_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- intake ------------------------------------------------------------------------------------------------

    def import_report(self, report: TlsReport, where: str) -> bool:
        """Store ``report``; False when a report with its ``report-id`` was stored before."""
        record = TlsReportRecord(report.report_id, report.organization_name, report.start, report.end,
                                 self.clock(), where, json.dumps(to_document(report), separators=(",", ":")),
                                 tuple(session_counts([report])))
        new = self.store.add_tls_report(record)
        self.bus.publish(TlsReportImported(self.clock(), report.report_id, report.organization_name, where,
                                           report.failed_sessions, duplicate=not new))
        return new

    def refused(self, refusal: ReportRefused) -> None:
        self.bus.publish(TlsReportRefused(self.clock(), refusal.where, refusal.problem))

    def import_mail(self, where: str, data: bytes | None, size: int) -> bool:
        """One mail from the mailbox: True when every report in it was imported (it may then be deleted)."""
        if data is None:
            self.refused(ReportRefused(where, "", f"a mail of {size:,} bytes, too big to fetch"))
            return False
        intake = read_mail(data, where)
        for report in intake.reports:
            self.import_report(report, where)
        for refusal in intake.refused:
            self.refused(refusal)
        return not intake.refused

    def fetch(self) -> Fetched | None:
        """One pass over the IMAPS mailbox, when one is configured; then the alerts the new reports owe."""
        if self.config.imap is None or self.config.password_file is None:
            return None
        from certkeeper.tlsrpt.imap import fetch_reports

        fetched = fetch_reports(self.config.imap, self.config.password_file, self.import_mail,
                                ca_file=self.config.ca_file, delete_after_import=self.config.delete_after_import)
        if fetched.read:
            log.info("TLS reports: %d mails read from %s, %d deleted", fetched.read, self.config.imap.url,
                     fetched.deleted)
            self.raise_alerts()
        return fetched

    # -- the POST endpoint -------------------------------------------------------------------------------------

    def start_endpoint(self, cert_file: Path, key_file: Path) -> ReportEndpoint | None:
        if self.config.listen is None:
            return None
        from certkeeper.tlsrpt.http import start_report_endpoint

        host, port = self.config.listen
        self.endpoint = start_report_endpoint(host, port, cert_file, key_file, self._accept_post, self.refused)
        log.info("TLS report endpoint listening on https://%s:%d", host, self.endpoint.port)
        return self.endpoint

    def _accept_post(self, report: TlsReport, where: str) -> bool:
        new = self.import_report(report, where)
        if new:
            self.raise_alerts()
        return new

    def stop_endpoint(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None

    # -- correlation -------------------------------------------------------------------------------------------

    def raise_alerts(self) -> None:
        """Correlate the recent reports with the store's history; queue what crosses the threshold."""
        with self._alert_lock:
            now = self.clock()
            reports = [s.report for s in stored_reports(self.store, now - ALERT_HORIZON)]
            renewals = [(r.name, r.at, r.result, r.version, r.detail)
                        for r in self.store.renewals(limit=HISTORY_LIMIT)]
            others = [(h.name, h.at, h.kind, h.detail) for h in self.store.history(now - ALERT_HORIZON - LOOKBACK)]
            for found in correlate(reports, self.certificates, actions_from_history(renewals, others),
                                   threshold=self.config.alert_threshold):
                group = found.group
                # The alert catalog turns this into one alert per MX, result type and first day (de-duplicated
                # in the store), so publishing it again after the next import raises nothing twice.
                self.bus.publish(TlsFailuresReported(now, group.receiving_mx, group.result_type, group.sessions,
                                                     group.organizations, group.start, group.end,
                                                     found.explained_by, group.policy_domains,
                                                     group.report_ids))
