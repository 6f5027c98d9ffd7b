"""The composition root: configuration in, the wired parts out.  The CLI and the daemon both start here."""

from __future__ import annotations

from certkeeper.config import CaIssuerConfig, Config, IssuerConfig, Settings
from certkeeper.issuers.base import Issuer
from certkeeper.store import Store


def open_store(config: Config) -> Store:
    """SQLite under ``state_dir``, or PostgreSQL when ``database`` is set."""
    if config.settings.database:
        from certkeeper.store.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

        store: Store = PostgresStore(config.settings.database, config.settings.database_password_file)
        return store
    from certkeeper.store.sqlite import SqliteStore

    return SqliteStore(config.settings.state_dir)


def build_issuer(config: IssuerConfig, settings: Settings) -> Issuer:
    """The one place that knows which class implements which ``type`` of issuer."""
    if isinstance(config, CaIssuerConfig):
        from certkeeper.issuers.internal_ca import InternalCaIssuer

        return InternalCaIssuer(config)
    from certkeeper.issuers.acme import AcmeIssuer

    return AcmeIssuer(config, settings.state_dir)
