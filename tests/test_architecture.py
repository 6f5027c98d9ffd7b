"""Each outside library has one home: when a library changes, one module moves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "certkeeper"

# library -> the modules allowed to import it (the test bed, which drives real servers, is outside the rule)
HOMES = {
    "acme": {"issuers/acme.py"},
    "josepy": {"issuers/acme.py"},
    "apscheduler": {"daemon.py"},
    "smtplib": {"relay.py"},
    "psycopg": {"store/postgres.py"},
    "OpenSSL": {"probe/engine.py"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("library", sorted(HOMES))
def test_a_library_is_imported_only_in_its_home(library: str) -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "testbed" not in path.parts and library in imported_modules(path)
    }
    assert importers <= HOMES[library], f"{library} imported outside its home: {sorted(importers - HOMES[library])}"
    assert importers, f"{library} is no longer imported at all: update HOMES"
