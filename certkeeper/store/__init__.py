"""The state store: what certkeeper remembers between runs.

One contract (:class:`Store`), two implementations: SQLite under ``state_dir`` (the default) and PostgreSQL
for fleets.  Both pass ``tests/test_store_contract.py``.  Certificates and keys themselves live on disk in
version folders (:mod:`certkeeper.store.versions`); the store keeps decisions, history, alert bookkeeping and locks.
"""

from certkeeper.store.base import (
    AlertRecord,
    CertState,
    EndpointRecord,
    HistoryRecord,
    RenewalRecord,
    Store,
    TlsReportRecord,
    TlsSessionCount,
)

__all__ = [
    "AlertRecord",
    "CertState",
    "EndpointRecord",
    "HistoryRecord",
    "RenewalRecord",
    "Store",
    "TlsReportRecord",
    "TlsSessionCount",
]
