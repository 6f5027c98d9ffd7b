"""The state store contract: every store implementation must pass these (SQLite, and PostgreSQL for real)."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.queues
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certkeeper.errors import LockBusy, SchemaTooNew
from certkeeper.store import (
    CertState,
    EndpointRecord,
    HistoryRecord,
    RenewalRecord,
    Store,
    TlsReportRecord,
    TlsSessionCount,
)
from certkeeper.store.budget import Limit
from certkeeper.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA
from certkeeper.store.sqlite import SqliteStore
from certkeeper.values import replace
from tests.fleet_fixtures import Database, postgres_cluster, postgres_db

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
__all__ = ["postgres_cluster", "postgres_db"]  # fixtures used by name

StoreFactory = Callable[[], Store]


def make_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return lambda: SqliteStore(tmp_path / "state")


def make_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    from certkeeper.store.postgres import PostgresStore

    database: Database = request.getfixturevalue("postgres_db")
    return lambda: PostgresStore(database.url, database.password_file, node="contract")


STORES = {"sqlite": make_sqlite, "postgres": make_postgres}


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens another handle on one fresh store (each call: a new connection, as another process would)."""
    factory: StoreFactory = STORES[request.param](request, tmp_path)
    return factory


@pytest.fixture
def store(open_store: StoreFactory) -> Iterator[Store]:
    instance = open_store()
    yield instance
    instance.close()


def test_state_round_trips_every_field(store: Store) -> None:
    state = CertState(
        name="mail", last_attempt_at=NOW, last_success_at=NOW - timedelta(days=1), failures=2,
        last_error="CA said no", next_check_at=NOW + timedelta(hours=1), next_reason="backoff",
        ari_start=NOW + timedelta(days=50), ari_end=NOW + timedelta(days=52),
        ari_retry_after=NOW + timedelta(hours=6), ari_chosen_at=NOW + timedelta(days=51), reload_pending=True,
    )
    store.put_state(state)
    assert store.get_state("mail") == state
    assert store.get_state("other") is None
    store.put_state(CertState(name="mail"))
    assert store.get_state("mail") == CertState(name="mail")
    assert [s.name for s in store.states()] == ["mail"]


def test_put_states_writes_states_and_renewals_together(store: Store) -> None:
    store.put_state(CertState(name="a", failures=3))
    states = [CertState(name="a", last_success_at=NOW), CertState(name="b", reload_pending=True)]
    store.put_states(states, [RenewalRecord("a", NOW, "success", "v1", "01"),
                              RenewalRecord("b", NOW, "success", "v2", "02")])
    assert list(store.states()) == states
    assert [r.version for r in store.renewals()] == ["v2", "v1"]
    store.put_states([])
    assert list(store.states()) == states


def test_renewal_history_is_newest_first_and_counted(store: Store) -> None:
    for i, result in enumerate(["success", "failure", "success"]):
        store.add_renewal(RenewalRecord("mail", NOW + timedelta(minutes=i), result, version=str(i)))
    store.add_renewal(RenewalRecord("relay", NOW, "rollback"))
    assert [r.version for r in store.renewals("mail")] == ["2", "1", "0"]
    assert store.renewals("mail", limit=1)[0].at == NOW + timedelta(minutes=2)
    assert store.renewal_counts() == {("mail", "success"): 2, ("mail", "failure"): 1, ("relay", "rollback"): 1}


def test_endpoint_record_is_replaced_per_owner_and_endpoint(store: Store) -> None:
    first = EndpointRecord("mail", "smtps://m:465", NOW, "OK", fingerprint="aa", not_after=NOW, details={"a": 1})
    store.put_endpoint(first)
    second = EndpointRecord("mail", "smtps://m:465", NOW + timedelta(hours=1), "CRITICAL", stale=True)
    store.put_endpoint(second)
    assert store.endpoints() == [second]


def test_the_dane_rollover_state_is_replaced_per_certificate(store: Store) -> None:
    assert store.get_dane_state("mail") is None
    first = {"published": [{"name": "_25._tcp.mx.", "rdata": "3 1 1 aa"}], "retiring": {"since": "2026-05-01"}}
    store.put_dane_state("mail", first)
    store.put_dane_state("relay", {"published": []})
    assert store.get_dane_state("mail") == first
    store.put_dane_state("mail", {"published": [], "lagging": ["ns2. [::1]:53: serial 7"]})
    assert store.get_dane_state("mail") == {"published": [], "lagging": ["ns2. [::1]:53: serial 7"]}
    assert store.get_dane_state("relay") == {"published": []}


def test_alerts_are_deduplicated_and_stay_pending_until_sent(store: Store) -> None:
    first = store.enqueue_alert("mail/expiring/14", "WARNING", "subject", "body", NOW)
    assert first is not None
    assert store.enqueue_alert("mail/expiring/14", "WARNING", "subject", "body", NOW) is None
    assert store.alert_seen("mail/expiring/14")
    store.mark_alert_attempt([first.id], NOW, "connection refused")
    pending = store.pending_alerts()
    assert [(a.id, a.attempts, a.last_error) for a in pending] == [(first.id, 1, "connection refused")]
    store.mark_alert_attempt([first.id], NOW, None)
    assert store.pending_alerts() == []
    assert store.forget_alerts("mail/expiring/") == 1
    assert not store.alert_seen("mail/expiring/14")
    assert store.forget_alerts("mail_") == 0  # '_' is not a wildcard


def test_recent_alerts_are_newest_first_sent_or_not(store: Store) -> None:
    for index in range(3):
        store.enqueue_alert(f"expiry:mail:{index}", "WARNING", f"subject {index}", "body", NOW)
    sent = store.recent_alerts()[0]
    store.mark_alert_attempt([sent.id], NOW, None)
    assert [a.subject for a in store.recent_alerts(limit=2)] == ["subject 2", "subject 1"]
    assert store.recent_alerts()[0].sent_at is not None


def tls_report(report_id: str, end: datetime, organization: str = "Google") -> TlsReportRecord:
    return TlsReportRecord(report_id, organization, end - timedelta(days=1), end, NOW, "POST / from 127.0.0.1",
                           json.dumps({"report-id": report_id}))


def test_tls_reports_are_kept_once_per_report_id(store: Store) -> None:
    first = tls_report("2026-12-01T00:00:00Z_example.test", NOW)
    assert store.add_tls_report(first) is True
    assert store.add_tls_report(tls_report(first.report_id, NOW, organization="a retry")) is False
    assert store.tls_reports() == [first]


def test_tls_sessions_are_summed_once_per_report(store: Store) -> None:
    sessions = (TlsSessionCount("example.test", "", "success", "Google", 90),
                TlsSessionCount("example.test", "mx1.example.test", "certificate-expired", "Google", 10))
    first = replace(tls_report("g1", NOW - timedelta(hours=2)), sessions=sessions)
    assert store.add_tls_report(first)
    assert not store.add_tls_report(first)  # a duplicate adds nothing
    assert store.add_tls_report(replace(tls_report("m1", NOW, "Microsoft"), sessions=(
        TlsSessionCount("example.test", "mx1.example.test", "certificate-expired", "Microsoft", 5),)))
    assert store.tls_session_totals() == {("example.test", "", "success"): 90,
                                          ("example.test", "mx1.example.test", "certificate-expired"): 15}
    assert store.tls_last_reports() == {"Google": NOW, "Microsoft": NOW}
    assert [r.sessions for r in store.tls_reports()] == [(), ()]  # summed by the store, not read back


def test_tls_reports_are_selected_by_the_end_of_their_window(store: Store) -> None:
    old, recent = tls_report("old", NOW - timedelta(days=10)), tls_report("recent", NOW - timedelta(hours=1))
    store.add_tls_report(recent)
    store.add_tls_report(old)
    assert store.tls_reports() == [old, recent]
    assert store.tls_reports(NOW - timedelta(days=1)) == [recent]
    assert store.tls_reports(NOW) == []


def test_history_is_oldest_first_and_selected_by_time(store: Store) -> None:
    later = HistoryRecord("mail", NOW, "dane-publish", "added 3 1 1 aa; removed 3 1 1 cc")
    earlier = HistoryRecord("mx", NOW - timedelta(days=2), "dane-publish", "added 3 1 1 bb")
    store.add_history(later)
    store.add_history(earlier)
    assert store.history() == [earlier, later]
    assert store.history(NOW - timedelta(days=1)) == [later]


def _hold_lock(open_store: StoreFactory, ready: multiprocessing.synchronize.Event, seconds: float) -> None:
    with open_store().lock("mail", wait=5):
        ready.set()
        time.sleep(seconds)


def test_lock_excludes_other_processes_and_dies_with_its_holder(open_store: StoreFactory, store: Store) -> None:
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(open_store, ready, 60))
    holder.start()
    assert ready.wait(10)
    with pytest.raises(LockBusy, match=r"certificate 'mail': another certkeeper is working on it \(held by pid"):
        with store.lock("mail", wait=0.2):
            pass
    holder.kill()  # a crashed holder must not block forever
    holder.join()
    with store.lock("mail", wait=5):
        pass


def test_lock_is_exclusive_between_two_handles_of_one_process(store: Store) -> None:
    with store.lock("mail", wait=1), pytest.raises(LockBusy):
        with store.lock("mail", wait=0.05):
            pass
    with store.lock("mail", wait=0):
        pass


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    store._db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(SchemaTooNew, match=f"schema version 999, this certkeeper understands up to {SQLITE_SCHEMA}"):
        SqliteStore(tmp_path / "state")


def test_a_version_1_store_is_migrated_keeping_its_history(tmp_path: Path) -> None:
    import sqlite3

    from certkeeper.store.sqlite import _MIGRATIONS

    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in _MIGRATIONS[1].split(";"):
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO renewals (name, at, result) VALUES ('mail', '2026-11-29T12:00:00+00:00', 'success')")
    db.close()
    store = SqliteStore(tmp_path / "state")
    assert [r.result for r in store.renewals("mail")] == ["success"]
    assert store.add_tls_report(tls_report("after-migration", NOW))
    store.close()


def _open_at(directory: Path, moment: float, answers: multiprocessing.queues.Queue[str]) -> None:
    while time.time() < moment:
        pass
    try:
        SqliteStore(directory).close()
        answers.put("opened")
    except Exception as exc:  # the answer the test shows
        answers.put(repr(exc))


def test_a_new_sqlite_store_opens_for_every_process_starting_at_once(tmp_path: Path) -> None:
    """``renew --force mail & renew --force other`` on a new state directory: switching the new file to WAL had
    failed at once with "database is locked" in one of them (SQLite does not wait there); six processes opening a
    new store at the same moment, ten times, all open it."""
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    for attempt in range(10):
        moment = time.time() + 0.15
        processes = [context.Process(target=_open_at, args=(tmp_path / f"state-{attempt}", moment, answers))
                     for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert sorted(answers.get(timeout=5) for _ in processes) == ["opened"] * 6


def test_a_newer_postgres_schema_is_refused(postgres_db: Database) -> None:
    from certkeeper.store.postgres import SCHEMA_VERSION, PostgresStore

    store = PostgresStore(postgres_db.url, postgres_db.password_file)
    assert store.schema_version() == SCHEMA_VERSION
    store._execute("UPDATE certkeeper_meta SET value = '999' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(
        SchemaTooNew,
        match=rf"{postgres_db.url}: the state store has schema version 999, "
        rf"this certkeeper understands up to {SCHEMA_VERSION}",
    ):
        PostgresStore(postgres_db.url, postgres_db.password_file)


def test_postgres_schema_is_migrated_once_by_nodes_starting_together(postgres_db: Database) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from certkeeper.store.postgres import SCHEMA_VERSION, PostgresStore

    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: PostgresStore(postgres_db.url, postgres_db.password_file), range(8)))
    assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}
    assert list(stores[0].fleet_salts()) == [1]  # one salt: the migration ran once
    for opened in stores:
        opened.close()


ORDERS = Limit("orders pebble", 3, timedelta(hours=3))


def test_the_order_budget_spends_its_tokens_then_says_when_the_next_one_is_free(open_store: StoreFactory) -> None:
    first, second = open_store(), open_store()  # two nodes on one ledger
    assert [first.spend_budget([ORDERS], f"c{i}", 1, None, NOW) for i in range(2)] == [None, None]
    assert second.spend_budget([ORDERS], "c2", 1, None, NOW) is None
    go_at = first.spend_budget([ORDERS], "c3", 1, None, NOW)
    assert go_at == NOW + timedelta(hours=1)  # one token refills every 3 h / 3
    buckets, waiters = second.budget()
    assert [(b.key, b.tokens) for b in buckets] == [("orders pebble", 0.0)]
    assert [(w.name, w.may_go_at) for w in waiters] == [("c3", go_at)]
    assert second.spend_budget([ORDERS], "c3", 1, None, go_at) is None
    assert second.budget()[1] == []  # no longer waiting
    first.close()
    second.close()


def test_the_order_budget_goes_to_the_certificate_closest_to_expiry_first(store: Store) -> None:
    for name in ("a", "b", "c"):
        assert store.spend_budget([ORDERS], name, 1, None, NOW) is None
    later, sooner = NOW + timedelta(days=5), NOW + timedelta(days=1)
    assert store.spend_budget([ORDERS], "late", 1, later, NOW) is not None
    assert store.spend_budget([ORDERS], "soon", 1, sooner, NOW) is not None
    free = NOW + timedelta(hours=1)
    assert store.spend_budget([ORDERS], "late", 1, later, free) is not None  # the token is owed to "soon"
    assert store.spend_budget([ORDERS], "soon", 1, sooner, free) is None
    assert store.spend_budget([ORDERS], "late", 1, later, free + timedelta(hours=1)) is None


def test_a_rate_limit_blocks_the_budget_until_its_retry_after(store: Store) -> None:
    off = Limit("orders other-ca", 0, timedelta(hours=3))  # no budget, but the CA's 429 still counts
    assert store.spend_budget([off], "a", 1, None, NOW) is None
    store.block_budget([off], NOW + timedelta(minutes=30), NOW)
    assert store.spend_budget([off], "a", 1, None, NOW + timedelta(minutes=10)) == NOW + timedelta(minutes=30)
    assert store.spend_budget([off], "a", 1, None, NOW + timedelta(minutes=30)) is None


def test_a_short_registered_domain_bucket_makes_the_order_wait_and_spends_from_no_bucket(store: Store) -> None:
    orders = Limit("orders le", 300, timedelta(hours=3))
    domain = Limit("domain acme-v02.api.letsencrypt.org example.org", 2, timedelta(days=7))
    for name in ("a", "b"):  # one transaction spends from both buckets
        assert store.spend_budget([orders, domain], name, 1, None, NOW) is None
    go_at = store.spend_budget([orders, domain], "c", 1, None, NOW)
    assert go_at == NOW + timedelta(days=7) / 2  # one certificate back every 7 days / 2
    assert {b.key: b.tokens for b in store.budget()[0]} == {orders.key: 298.0, domain.key: 0.0}  # nothing taken
    assert store.spend_budget([orders], "renewal", 1, None, NOW) is None  # a renewal spends no domain token


def test_a_renewal_is_not_held_by_a_spent_orders_bucket_but_by_a_429_and_its_duplicates(store: Store) -> None:
    renewal = replace(ORDERS, exempt=True)  # limits_for(..., renewal=True): the same bucket, spent from by none
    duplicates = Limit("duplicates pebble mail.example.test", 1, timedelta(days=7))
    assert store.spend_budget([renewal, duplicates], "mail", 1, NOW, NOW) is None  # nothing used yet: no row made
    assert [(b.key, b.tokens) for b in store.budget()[0]] == [(duplicates.key, 0.0)]
    for name in ("a", "b", "c"):
        assert store.spend_budget([ORDERS], name, 1, None, NOW) is None
    assert store.spend_budget([ORDERS], "new", 1, None, NOW) is not None  # a new certificate waits
    assert store.spend_budget([renewal], "other", 1, NOW, NOW) is None  # a renewal goes, spending nothing
    assert store.spend_budget([renewal, duplicates], "mail", 1, NOW, NOW) == NOW + timedelta(days=7)
    buckets, waiters = store.budget()
    assert {b.key: b.tokens for b in buckets} == {ORDERS.key: 0.0, duplicates.key: 0.0}
    assert sorted((w.key, w.name) for w in waiters) == [(duplicates.key, "mail"), (ORDERS.key, "new")]
    store.block_budget([ORDERS], NOW + timedelta(minutes=30), NOW)  # a CA's 429 holds renewals too
    assert store.spend_budget([renewal], "other", 1, NOW, NOW + timedelta(minutes=10)) == NOW + timedelta(minutes=30)
    assert (ORDERS.key, "other") in {(w.key, w.name) for w in store.budget()[1]}  # listed where it waits
