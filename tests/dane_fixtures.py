"""The DNSSEC-signed zone of :mod:`certkeeper.testbed.dnssec` (signing primary, secondary, validating resolver).

Imported by the test modules that need it (``from tests.dane_fixtures import signed_zone``).  One per test: a test
may hold the secondary's transfers back, and the three servers start in about a second.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certkeeper.testbed.dnssec import SignedZone


@pytest.fixture
def signed_zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedZone]:
    with SignedZone(tmp_path_factory.mktemp("signed-zone")) as zone:
        yield zone
