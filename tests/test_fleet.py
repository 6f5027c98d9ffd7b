"""Fleets: nodes as real certkeeper processes sharing one certificate through a real PostgreSQL on loopback.

Each node has its own config, state_dir and hook log, the same ``database`` and ``fleet_key_file``, and an
internal CA issuer over one shared ``ca_dir``, whose append-only index counts the orders.  The Pebble tests
(:class:`PebbleFleet`) give the nodes an ACME issuer instead and count orders in Pebble's log.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import pytest

from certkeeper import pki
from certkeeper.config import CaIssuerConfig, Config, load_config
from certkeeper.issuers.internal_ca import ca_status, init_ca
from certkeeper.store import RenewalRecord
from certkeeper.store.fleet import DOWN_ALERT_KEY, FleetKey, fleet_is_newer, may_renew_alone
from certkeeper.store.fleet_records import FleetVersion
from certkeeper.store.postgres import SCHEMA_VERSION, PostgresStore
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome, InstalledPair, Version
from certkeeper.testbed.pebble import Pebble, finds_by_ari
from certkeeper.values import replace
from tests.fleet_fixtures import Database, postgres_cluster, postgres_db
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli

__all__ = ["postgres_cluster", "postgres_db"]  # fixtures used by name

NODES = ("mx1", "mx2", "mx3")


class Fleet:
    """The nodes of one test: their configs, the shared CA and the shared database."""

    issuer_name = "internal"
    key_types: tuple[str, ...] = ("ecdsa-p256", "rsa-2048")

    def __init__(
        self,
        tmp_path: Path,
        database: Database,
        *,
        lifetime: str = "30d",
        settings: str = "",
        lock_timeout: str = "20s",
        fleet_lease: str = "3s",
        renew_before: str = "20s",
        per_node: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.database = database
        self.key_file = tmp_path / "fleet.key"
        self.key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        self.key_file.chmod(0o600)
        self.passphrase = tmp_path / "ca.pass"
        self.passphrase.write_text("fleet tests\n")
        self.passphrase.chmod(0o600)
        self.ca_dir = tmp_path / "ca"
        self.lifetime = lifetime
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.fleet_lease = fleet_lease
        self.renew_before = renew_before
        self.configs = {node: self.write(node, (per_node or {}).get(node, "")) for node in NODES}
        self.start_issuer()

    def issuer_section(self, passphrase: Path | None = None) -> str:
        """The ``[issuers.*]`` table every node shares (``self.issuer_name``)."""
        return textwrap.dedent(f"""\
            [issuers.internal]
            type = "ca"
            ca_dir = "{self.ca_dir}"
            passphrase_file = "{passphrase or self.passphrase}"
            lifetime = "{self.lifetime}"
            """)

    def start_issuer(self) -> None:
        issuer = self.configs["mx1"].issuers["internal"]
        assert isinstance(issuer, CaIssuerConfig)
        self.issuer = issuer
        init_ca(issuer, now=pki.now_utc())

    def write(
        self, node: str, extra: str = "", *, database_url: str | None = None, passphrase: Path | None = None
    ) -> Config:
        home = self.tmp_path / node
        home.mkdir(exist_ok=True)
        hook = hook_script(home, "reload")
        path = home / "certkeeper.toml"
        path.write_text(
            textwrap.dedent(f"""\
            [certkeeper]
            state_dir = "{home / "state"}"
            hook_timeout = "20s"
            verify_timeout = "15s"
            lock_timeout = "{self.lock_timeout}"
            database = "{database_url or self.database.url}"
            database_password_file = "{self.database.password_file}"
            node = "{node}"
            fleet_key_file = "{self.key_file}"
            fleet_lease = "{self.fleet_lease}"
            {self.settings}
            {extra}

            [certificates.mail]
            issuer = "{self.issuer_name}"
            domains = ["mail.example.test", "mx.example.test"]
            key_types = {json.dumps(list(self.key_types))}
            reload = ["{hook}"]
            renew_before = "{self.renew_before}"

            """)
            + self.issuer_section(passphrase)
        )
        return load_config(path)

    def orders(self) -> int:
        """Certificates the CA signed: two per renewal (two key types)."""
        return ca_status(self.issuer, pki.now_utc()).issued

    def serials(self, node: str) -> tuple[str, ...]:
        current = CertificateHome(self.configs[node].settings.state_dir, "mail").current()
        return tuple(p.serial for p in current.pairs) if current else ()

    def renew(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.configs[node], "renew", *args)

    def start(self, node: str, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
        """Run certkeeper as ``node``; output to ``log`` when given (long runs), else to a pipe."""
        command = [sys.executable, "-m", "certkeeper", "-c", str(self.configs[node].path), *args]
        if log is None:
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with log.open("w") as output:
            return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)

    @contextmanager
    def db(self) -> Iterator[PostgresStore]:
        store = PostgresStore(self.database.url, self.database.password_file, node="test")
        try:
            yield store
        finally:
            store.close()

    def rows(self, sql: LiteralString) -> list[tuple[object, ...]]:
        with self.db() as store:
            return store._query(sql)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def fleet(tmp_path: Path, postgres_db: Database) -> Fleet:
    return Fleet(tmp_path, postgres_db)


def test_three_nodes_started_together_order_once_and_install_the_same_serial(fleet: Fleet) -> None:
    processes = [fleet.start(node, "renew") for node in NODES]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert fleet.orders() == 2  # one order, two key types
    assert fleet.rows("SELECT version FROM fleet_versions") == [(1,)]
    serials = {fleet.serials(node) for node in NODES}
    assert len(serials) == 1 and len(next(iter(serials))) == 2
    for node in NODES:
        assert len(hook_runs(fleet.tmp_path / node)) == 1  # each node reloaded its own daemons
    results = fleet.rows("SELECT node, version, result FROM node_results ORDER BY node")
    assert results == [(node, "1", "renewed") for node in NODES]


def test_the_key_column_holds_ciphertext_that_only_the_fleet_key_opens(fleet: Fleet) -> None:
    assert fleet.renew("mx1").returncode == 0
    with fleet.db() as store:
        version = store.fleet_version("mail", 1)
        salts = store.fleet_salts()
    assert version is not None and len(version.pairs) == 2
    raw = fleet.rows("SELECT private_key::text, encode(private_key, 'escape') FROM fleet_pairs")
    for hex_text, escaped in raw:
        assert "PRIVATE KEY" not in str(escaped) and "-----BEGIN" not in str(escaped)
        assert "2d2d2d2d2d424547494e" not in str(hex_text)  # "-----BEGIN" in bytea hex output
    assert list(salts) == [1] and len(salts[1]) == 32  # the fleet's own HKDF salt, made with the schema
    assert {p.key_version for p in version.pairs} == {1}
    key = FleetKey.from_file(fleet.key_file).with_salts(salts)
    installed = CertificateHome(fleet.configs["mx1"].settings.state_dir, "mail").current()
    assert installed is not None
    for pair in version.pairs:
        plain = key.open("mail", 1, pair.key_type, pair.sealed_key, pair.key_version)
        local = next(p for p in installed.pairs if p.key_type == pair.key_type)
        assert plain == local.privkey.read_bytes()
        # The row is bound to its place: the same ciphertext does not open as another version.
        with pytest.raises(Exception, match="does not decrypt"):
            key.open("mail", 2, pair.key_type, pair.sealed_key, pair.key_version)
        # The salt is part of the key: without it (key version 0) the same file does not open the row.
        with pytest.raises(Exception, match="does not decrypt"):
            key.open("mail", 1, pair.key_type, pair.sealed_key, 0)
    other = FleetKey(secrets.token_bytes(32), salts)
    with pytest.raises(Exception, match="fleet_key_file differs"):
        other.open("mail", 1, version.pairs[0].key_type, version.pairs[0].sealed_key, 1)


def test_a_node_started_later_and_a_node_left_behind_catch_up_without_ordering(fleet: Fleet) -> None:
    assert fleet.renew("mx1").returncode == 0
    assert fleet.renew("mx2").returncode == 0
    assert fleet.orders() == 2
    forced = fleet.renew("mx1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert fleet.orders() == 4
    assert fleet.serials("mx1") != fleet.serials("mx2")
    # mx2's own certificate is far from due; the fleet's newer one makes it due, install only.
    status = run_cli(fleet.configs["mx2"], "status", "--json")
    assert json.loads(status.stdout)[0]["next_reason"].startswith("fleet has a newer certificate (version 2")
    assert fleet.renew("mx2").returncode == 0
    assert fleet.renew("mx3").returncode == 0  # a node that was never there
    assert fleet.orders() == 4
    assert fleet.serials("mx1") == fleet.serials("mx2") == fleet.serials("mx3")
    again = fleet.renew("mx2")
    assert again.returncode == 0 and fleet.orders() == 4  # nothing left to do


def test_status_shows_every_nodes_state_for_every_certificate(fleet: Fleet) -> None:
    for node in NODES:
        assert fleet.renew(node).returncode == 0
    rows = json.loads(run_cli(fleet.configs["mx2"], "status", "--json").stdout)
    assert [(n["node"], n["version"], n["result"]) for n in rows[0]["nodes"]] == [
        (node, "1", "renewed") for node in NODES
    ]
    text = run_cli(fleet.configs["mx3"], "status").stdout
    assert "node mx1: version 1" in text and "node mx3: version 1" in text
    db_status = run_cli(fleet.configs["mx1"], "db", "status")
    assert "mail: fleet version 1 ordered by mx" in db_status.stdout


def test_a_node_whose_hook_fails_is_reported_and_the_others_are_not_affected(
    tmp_path: Path, postgres_db: Database
) -> None:
    fleet = Fleet(tmp_path, postgres_db)
    hook_script(tmp_path / "mx3", "reload", "exit 3")
    for node in NODES:
        fleet.renew(node)
    assert fleet.orders() == 2
    results = dict((str(r[0]), str(r[1])) for r in fleet.rows("SELECT node, result FROM node_results"))
    assert results == {"mx1": "renewed", "mx2": "renewed", "mx3": "failed"}
    detail = fleet.rows("SELECT detail FROM node_results WHERE node = 'mx3'")[0][0]
    assert "exited with status 3" in str(detail)


def test_killing_the_node_that_orders_hands_the_order_to_another_after_the_lease(
    tmp_path: Path, postgres_db: Database
) -> None:
    fleet = Fleet(tmp_path, postgres_db, lock_timeout="1s")
    # mx1 hangs inside the order: its CA never gets the passphrase (a FIFO as passphrase_file is refused now).
    hang = ("import sys, time\nimport certkeeper.issuers.ca_store as store\n"
            "store.read_passphrase = lambda config: time.sleep(3600)\nfrom certkeeper.cli import run\nrun()\n")
    stuck = subprocess.Popen([sys.executable, "-c", hang, "-c", str(fleet.configs["mx1"].path), "renew"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: fleet.rows("SELECT node FROM fleet_leases") == [("mx1",)], 30)
        busy = fleet.renew("mx2")
        assert busy.returncode != 0
        assert "held by node mx1, ordering for the fleet" in busy.stderr + busy.stdout
        stuck.send_signal(signal.SIGKILL)  # the ordering node dies mid-order
        stuck.wait(10)
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
        if stuck.stdout:
            stuck.stdout.close()
    assert fleet.orders() == 0
    assert wait_for(lambda: fleet.rows("SELECT expires_at < now() FROM fleet_leases") == [(True,)], 10)
    taken_over = fleet.renew("mx2")
    assert taken_over.returncode == 0, taken_over.stderr
    assert fleet.orders() == 2
    assert fleet.rows("SELECT version, ordered_by FROM fleet_versions") == [(1, "mx2")]
    assert fleet.rows("SELECT count(*) FROM fleet_leases") == [(0,)]


def test_an_unreachable_fleet_store_keeps_the_node_serving_and_it_renews_alone_after_the_grace(fleet: Fleet) -> None:
    assert fleet.renew("mx1").returncode == 0
    assert fleet.renew("mx2").returncode == 0  # installs mx1's version 1
    before = fleet.serials("mx1")
    dead = f"postgresql://certkeeper@127.0.0.1:{_closed_port()}/nowhere"
    fleet.configs["mx1"] = fleet.write("mx1", 'fleet_grace = "3s"', database_url=dead)
    waiting = fleet.renew("mx1", "--force")
    assert waiting.returncode != 0
    assert "mail: busy: certificate 'mail': the fleet store" in waiting.stdout
    assert "is unreachable since" in waiting.stdout
    assert fleet.serials("mx1") == before  # still installed, still served
    assert fleet.orders() == 2
    status = run_cli(fleet.configs["mx1"], "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)[0]["fleet_store"].startswith("unreachable since")
    store = SqliteStore(fleet.configs["mx1"].settings.state_dir)
    try:
        assert [a.subject for a in store.pending_alerts()] == ["fleet store down (mx1)"]
    finally:
        store.close()
    time.sleep(3.2)
    alone = fleet.renew("mx1", "--force")
    assert alone.returncode == 0, alone.stderr
    assert fleet.orders() == 4 and fleet.serials("mx1") != before
    alone_serials = fleet.serials("mx1")
    # The database is back: the alert is re-armed, and the node publishes the version it renewed alone (newer
    # than the fleet's), so the others converge on it at their next pass without a new order.
    fleet.configs["mx1"] = fleet.write("mx1")
    assert fleet.renew("mx1").returncode == 0
    store = SqliteStore(fleet.configs["mx1"].settings.state_dir)
    try:
        assert not store.alert_seen(DOWN_ALERT_KEY)
        assert "fleet store reachable again (mx1)" in [a.subject for a in store.pending_alerts()]
    finally:
        store.close()
    assert fleet.rows("SELECT version, ordered_by FROM fleet_versions ORDER BY version") == [(1, "mx1"), (2, "mx1")]
    assert fleet.rows("SELECT version FROM node_results WHERE node = 'mx1'") == [("2",)]
    assert fleet.renew("mx2").returncode == 0
    assert fleet.serials("mx2") == alone_serials and fleet.orders() == 4
    assert fleet.rows("SELECT version FROM node_results WHERE node = 'mx2'") == [("2",)]


def test_db_init_creates_the_schema_and_a_newer_schema_is_refused(fleet: Fleet) -> None:
    first = run_cli(fleet.configs["mx1"], "db", "init")
    assert first.returncode == 0 and f"schema created, version {SCHEMA_VERSION}" in first.stdout
    again = run_cli(fleet.configs["mx1"], "db", "init")
    assert f"schema version {SCHEMA_VERSION}, up to date" in again.stdout
    with fleet.db() as store:
        store._execute("UPDATE certkeeper_meta SET value = '7' WHERE key = 'schema_version'")
    refused = run_cli(fleet.configs["mx1"], "db", "init")
    assert refused.returncode == 74
    assert f"has schema version 7, this certkeeper understands up to {SCHEMA_VERSION}" in refused.stderr
    # A node with a too-new database keeps its certificates and says why it cannot coordinate.
    renew = fleet.renew("mx1")
    assert renew.returncode != 0 and "schema version 7" in renew.stdout + renew.stderr


def test_three_daemons_renew_a_short_lived_certificate_with_one_order_each_time(
    tmp_path: Path, postgres_db: Database
) -> None:
    fleet = Fleet(tmp_path, postgres_db, lifetime="30s")
    # Daemons log to files: an unread pipe fills up and blocks a long-running process.
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    daemons = [fleet.start(node, "daemon", log=logs_dir / f"{node}.log") for node in NODES]
    try:
        assert wait_for(lambda: len(fleet.rows("SELECT 1 FROM fleet_versions")) >= 3, 120)

        def converged() -> bool:
            latest = fleet.rows("SELECT max(version)::text FROM fleet_versions")[0][0]
            return fleet.rows("SELECT DISTINCT version FROM node_results") == [(latest,)]

        assert wait_for(converged, 30)
        assert all(d.poll() is None for d in daemons)
    finally:
        for process in daemons:
            process.send_signal(signal.SIGTERM)
        for process in daemons:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logs = [(logs_dir / f"{node}.log").read_text() for node in NODES]
    assert all(process.returncode == 0 for process in daemons), logs
    versions = len(fleet.rows("SELECT 1 FROM fleet_versions"))
    assert fleet.orders() == 2 * versions, logs  # exactly one order (two key types) per renewal
    assert len({fleet.serials(node) for node in NODES}) == 1


# -- the same fleet against Pebble, an ACME CA ----------------------------------------------------------------


class PebbleFleet(Fleet):
    """The nodes share an ACME issuer on a Pebble of the test's own (its log is the CA's record of orders).

    The issuer is the one :mod:`certkeeper.testbed.demo` writes: Pebble's HTTPS CA as ``ca_bundle``, its issuing
    chain as
    ``trust_roots``, http-01 answered by certkeeper's standalone listener on Pebble's validation port.  Every
    node is configured with the same port; only the node holding the ordering lease orders, so only one listens
    at a time.  One key type: one ACME order per renewal.
    """

    issuer_name = "pebble"
    key_types = ("ecdsa-p256",)

    def __init__(self, tmp_path: Path, database: Database, pebble: Pebble, **options: Any) -> None:
        self.pebble = pebble
        self.trust_roots = pebble.write_issuer_chain(tmp_path / "pebble-roots.pem")
        super().__init__(tmp_path, database, **options)

    def issuer_section(self, passphrase: Path | None = None) -> str:
        return textwrap.dedent(f"""\
            [issuers.pebble]
            type = "acme"
            directory = "{self.pebble.directory_url}"
            contact = "mailto:hostmaster@example.test"
            challenge = "http-01"
            http_address = "127.0.0.1"
            http_port = {self.pebble.http_port}
            ca_bundle = "{self.pebble.ca_file}"
            trust_roots = "{self.trust_roots}"
            """)

    def start_issuer(self) -> None:
        """Nothing to set up: each node registers its own ACME account on first use."""

    def orders(self) -> int:
        """ACME orders Pebble created (its log; a refused newOrder request creates none)."""
        return len(_PEBBLE_ORDER_ADDED.findall(self.pebble.log_path.read_text()))

    def issued(self) -> list[tuple[int, str]]:
        """(serial, order) of each certificate Pebble issued, in order."""
        return [(int(serial, 16), order) for serial, order in _PEBBLE_ISSUED.findall(self.pebble.log_path.read_text())]

    def orders_left_unfinished(self) -> set[str]:
        text = self.pebble.log_path.read_text()
        return set(_PEBBLE_ORDER_ADDED.findall(text)) - {order for _, order in _PEBBLE_ISSUED.findall(text)}


_PEBBLE_ORDER_ADDED = re.compile(r'Added order "([^"]+)" to the db')
_PEBBLE_ISSUED = re.compile(r"Issued certificate serial ([0-9a-f]+) for order (\S+)")
_ISSUED_EVENT = re.compile(r"CertificateIssued name=mail key_type=\S+ issuer=pebble serial=([0-9a-f]+) ")


def renewal_history(config: Config) -> list[RenewalRecord]:
    store = SqliteStore(config.settings.state_dir)
    try:
        return store.renewals("mail")
    finally:
        store.close()


@contextmanager
def running_daemons(fleet: Fleet, logs_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """``certkeeper daemon`` for every node, logging to ``logs_dir/<node>.log`` (an unread pipe would fill up and
    block the process); SIGTERM on the way out, SIGKILL for one that does not drain within 60 s."""
    logs_dir.mkdir(exist_ok=True)
    daemons: list[subprocess.Popen[str]] = []
    try:
        for node in NODES:
            daemons.append(fleet.start(node, "daemon", log=logs_dir / f"{node}.log"))
        yield daemons
    finally:
        for process in daemons:
            process.send_signal(signal.SIGTERM)
        for process in daemons:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def test_three_daemons_share_a_pebble_certificate_with_one_acme_order_per_renewal(
    tmp_path: Path, postgres_db: Database, pebble_factory: Callable[..., Pebble]
) -> None:
    # 30 s certificates renewed 20 s before expiry (Pebble's ARI window moves it a little later): a renewal every
    # 10-15 s, with 15 s or more to spare under load.  A 30 s lease: under load the heartbeat may lag, and a lease
    # lost mid-order would hand a second order (and the http-01 port) to another node; this test is about the
    # normal path (the takeover has its own test above).
    pebble = pebble_factory(validity_seconds=30)
    fleet = PebbleFleet(tmp_path, postgres_db, pebble, fleet_lease="30s", renew_before="20s")
    logs_dir = tmp_path / "logs"

    def converged() -> bool:
        latest = fleet.rows("SELECT max(version)::text FROM fleet_versions")[0][0]
        return latest is not None and fleet.rows("SELECT DISTINCT version FROM node_results") == [(latest,)]

    with running_daemons(fleet, logs_dir) as daemons:
        # The first issuance and two renewals, then every node on the newest version.
        renewed = wait_for(lambda: len(fleet.rows("SELECT 1 FROM fleet_versions")) >= 3, 150)
        settled = renewed and wait_for(converged, 30)
        alive = [d.poll() is None for d in daemons]
        # Stop before counting, so no renewal starts between the counts below.
    logs = {node: (logs_dir / f"{node}.log").read_text() for node in NODES}
    assert renewed and settled and all(alive), logs
    assert [d.returncode for d in daemons] == [0, 0, 0], logs

    versions = fleet.rows("SELECT version, ordered_by FROM fleet_versions WHERE name = 'mail' ORDER BY version")
    fleet_serials = [int(str(s), 16) for (s,) in fleet.rows("SELECT serial FROM fleet_pairs ORDER BY version")]
    assert [v for v, _ in versions] == list(range(1, len(versions) + 1))
    # Pebble's side: one order per fleet version, and it issued exactly the certificates the fleet stored.
    assert fleet.orders() == len(versions), logs
    assert [serial for serial, _ in fleet.issued()] == fleet_serials
    assert not fleet.orders_left_unfinished()
    # Each node's own record: it ordered (logged CertificateIssued) exactly the versions stored as ordered_by it.
    for node in NODES:
        ordered = [int(s, 16) for s in _ISSUED_EVENT.findall(logs[node])]
        assert ordered == [serial for serial, (_, by) in zip(fleet_serials, versions, strict=True) if by == node]
    # Each node's renewal history: only fleet certificates were installed, and all end on the same serial.
    for node in NODES:
        installed = [r.serial for r in renewal_history(fleet.configs[node]) if r.result == "success"]
        assert installed and {int(s, 16) for s in installed} <= set(fleet_serials), (node, installed)
    assert {fleet.serials(node) for node in NODES} == {(format(fleet_serials[-1], "x"),)}
    results = fleet.rows("SELECT node, version, serials FROM node_results ORDER BY node")
    assert results == [(node, str(len(versions)), format(fleet_serials[-1], "x")) for node in NODES]
    for node in NODES:
        assert "cannot listen on" not in logs[node]  # never two http-01 listeners on the port at once


def test_a_node_renewing_a_certificate_another_nodes_acme_account_ordered_gets_it_renewed(
    tmp_path: Path, postgres_db: Database, pebble_factory: Callable[..., Pebble]
) -> None:
    # Each node has its own ACME account; the CA refuses ARI's "replaces" for another account's certificate.
    fleet = PebbleFleet(tmp_path, postgres_db, pebble_factory(), fleet_lease="30s")
    assert fleet.renew("mx1").returncode == 0
    assert fleet.renew("mx2").returncode == 0  # installs mx1's order
    [serial] = fleet.serials("mx2")
    renewed = run_cli(fleet.configs["mx2"], "-v", "renew", "--force")
    output = renewed.stdout + renewed.stderr
    assert renewed.returncode == 0, output
    # Pebble cannot find one certificate in 256 by its ARI identifier and fails the order instead of refusing it
    # (certkeeper.testbed.pebble.finds_by_ari); either way the order goes again without replaces.
    expected = "the CA refused an order replacing" if finds_by_ari(int(serial, 16)) else \
        "the CA failed an order replacing"
    assert expected in output
    assert "ordering without replaces" in output
    assert fleet.rows("SELECT version, ordered_by FROM fleet_versions ORDER BY version") == [(1, "mx1"), (2, "mx2")]
    assert fleet.orders() == 2 and not fleet.orders_left_unfinished()  # the refused request created no order
    assert fleet.serials("mx2") == (format(fleet.issued()[-1][0], "x"),)


# -- the pure rules ------------------------------------------------------------------------------------------


def test_a_fleet_version_is_taken_only_when_it_fits_and_is_newer(fleet: Fleet) -> None:
    certificate = fleet.configs["mx1"].certificates["mail"]
    now = pki.now_utc()
    head = FleetVersion(
        "mail",
        2,
        "mx2",
        now,
        "internal",
        ("mx.example.test", "mail.example.test"),
        now - timedelta(hours=1),
        now + timedelta(days=30),
        frozenset({"aa", "bb"}),
        ("rsa-2048", "ecdsa-p256"),
    )
    assert fleet_is_newer(head, None, certificate, now)
    assert not fleet_is_newer(replace(head, domains=("other.test",)), None, certificate, now)
    assert not fleet_is_newer(replace(head, key_types=("ecdsa-p256",)), None, certificate, now)
    assert not fleet_is_newer(replace(head, not_after=now), None, certificate, now)
    # Against what is installed: taken when newer or ordered in the same second (certificates carry whole
    # seconds: a forced renewal right after a pass), never when older or the same pairs.
    def installed(not_before: datetime, *fingerprints: str) -> Version:
        pairs = tuple(InstalledPair(key_type, "01", fingerprint, not_before, head.not_after, Path("/nonexistent"))
                      for key_type, fingerprint in zip(head.key_types, fingerprints, strict=True))
        return Version("mail", "20261202T000000Z", Path("/nonexistent"), not_before, "internal", head.domains, pairs)

    second = timedelta(seconds=1)
    assert fleet_is_newer(head, installed(head.not_before - second, "cc", "dd"), certificate, now)
    assert fleet_is_newer(head, installed(head.not_before, "cc", "dd"), certificate, now)
    assert not fleet_is_newer(head, installed(head.not_before + second, "cc", "dd"), certificate, now)
    assert not fleet_is_newer(head, installed(head.not_before - second, "aa", "bb"), certificate, now)
    assert may_renew_alone(now - timedelta(days=3), now, timedelta(days=3))
    assert not may_renew_alone(now - timedelta(days=2), now, timedelta(days=3))


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
