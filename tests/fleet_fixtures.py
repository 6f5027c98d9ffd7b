"""A real PostgreSQL for the store contract and the fleet tests: one cluster per session, a database per test.

Imported by the test modules that need it (``from tests.fleet_fixtures import postgres_cluster``); the cluster
comes from :mod:`certkeeper.testbed.postgres` and listens on 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certkeeper.testbed.postgres import BIN_DIR, PostgresCluster


@dataclass(frozen=True)
class Database:
    """One fresh, empty database: its URL (no password in it) and the file holding the password."""

    url: str
    password_file: Path
    cluster: PostgresCluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    if not (BIN_DIR / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not installed ({BIN_DIR})")
    # Under /tmp, not pytest's 0700 tmp_path: the server runs as the postgres user and must reach its files.
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_db(postgres_cluster: PostgresCluster) -> Database:
    return Database(postgres_cluster.create_database(), postgres_cluster.password_file, postgres_cluster)
