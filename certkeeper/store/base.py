"""The store contract and the records it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from certkeeper.values import field, frozen

if TYPE_CHECKING:
    from certkeeper.store.budget import Bucket, Limit, Waiter


@frozen
class CertState:
    """What certkeeper decided and observed about one managed certificate."""

    name: str
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    failures: int = 0
    last_error: str = ""
    next_check_at: datetime | None = None
    next_reason: str = ""
    ari_start: datetime | None = None
    ari_end: datetime | None = None
    ari_retry_after: datetime | None = None
    ari_chosen_at: datetime | None = None
    reload_pending: bool = False
    # A digest of what the last failed attempt was made with (its tables of the configuration, the issuer's
    # files): another digest now ends the failure backoff (issue 21.9).
    failed_inputs: str = ""


@frozen
class RenewalRecord:
    """One renewal attempt's outcome: ``result`` is ``success``, ``failure``, ``rollback`` or ``dry-run``."""

    name: str
    at: datetime
    result: str
    version: str = ""
    serial: str = ""
    detail: str = ""


@frozen
class EndpointRecord:
    """The last probe of an endpoint, for status, metrics and recovery alerts."""

    owner: str
    endpoint: str
    at: datetime
    status: str
    message: str = ""
    fingerprint: str = ""
    not_after: datetime | None = None
    stale: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@frozen
class AlertRecord:
    """An alert owed to people: stays ``pending`` until a relay accepted it."""

    id: int
    key: str
    created_at: datetime
    severity: str
    subject: str
    body: str
    attempts: int = 0
    last_error: str = ""
    sent_at: datetime | None = None


@frozen
class TlsSessionCount:
    """Sessions of one report for one policy domain, receiving MX (``""``: not named) and result (``success``,
    a result type, or ``failure`` for failures reported without details), by reporting organization."""

    policy_domain: str
    receiving_mx: str
    result: str
    organization: str
    sessions: int


@frozen
class TlsReportRecord:
    """A TLS report (RFC 8460) as stored: ``document`` is its JSON (:func:`certkeeper.tlsrpt.report.to_document`);
    ``source`` says how it came (``imaps://reports@mail.example.org/INBOX UID 12``, ``POST / from 192.0.2.1``)."""

    report_id: str
    organization: str
    start: datetime
    end: datetime
    received_at: datetime
    source: str
    document: str
    # Written with the report and summed by the store (the metrics); not read back by tls_reports().
    sessions: tuple[TlsSessionCount, ...] = ()


@frozen
class HistoryRecord:
    """Something certkeeper did other than a renewal attempt, for correlating what senders report (``kind``:
    ``dane-publish``, TLSA records of certificate ``name`` added or removed; ``mta-sts-policy``, a new MTA-STS
    policy published for domain ``name``)."""

    name: str
    at: datetime
    kind: str
    detail: str = ""


class Store(Protocol):
    """The state store contract, shared by SQLite and PostgreSQL."""

    location: str

    def get_state(self, name: str) -> CertState | None: ...

    def put_state(self, state: CertState) -> None: ...

    def put_states(self, states: Sequence[CertState], renewals: Sequence[RenewalRecord] = ()) -> None:
        """Every row of ``states`` and ``renewals`` in one transaction (a pass's rows: one commit, not one each)."""
        ...

    def states(self) -> Sequence[CertState]: ...

    def add_renewal(self, record: RenewalRecord) -> None: ...

    def renewals(self, name: str | None = None, limit: int = 100) -> Sequence[RenewalRecord]:
        """Newest first."""
        ...

    def renewal_counts(self) -> dict[tuple[str, str], int]:
        """``{(name, result): count}`` over all history: the ``certkeeper_renewals_total`` counter."""
        ...

    def put_endpoint(self, record: EndpointRecord) -> None: ...

    def endpoints(self) -> Sequence[EndpointRecord]: ...

    def alert_seen(self, key: str) -> bool:
        """True when an alert with this de-duplication key was already raised (pending or sent)."""
        ...

    def forget_alerts(self, prefix: str) -> int:
        """Forget the de-duplication keys starting with ``prefix`` (a recovery re-arms the thresholds)."""
        ...

    def enqueue_alert(self, key: str, severity: str, subject: str, body: str, at: datetime) -> AlertRecord | None:
        """Queue an alert unless its key was seen already; returns the new record or None."""
        ...

    def pending_alerts(self) -> Sequence[AlertRecord]: ...

    def recent_alerts(self, limit: int = 200) -> Sequence[AlertRecord]:
        """The last ``limit`` alerts raised, sent or not, newest first (the status page's timeline)."""
        ...

    def mark_alert_attempt(self, ids: Sequence[int], at: datetime, error: str | None) -> None:
        """Record a delivery attempt: ``error=None`` means the relay accepted it."""
        ...

    def add_tls_report(self, record: TlsReportRecord) -> bool:
        """Keep a TLS report unless one with its ``report_id`` is kept already; True when it was new."""
        ...

    def tls_reports(self, since: datetime | None = None) -> Sequence[TlsReportRecord]:
        """The TLS reports whose window ends at or after ``since`` (all without), oldest window first."""
        ...

    def tls_session_totals(self) -> dict[tuple[str, str, str], int]:
        """``{(policy_domain, receiving_mx, result): sessions}`` over every report kept."""
        ...

    def tls_last_reports(self) -> dict[str, datetime]:
        """``{organization: when its newest report arrived}``."""
        ...

    def add_history(self, record: HistoryRecord) -> None: ...

    def history(self, since: datetime | None = None) -> Sequence[HistoryRecord]:
        """The records at or after ``since`` (all without), oldest first."""
        ...

    def get_dane_state(self, name: str) -> dict[str, Any] | None:
        """The DANE rollover state of one certificate as :mod:`certkeeper.dane.rollover` stored it (records
        published, visible since, retiring, lagging), or None."""
        ...

    def put_dane_state(self, name: str, data: dict[str, Any]) -> None:
        """Replace the DANE rollover state of one certificate (a JSON-able document)."""
        ...

    def lock(self, name: str, wait: float) -> AbstractContextManager[None]:
        """Exclusive per-certificate lock shared by every certkeeper process on this store.

        Waits up to ``wait`` seconds, then raises :class:`certkeeper.errors.LockBusy`.  A holder that dies
        releases it (the kernel drops its file lock; PostgreSQL its session lock).
        """
        ...

    # The order budget (certkeeper.store.budget.BudgetLedger): a single host's, or the fleet's in PostgreSQL.
    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None: ...

    def block_budget(self, limits: Sequence[Limit], until: datetime, now: datetime) -> None: ...

    def budget(self) -> tuple[list[Bucket], list[Waiter]]: ...

    def close(self) -> None: ...


