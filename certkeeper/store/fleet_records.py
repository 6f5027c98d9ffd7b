"""What a fleet shares through PostgreSQL: certificate versions, ordering leases and each node's result.

Plain records and the protocol :class:`certkeeper.store.fleet.Fleet` needs from the database.  The one implementation
is :class:`certkeeper.store.postgres.PostgresStore`; keeping the types here lets :mod:`certkeeper.store.fleet` be
imported (and type-checked) without psycopg, which is an optional dependency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.store.budget import Bucket, Limit, Waiter


@frozen
class FleetPair:
    """One key type of a fleet version: the chain in PEM, the private key sealed with the fleet key."""

    key_type: str
    fullchain_pem: bytes
    sealed_key: bytes
    serial: str
    fingerprint: str
    key_version: int = 0  # which fleet_keys salt sealed it; 0: HKDF without salt (stored before schema 2)


@frozen
class FleetVersion:
    """One issuance shared by the fleet: ``version`` counts 1, 2, 3 per certificate name.

    ``pairs`` is empty when only the head was asked for (what :meth:`FleetDatabase.fleet_head` returns).
    """

    name: str
    version: int
    ordered_by: str
    created_at: datetime
    issuer: str
    domains: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprints: frozenset[str]
    key_types: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()
    pairs: tuple[FleetPair, ...] = ()


@frozen
class LeaseHolder:
    """Who holds a certificate's ordering lease, and until when (by the database's clock)."""

    node: str
    expires_at: datetime


@frozen
class NodeResult:
    """A node's latest state for one certificate: what it serves and how its last pass went."""

    node: str
    name: str
    version: str
    result: str
    at: datetime
    detail: str = ""
    serials: str = ""


class FleetDatabase(Protocol):
    """The shared part of the database.  Every method raises :class:`certkeeper.errors.StoreError` when the
    database cannot be reached; lease times are the database's, so nodes' clocks may disagree."""

    location: str
    queries: int

    def fleet_head(self, name: str) -> FleetVersion | None:
        """The newest version's metadata, without key material."""
        ...

    def fleet_version(self, name: str, version: int) -> FleetVersion | None:
        """One version with its pairs."""
        ...

    def acquire_lease(self, name: str, node: str, token: str, seconds: float) -> LeaseHolder | None:
        """Take (or extend, with the same token) the ordering lease; None on success, else the holder."""
        ...

    def extend_lease(self, name: str, token: str, seconds: float) -> bool: ...

    def release_lease(self, name: str, token: str) -> None: ...

    def store_fleet_version(self, version: FleetVersion, token: str) -> bool:
        """Insert ``version`` if the lease under ``token`` is still held (fencing); False if it was lost."""
        ...

    def put_node_results(self, results: Sequence[NodeResult]) -> None:
        """Replace each node's row for each certificate (one round trip)."""
        ...

    def node_results(self, names: Sequence[str] | None = None) -> Sequence[NodeResult]: ...

    def fleet_heads(self, names: Sequence[str]) -> Sequence[FleetVersion]:
        """The newest version's metadata of each of ``names`` that has one: one query for a whole pass."""
        ...

    # The fleet's order budget (certkeeper.store.budget.BudgetLedger).
    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None: ...

    def block_budget(self, limits: Sequence[Limit], until: datetime, now: datetime) -> None: ...

    def budget(self) -> tuple[list[Bucket], list[Waiter]]: ...

    def schema_version(self) -> int: ...

    def fleet_salts(self) -> Mapping[int, bytes]:
        """The fleet's HKDF salts by key version (``fleet_keys``, made with the schema)."""
        ...

    def close(self) -> None: ...
