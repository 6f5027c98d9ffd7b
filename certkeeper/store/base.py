"""The store contract and the records it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from certkeeper.store.budget import Bucket, Limit, Waiter


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class RenewalRecord:
    """One renewal attempt's outcome: ``result`` is ``success``, ``failure``, ``rollback`` or ``dry-run``."""

    name: str
    at: datetime
    result: str
    version: str = ""
    serial: str = ""
    detail: str = ""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


class Store(Protocol):
    """The state store contract, shared by SQLite and PostgreSQL."""

    location: str

    def get_state(self, name: str) -> CertState | None: ...

    def put_state(self, state: CertState) -> None: ...

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


