"""The house: each outside library has one home, and imports run down the floors, never up or in a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "certkeeper"

# library -> the modules allowed to import it (the test bed, which drives real servers, is outside the rule)
HOMES = {
    "acme": {"issuers/acme.py"},
    "josepy": {"issuers/acme.py"},
    "apscheduler": {"daemon.py"},
    "smtplib": {"alerts/relay.py"},
    "psycopg": {"store/postgres.py"},
    "OpenSSL": {"probe/wire.py"},
    "dns": {"dnsclient.py"},
    "subprocess": {"process.py"},
    "ssl": {"tls.py"},
    "imaplib": {"tlsrpt/imap.py"},
}

# The floors, top to bottom.  A module may import from its own floor's other packages only where listed in
# SIDEWAYS, and from any floor below.  Top-level modules are named with ".py", packages without.
FLOORS: list[set[str]] = [
    {"__main__.py"},
    {"cli"},
    {"daemon.py"},
    {"app.py"},
    {"testbed"},
    {"renewal"},
    {"mailserver", "dane", "alerts", "monitoring", "adopt", "mtasts", "tlsrpt"},
    {"issuers", "store", "probe"},
    {"config", "dnsclient.py", "process.py", "tls.py", "permissions.py"},
    {"pki.py", "targets.py", "public_suffix.py"},
    {"model.py", "events.py", "errors.py", "deadline.py", "__init__.py"},
    {"values.py"},  # the value classes everything above is made of
]
# Same-floor arrows that are part of the design (importer -> imported).
SIDEWAYS = {
    ("dane", "issuers"): "DANE reads the ACME issuer's RFC 2136 settings and the secret-file reader",
    ("dane", "store"): "the rollover writes its state beside the version folders",
    ("dane", "probe"): "check --dane judges probe results",
    ("mailserver", "probe"): "doctor and setup probe the listeners",
    ("mailserver", "store"): "doctor reads certkeeper's installed versions",
    ("monitoring", "store"): "metrics read the store and the installed versions",
    ("alerts", "store"): "the alert queue lives in the store",
    ("issuers", "store"): "issuers write CA files and accounts atomically (store.atomic)",
    ("monitoring", "mtasts"): "metrics show each domain's policy id, mode and whether every MX matches",
    ("mailserver", "mtasts"): "doctor runs the MTA-STS check for the configured domains",
    ("config", "permissions.py"): "config check and hook resolution apply the trust rules for paths",
}
FLOOR_OF = {room: index for index, floor in enumerate(FLOORS) for room in floor}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def certkeeper_imports(path: Path) -> Iterator[str]:
    """The certkeeper modules ``path`` imports, as dotted names below ``certkeeper``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("certkeeper."):
                    yield alias.name.removeprefix("certkeeper.")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "certkeeper":
                yield from (alias.name for alias in node.names)
            elif node.module.startswith("certkeeper."):
                yield node.module.removeprefix("certkeeper.")


def room_of(dotted: str) -> str:
    """``renewal.lifecycle`` -> ``renewal``; ``pki`` -> ``pki.py``; ``__version__`` -> ``__init__.py``."""
    head = dotted.split(".", maxsplit=1)[0]
    if (PACKAGE / head).is_dir():
        return head
    if (PACKAGE / f"{head}.py").is_file():
        return f"{head}.py"
    return "__init__.py"  # a name defined in certkeeper/__init__.py


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("library", sorted(HOMES))
def test_a_library_is_imported_only_in_its_home(library: str) -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in modules()
        if "testbed" not in path.parts and library in imported_modules(path)
    }
    assert importers <= HOMES[library], f"{library} imported outside its home: {sorted(importers - HOMES[library])}"
    assert importers, f"{library} is no longer imported at all: update HOMES"


def test_every_room_of_the_package_is_on_a_floor() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    missing, gone = sorted(rooms - set(FLOOR_OF)), sorted(set(FLOOR_OF) - rooms)
    assert rooms == set(FLOOR_OF), f"not on a floor: {missing}; gone: {gone}"


def test_imports_run_down_the_floors() -> None:
    upward = []
    for path in modules():
        importer = room_of(str(path.relative_to(PACKAGE)).removesuffix(".py").replace("/", "."))
        for imported in certkeeper_imports(path):
            target = room_of(imported)
            if target == importer:
                continue
            if FLOOR_OF[target] > FLOOR_OF[importer]:  # lower floors have higher indexes
                continue
            if FLOOR_OF[target] == FLOOR_OF[importer] and (importer, target) in SIDEWAYS:
                continue
            upward.append(f"{path.relative_to(PACKAGE)} imports certkeeper.{imported}")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(sorted(set(upward)))


def test_no_import_circles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in modules():
        name = str(path.relative_to(PACKAGE)).removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        graph[name] = {i for i in certkeeper_imports(path) if i != name}
    known = set(graph)
    for name, targets in graph.items():
        graph[name] = {t if t in known else t.rsplit(".", 1)[0] for t in targets} & known - {name}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    # A package's __init__ re-exporting its own modules is not a circle.
    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a]
                     if not (b.startswith(a + ".") or a.startswith(b + ".")) and reaches(b, a, set()))
    assert not circles, "import circles:\n" + "\n".join(circles)
