"""Benchmark: many node loops sharing certificates through a real PostgreSQL, for a bounded time.

Run on demand (pytest does not collect it)::

    python tests/bench/bench_fleet.py [--nodes 60] [--certs 25] [--seconds 40] [--lifetime 8] [--interval 1]

Starts a private PostgreSQL on loopback (:mod:`certkeeper.testbed.postgres`), then runs ``--nodes`` threads,
each one node with its own :class:`certkeeper.store.fleet.Fleet` (its own connection, its own ``node`` name) over the
same ``--certs`` certificates.  A node's pass is what :meth:`Renewer.run` does with a fleet: per certificate,
decide with the real policy (:func:`certkeeper.renewal.policy.decide_renewal`), ask the fleet for a newer version,
and when due call :meth:`Fleet.obtain` with an issuing function that counts orders; then one
:meth:`Fleet.record_pass`.  Installing is an in-memory swap (disks and hooks are not what is measured).

Time is compressed: certificates live ``--lifetime`` seconds and renew at two thirds of it, and a pass runs
every ``--interval`` seconds instead of every ``check_interval`` (12 h).  Every certificate therefore falls due
on every node at nearly the same instant, the worst case for the ordering lease.

Reports orders per renewal (must be 1.0), the queries one node makes per pass and per renewal, and what that
means per node-hour at the real ``check_interval``.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certkeeper import pki
from certkeeper.config import CertificateConfig, load_config
from certkeeper.errors import CertkeeperError, LockBusy
from certkeeper.model import KeyType, RenewBefore
from certkeeper.renewal.policy import History, Installed, Wanted, decide_renewal
from certkeeper.store.fleet import Fleet, FleetKey, PassResult
from certkeeper.store.fleet_records import FleetDatabase
from certkeeper.store.postgres import PostgresStore
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import InstalledPair, KeyPair, Version
from certkeeper.testbed.postgres import PostgresCluster

REAL_CHECK_INTERVAL = timedelta(hours=12)


class Orders:
    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.lock = threading.Lock()

    def issue(self, name: str, lifetime: timedelta) -> list[KeyPair]:
        with self.lock:
            self.count[name] += 1
        key = pki.generate_key(KeyType.ECDSA_P256)
        now = pki.now_utc()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.example.test")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.example.test")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return [KeyPair(KeyType.ECDSA_P256, key, certificate, ())]


def as_version(name: str, pairs: list[KeyPair], now: datetime) -> Version:
    installed = tuple(
        InstalledPair(
            p.key_type.value,
            pki.serial_hex(p.certificate),
            pki.fingerprint(p.certificate),
            pki.not_before(p.certificate),
            pki.not_after(p.certificate),
            Path("/dev/null"),
        )
        for p in pairs
    )
    return Version(name, now.strftime("%H%M%S%f"), Path("/dev/null"), now, "sim", (f"{name}.example.test",), installed)


class Node(threading.Thread):
    """One node's daemon loop, compressed: a pass every ``interval`` seconds over every certificate."""

    def __init__(
        self,
        fleet: Fleet,
        database: PostgresStore,
        certificates: dict[str, CertificateConfig],
        orders: Orders,
        lifetime: timedelta,
        interval: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.database = database
        self.certificates = certificates
        self.orders = orders
        self.lifetime = lifetime
        self.interval = interval
        self.stop_event = stop
        self.local: dict[str, Version] = {}
        self.passes = 0
        self.renewals = 0
        self.busy = 0
        self.errors: list[str] = []
        self.idle_passes = 0  # passes with nothing due: what a node costs the database most of the time
        self.idle_queries = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.one_pass(pki.now_utc())
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def one_pass(self, now: datetime) -> None:
        before = self.database.queries
        results = []
        for name, certificate in self.certificates.items():
            current = self.local.get(name)
            installed = (
                None
                if current is None
                else Installed(
                    next(iter(current.fingerprints)),
                    current.not_before,
                    current.not_after,
                    certificate.domains,
                    ("ecdsa-p256",),
                )
            )
            wanted = Wanted(name, certificate.domains, ("ecdsa-p256",), RenewBefore.parse("1/3"))
            decision = decide_renewal(installed, wanted, History(), now=now, check_interval=REAL_CHECK_INTERVAL)
            result = "not-due"
            if decision.due or self.fleet.newer(certificate, current, now) is not None:
                try:
                    pairs = self.fleet.obtain(
                        certificate, current, functools.partial(self.orders.issue, name, self.lifetime)
                    )
                    self.local[name] = as_version(name, pairs, pki.now_utc())
                    self.renewals += 1
                    result = "renewed"
                except LockBusy:
                    self.busy += 1
                    result = "busy"
                except CertkeeperError as exc:
                    self.errors.append(str(exc))
                    result = "failed"
            results.append(PassResult(name, self.local.get(name), result))
        self.fleet.record_pass(results)
        for name, certificate in self.certificates.items():  # the daemon's next-wake decisions ask once more
            self.fleet.newer(certificate, self.local.get(name), now)
        self.passes += 1
        if all(r.result == "not-due" for r in results):
            self.idle_passes += 1
            self.idle_queries += self.database.queries - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--certs", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--lifetime", type=float, default=8, help="certificate lifetime in seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a node's passes")
    args = parser.parse_args()
    lifetime = timedelta(seconds=args.lifetime)
    names = [f"cert{i:03d}" for i in range(args.certs)]
    with PostgresCluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        key_file = base / "fleet.key"
        key_file.write_text("benchmark fleet key, not a secret\n")
        key_file.chmod(0o600)
        (base / "ca.pass").write_text("unused\n")
        (base / "ca.pass").chmod(0o600)
        tables = "".join(
            f'\n[certificates.{n}]\nissuer = "sim"\ndomains = ["{n}.example.test"]\nkey_types = ["ecdsa-p256"]\n'
            for n in names
        )
        orders = Orders()
        stop = threading.Event()
        PostgresStore(cluster.url, cluster.password_file).close()  # the schema, before the crowd arrives
        nodes: list[Node] = []
        for index in range(args.nodes):
            node = f"node{index:04d}"
            path = base / f"{node}.toml"
            path.write_text(
                f'[certkeeper]\nstate_dir = "{base / node}"\ndatabase = "{cluster.url}"\n'
                f'database_password_file = "{cluster.password_file}"\nnode = "{node}"\n'
                f'fleet_key_file = "{key_file}"\nfleet_lease = "5s"\nlock_timeout = "{args.lifetime / 2}s"\n'
                f'\n[issuers.sim]\ntype = "ca"\nca_dir = "{base / "ca"}"\npassphrase_file = "{base / "ca.pass"}"\n'
                + tables
            )
            config = load_config(path)
            database = PostgresStore(cluster.url, cluster.password_file, node=node, migrate=False)
            fleet = Fleet(
                config, SqliteStore(base / node), FleetKey.from_file(key_file), functools.partial(_same, database)
            )
            nodes.append(Node(fleet, database, dict(config.certificates), orders, lifetime, args.interval, stop))
        started = time.monotonic()
        for worker in nodes:
            worker.start()
        time.sleep(args.seconds)
        stop.set()
        for worker in nodes:
            worker.join(120)
        elapsed = time.monotonic() - started
        check = PostgresStore(cluster.url, cluster.password_file)
        versions = int(check._query("SELECT count(*) FROM fleet_versions")[0][0])
        check.close()
        report(args, nodes, orders, versions, elapsed)


def report(args: argparse.Namespace, nodes: list[Node], orders: Orders, versions: int, elapsed: float) -> None:
    total_orders = sum(orders.count.values())
    queries = sum(n.database.queries for n in nodes)
    passes = sum(n.passes for n in nodes)
    renewals = sum(n.renewals for n in nodes)
    errors = [e for n in nodes for e in n.errors]
    busy = sum(n.busy for n in nodes)
    idle_passes = sum(n.idle_passes for n in nodes)
    idle = sum(n.idle_queries for n in nodes) / max(idle_passes, 1)
    before = 1 + args.certs  # the baseline, before one query per pass: one head per certificate + the results
    steady = 2  # the goal: all heads in one read, the results in one write
    per_renewal = (queries - passes * steady) / max(renewals, 1)
    print(
        f"{args.nodes} nodes x {args.certs} shared certificates, {elapsed:.0f} s, lifetime {args.lifetime:g} s, "
        f"a pass every {args.interval:g} s"
    )
    print(
        f"renewals (fleet versions): {versions}   orders: {total_orders}   "
        f"orders per renewal: {total_orders / max(versions, 1):.3f}"
    )
    print(f"installs on nodes: {renewals}   busy (lease wait ran out): {busy}   errors: {len(errors)}")
    for error in errors[:5]:
        print(f"  error: {error}")
    print(
        f"queries: {queries} ({queries / elapsed:.0f}/s), per node-pass {queries / max(passes, 1):.1f} "
        f"per node-renewal ~{per_renewal:.1f} beyond {steady}"
    )
    if idle_passes:
        print(f"passes with nothing due: {idle_passes}, queries per such node-pass {idle:.2f} (goal {steady}: "
              f"1 read + 1 write; one head query per certificate would be {before}: {before / idle:.0f}x more)")
    else:
        print("passes with nothing due: none (use a --lifetime several times the pass duration)")
    hour_passes = timedelta(hours=1) / REAL_CHECK_INTERVAL
    print(
        f"at check_interval = 12 h: {steady * hour_passes:.1f} queries per node-hour from passes, plus "
        f"~{per_renewal:.0f} per certificate renewal on that node "
        "(the daemon's next-wake decisions reuse the pass's heads)"
    )
    in_sync = sum(
        1
        for n in nodes
        for name in n.certificates
        if n.local.get(name) is not None
        and n.fleet._heads.get(name) is not None
        and n.local[name].fingerprints == n.fleet._heads[name].fingerprints
    )
    print(f"node-certificates on the fleet's newest version at the end: {in_sync}/{len(nodes) * args.certs}")


def _same(database: PostgresStore) -> FleetDatabase:
    return database


if __name__ == "__main__":
    main()
