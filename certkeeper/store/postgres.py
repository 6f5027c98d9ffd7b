"""The PostgreSQL store: the :class:`~certkeeper.store.Store` contract, and what a fleet shares.

The only module that imports psycopg (optional: ``pip install certkeeper[postgresql]``).  One connection per
store, in autocommit mode, each write its own short transaction, guarded by a mutex so the issuing threads of a
pass can share it.  A broken connection is dropped and opened again on the next call.

Schema: a ``certkeeper_meta`` row holds the schema version; :data:`_MIGRATIONS` brings an older database up to
:data:`SCHEMA_VERSION` inside one transaction serialised by an advisory lock (several nodes starting at once
migrate once), and a newer one is refused with :class:`~certkeeper.errors.SchemaTooNew` (a node running an
older certkeeper must not write into tables it does not understand).

Locks (:meth:`PostgresStore.lock`) are session advisory locks, each on a dedicated connection: PostgreSQL
drops them when the holder's connection dies, so a killed certkeeper never blocks the next one.  Fleet ordering
leases are rows with an expiry (:meth:`acquire_lease`), by the database's clock, so nodes' clocks may disagree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from certkeeper.errors import InputError, LockBusy, SchemaTooNew, StoreError
from certkeeper.permissions import check_trusted_file
from certkeeper.store.base import AlertRecord, CertState, EndpointRecord, HistoryRecord, RenewalRecord, TlsReportRecord
from certkeeper.store.budget import Bucket, Limit, Waiter, blocked, decide_spend, spending, wait_keys
from certkeeper.store.fleet_records import FleetPair, FleetVersion, LeaseHolder, NodeResult

SCHEMA_VERSION = 6
CONNECT_TIMEOUT = 5
_LOCK_CLASS = 0x63657274  # 'cert': the first key of every certkeeper advisory lock
_MIGRATION_LOCK = 0x6d696772  # 'migr'

_MIGRATIONS: dict[int, tuple[LiteralString, ...]] = {
    1: (
        """CREATE TABLE cert_state (
            name TEXT PRIMARY KEY,
            last_attempt_at TIMESTAMPTZ, last_success_at TIMESTAMPTZ,
            failures INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
            next_check_at TIMESTAMPTZ, next_reason TEXT NOT NULL DEFAULT '',
            ari_start TIMESTAMPTZ, ari_end TIMESTAMPTZ, ari_retry_after TIMESTAMPTZ, ari_chosen_at TIMESTAMPTZ,
            reload_pending BOOLEAN NOT NULL DEFAULT FALSE)""",
        """CREATE TABLE renewals (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL, at TIMESTAMPTZ NOT NULL, result TEXT NOT NULL,
            version TEXT NOT NULL DEFAULT '', serial TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX renewals_by_name ON renewals (name, id)",
        """CREATE TABLE endpoints (
            owner TEXT NOT NULL, endpoint TEXT NOT NULL, at TIMESTAMPTZ NOT NULL, status TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '', fingerprint TEXT NOT NULL DEFAULT '', not_after TIMESTAMPTZ,
            stale BOOLEAN NOT NULL DEFAULT FALSE, details JSONB NOT NULL DEFAULT '{}',
            PRIMARY KEY (owner, endpoint))""",
        "CREATE TABLE alert_keys (key TEXT PRIMARY KEY, first_at TIMESTAMPTZ NOT NULL)",
        """CREATE TABLE alerts (
            id BIGSERIAL PRIMARY KEY,
            key TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, severity TEXT NOT NULL,
            subject TEXT NOT NULL, body TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', sent_at TIMESTAMPTZ)""",
        "CREATE INDEX alerts_pending ON alerts (id) WHERE sent_at IS NULL",
        # The fleet: one row per issuance, one per key type of it, one lease per certificate being ordered.
        """CREATE TABLE fleet_versions (
            name TEXT NOT NULL, version INTEGER NOT NULL, ordered_by TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL, issuer TEXT NOT NULL, domains TEXT[] NOT NULL,
            not_before TIMESTAMPTZ NOT NULL, not_after TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (name, version))""",
        """CREATE TABLE fleet_pairs (
            name TEXT NOT NULL, version INTEGER NOT NULL, key_type TEXT NOT NULL,
            fullchain TEXT NOT NULL, serial TEXT NOT NULL, fingerprint TEXT NOT NULL,
            private_key BYTEA NOT NULL,  -- AES-256-GCM nonce || ciphertext: never plain text (certkeeper.store.fleet)
            PRIMARY KEY (name, version, key_type),
            FOREIGN KEY (name, version) REFERENCES fleet_versions ON DELETE CASCADE)""",
        """CREATE TABLE fleet_leases (
            name TEXT PRIMARY KEY, node TEXT NOT NULL, token TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE node_results (
            node TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, result TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL, detail TEXT NOT NULL DEFAULT '', serials TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (node, name))""",
    ),
    # A salt for the fleet key's HKDF, one per key version, made once with the schema: each fleet derives its
    # own sealing key, and a future key rotation adds a version here.  Key version 0 (no salt) opens the rows
    # sealed before.  The salt need not be secret, only the fleet's own.
    2: (
        """CREATE TABLE fleet_keys (
            key_version INTEGER PRIMARY KEY, salt BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        """INSERT INTO fleet_keys (key_version, salt)
            VALUES (1, sha256(convert_to(gen_random_uuid()::text || clock_timestamp()::text, 'UTF8')))""",
        "ALTER TABLE fleet_pairs ADD COLUMN key_version INTEGER NOT NULL DEFAULT 0",
    ),
    # The fleet-wide order budget (certkeeper.store.budget): token buckets, and the renewals waiting for them.
    3: (
        """CREATE TABLE order_budget (
            key TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
            blocked_until TIMESTAMPTZ)""",
        """CREATE TABLE order_waits (
            key TEXT NOT NULL, name TEXT NOT NULL, count INTEGER NOT NULL, not_after TIMESTAMPTZ,
            since TIMESTAMPTZ NOT NULL, seen_at TIMESTAMPTZ NOT NULL, may_go_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (key, name))""",
    ),
    # TLS reports (RFC 8460), one row per report-id: a report mailed twice or POSTed again is kept once.
    4: (
        """CREATE TABLE tls_reports (
            report_id TEXT PRIMARY KEY, organization TEXT NOT NULL, start_at TIMESTAMPTZ NOT NULL,
            end_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL, source TEXT NOT NULL,
            document TEXT NOT NULL)""",
        "CREATE INDEX tls_reports_by_end ON tls_reports (end_at)",
        """CREATE TABLE tls_sessions (
            report_id TEXT NOT NULL REFERENCES tls_reports ON DELETE CASCADE, policy_domain TEXT NOT NULL,
            receiving_mx TEXT NOT NULL, result TEXT NOT NULL, organization TEXT NOT NULL, sessions BIGINT NOT NULL,
            PRIMARY KEY (report_id, policy_domain, receiving_mx, result))""",
        """CREATE TABLE history (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL, at TIMESTAMPTZ NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX history_by_at ON history (at)",
    ),
    # The DANE rollover state (certkeeper.dane.rollover): one JSON document per certificate.
    5: ("CREATE TABLE dane_state (name TEXT PRIMARY KEY, data JSONB NOT NULL)",),
    # What a failed attempt was made with (certkeeper.renewal.lifecycle): a change ends its backoff.
    6: ("ALTER TABLE cert_state ADD COLUMN failed_inputs TEXT NOT NULL DEFAULT ''",),
}


def redact_url(url: str) -> str:
    """The URL without a password, for messages and ``location``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _lock_keys(name: str) -> tuple[int, int]:
    """Two int4 advisory lock keys: certkeeper's class, and a hash of the certificate name."""
    digest = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True)
    return _LOCK_CLASS, digest



_PUT_STATE: LiteralString = (
    "INSERT INTO cert_state VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO UPDATE SET "
    "last_attempt_at = EXCLUDED.last_attempt_at, last_success_at = EXCLUDED.last_success_at, "
    "failures = EXCLUDED.failures, last_error = EXCLUDED.last_error, "
    "next_check_at = EXCLUDED.next_check_at, next_reason = EXCLUDED.next_reason, "
    "ari_start = EXCLUDED.ari_start, ari_end = EXCLUDED.ari_end, "
    "ari_retry_after = EXCLUDED.ari_retry_after, ari_chosen_at = EXCLUDED.ari_chosen_at, "
    "reload_pending = EXCLUDED.reload_pending, failed_inputs = EXCLUDED.failed_inputs"
)
_ADD_RENEWAL: LiteralString = (
    "INSERT INTO renewals (name, at, result, version, serial, detail) VALUES (%s,%s,%s,%s,%s,%s)"
)


def _state_row(state: CertState) -> tuple[Any, ...]:
    return (state.name, state.last_attempt_at, state.last_success_at, state.failures, state.last_error,
            state.next_check_at, state.next_reason, state.ari_start, state.ari_end, state.ari_retry_after,
            state.ari_chosen_at, state.reload_pending, state.failed_inputs)


def _renewal_row(record: RenewalRecord) -> tuple[Any, ...]:
    return (record.name, record.at, record.result, record.version, record.serial, record.detail)


class PostgresStore:
    """The shared store.  Safe to use from several threads; each lock holds its own connection."""

    def __init__(self, database_url: str, password_file: Path | None = None, *, node: str = "",
                 connect_timeout: int = CONNECT_TIMEOUT, migrate: bool = True) -> None:
        self.location = redact_url(database_url)
        self.node = node or socket.gethostname()
        self.queries = 0
        self._url = database_url
        self._password = _read_password(password_file)
        self._connect_timeout = connect_timeout
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        with self._mutex:
            self._conn = self._connect()
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.close()
                raise

    # -- connections -------------------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        kwargs: dict[str, Any] = {
            "autocommit": True, "connect_timeout": self._connect_timeout,
            "application_name": f"certkeeper pid {os.getpid()} on {self.node}",
            "options": "-c timezone=UTC",
        }
        if self._password is not None:
            kwargs["password"] = self._password
        try:
            return psycopg.connect(self._url, **kwargs)
        except psycopg.Error as exc:
            msg = f"{self.location}: cannot connect to PostgreSQL: {_first_line(exc)}"
            raise StoreError(msg) from None

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The shared connection, reopened if it broke; a database error becomes a StoreError."""
        with self._mutex:
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._connect()
            try:
                yield self._conn
            except psycopg.errors.SerializationFailure as exc:
                msg = f"{self.location}: {_first_line(exc)}"
                raise StoreError(msg) from None
            except psycopg.OperationalError as exc:
                self._conn.close()
                msg = f"{self.location}: PostgreSQL connection lost: {_first_line(exc)}"
                raise StoreError(msg) from None
            except psycopg.Error as exc:
                msg = f"{self.location}: {_first_line(exc)}"
                raise StoreError(msg) from None

    def _query(self, sql: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._session() as conn:
            self.queries += 1
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    def _execute(self, sql: LiteralString, params: Sequence[Any] = ()) -> int:
        with self._session() as conn:
            self.queries += 1
            return conn.execute(sql, params).rowcount

    # -- schema ------------------------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the schema up to :data:`SCHEMA_VERSION`; returns the version found before."""
        with self._session() as conn, conn.transaction():
            self.queries += 4
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS certkeeper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM certkeeper_meta WHERE key = 'schema_version'").fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(self.location, found, SCHEMA_VERSION)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute("INSERT INTO certkeeper_meta VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))
        return found

    def schema_version(self) -> int:
        rows = self._query("SELECT value FROM certkeeper_meta WHERE key = 'schema_version'")
        return int(rows[0][0]) if rows else 0

    # -- certificate state -------------------------------------------------------------------------------------

    def get_state(self, name: str) -> CertState | None:
        rows = self._query("SELECT * FROM cert_state WHERE name = %s", (name,))
        return _state(rows[0]) if rows else None

    def states(self) -> list[CertState]:
        return [_state(row) for row in self._query("SELECT * FROM cert_state ORDER BY name")]

    def put_state(self, state: CertState) -> None:
        self._execute(_PUT_STATE, _state_row(state))

    def put_states(self, states: Sequence[CertState], renewals: Sequence[RenewalRecord] = ()) -> None:
        with self._session() as conn, conn.transaction():
            for state in states:
                self.queries += 1
                conn.execute(_PUT_STATE, _state_row(state))
            for record in renewals:
                self.queries += 1
                conn.execute(_ADD_RENEWAL, _renewal_row(record))

    # -- history -----------------------------------------------------------------------------------------------

    def add_renewal(self, record: RenewalRecord) -> None:
        self._execute(_ADD_RENEWAL, _renewal_row(record))

    def renewals(self, name: str | None = None, limit: int = 100) -> list[RenewalRecord]:
        if name:
            rows = self._query("SELECT name, at, result, version, serial, detail FROM renewals WHERE name = %s "
                               "ORDER BY id DESC LIMIT %s", (name, limit))
        else:
            rows = self._query("SELECT name, at, result, version, serial, detail FROM renewals "
                               "ORDER BY id DESC LIMIT %s", (limit,))
        return [RenewalRecord(*row) for row in rows]

    def renewal_counts(self) -> dict[tuple[str, str], int]:
        rows = self._query("SELECT name, result, COUNT(*) FROM renewals GROUP BY name, result")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- endpoints ---------------------------------------------------------------------------------------------

    def put_endpoint(self, record: EndpointRecord) -> None:
        self._execute(
            "INSERT INTO endpoints VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (owner, endpoint) DO UPDATE SET "
            "at = EXCLUDED.at, status = EXCLUDED.status, message = EXCLUDED.message, "
            "fingerprint = EXCLUDED.fingerprint, not_after = EXCLUDED.not_after, stale = EXCLUDED.stale, "
            "details = EXCLUDED.details",
            (record.owner, record.endpoint, record.at, record.status, record.message, record.fingerprint,
             record.not_after, record.stale, Jsonb(record.details)),
        )

    def endpoints(self) -> list[EndpointRecord]:
        rows = self._query("SELECT * FROM endpoints ORDER BY owner, endpoint")
        return [EndpointRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], dict(r[8])) for r in rows]

    # -- DANE rollover state ------------------------------------------------------------------------------------

    def get_dane_state(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT data FROM dane_state WHERE name = %s", (name,))
        return dict(rows[0][0]) if rows else None

    def put_dane_state(self, name: str, data: dict[str, Any]) -> None:
        self._execute("INSERT INTO dane_state VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data",
                      (name, Jsonb(data)))

    # -- alerts ------------------------------------------------------------------------------------------------

    def alert_seen(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM alert_keys WHERE key = %s", (key,)))

    def forget_alerts(self, prefix: str) -> int:
        # starts_with, not LIKE: no wildcard in a key can widen what is forgotten.
        return self._execute("DELETE FROM alert_keys WHERE starts_with(key, %s)", (prefix,))

    def enqueue_alert(self, key: str, severity: str, subject: str, body: str, at: datetime) -> AlertRecord | None:
        with self._session() as conn, conn.transaction():
            self.queries += 2
            claimed = conn.execute("INSERT INTO alert_keys VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                                   (key, at)).rowcount
            if not claimed:
                return None
            row = conn.execute("INSERT INTO alerts (key, created_at, severity, subject, body) "
                               "VALUES (%s,%s,%s,%s,%s) RETURNING id", (key, at, severity, subject, body)).fetchone()
            assert row is not None
            return AlertRecord(int(row[0]), key, at, severity, subject, body)

    def pending_alerts(self) -> list[AlertRecord]:
        rows = self._query(
            "SELECT id, key, created_at, severity, subject, body, attempts, last_error, sent_at "
            "FROM alerts WHERE sent_at IS NULL ORDER BY id"
        )
        return [AlertRecord(*row) for row in rows]

    def recent_alerts(self, limit: int = 200) -> list[AlertRecord]:
        rows = self._query(
            "SELECT id, key, created_at, severity, subject, body, attempts, last_error, sent_at "
            "FROM alerts ORDER BY id DESC LIMIT %s", (limit,)
        )
        return [AlertRecord(*row) for row in rows]

    def mark_alert_attempt(self, ids: Sequence[int], at: datetime, error: str | None) -> None:
        if error is None:
            self._execute("UPDATE alerts SET attempts = attempts + 1, last_error = '', sent_at = %s "
                          "WHERE id = ANY(%s)", (at, list(ids)))
        else:
            self._execute("UPDATE alerts SET attempts = attempts + 1, last_error = %s WHERE id = ANY(%s)",
                          (error, list(ids)))

    def add_history(self, record: HistoryRecord) -> None:
        self._execute("INSERT INTO history (name, at, kind, detail) VALUES (%s, %s, %s, %s)",
                      (record.name, record.at, record.kind, record.detail))

    def history(self, since: datetime | None = None) -> list[HistoryRecord]:
        if since is None:
            rows = self._query("SELECT name, at, kind, detail FROM history ORDER BY at, id")
        else:
            rows = self._query("SELECT name, at, kind, detail FROM history WHERE at >= %s ORDER BY at, id",
                               (since,))
        return [HistoryRecord(*row) for row in rows]

    # -- TLS reports -------------------------------------------------------------------------------------------

    def add_tls_report(self, record: TlsReportRecord) -> bool:
        with self._session() as conn, conn.transaction():
            self.queries += 1 + len(record.sessions)
            inserted = conn.execute(
                "INSERT INTO tls_reports VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (report_id) DO NOTHING",
                (record.report_id, record.organization, record.start, record.end, record.received_at,
                 record.source, record.document)).rowcount == 1
            if inserted and record.sessions:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO tls_sessions VALUES (%s, %s, %s, %s, %s, %s)",
                        [(record.report_id, c.policy_domain, c.receiving_mx, c.result, c.organization, c.sessions)
                         for c in record.sessions])
            return inserted

    def tls_reports(self, since: datetime | None = None) -> list[TlsReportRecord]:
        if since is None:
            rows = self._query("SELECT * FROM tls_reports ORDER BY start_at, report_id")
        else:
            rows = self._query("SELECT * FROM tls_reports WHERE end_at >= %s ORDER BY start_at, report_id",
                               (since,))
        return [TlsReportRecord(*row) for row in rows]

    def tls_session_totals(self) -> dict[tuple[str, str, str], int]:
        rows = self._query("SELECT policy_domain, receiving_mx, result, SUM(sessions) FROM tls_sessions "
                           "GROUP BY policy_domain, receiving_mx, result")
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    def tls_last_reports(self) -> dict[str, datetime]:
        rows = self._query("SELECT organization, MAX(received_at) FROM tls_reports GROUP BY organization")
        return {r[0]: r[1] for r in rows}

    # -- locks -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, wait: float) -> Iterator[None]:
        """A session advisory lock on a connection of its own: it dies with the holder's connection."""
        key_class, key = _lock_keys(name)
        conn = self._connect()
        try:
            deadline = time.monotonic() + wait
            delay = 0.01
            while True:
                self.queries += 1
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (key_class, key)).fetchone()
                if row is not None and row[0]:
                    break
                if time.monotonic() >= deadline:
                    raise LockBusy(name, wait, self._lock_holder(conn, key_class, key)) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.5)
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (key_class, key))
        except psycopg.Error as exc:
            msg = f"{self.location}: lock {name!r}: {_first_line(exc)}"
            raise StoreError(msg) from None
        finally:
            conn.close()

    def _lock_holder(self, conn: psycopg.Connection[tuple[Any, ...]], key_class: int, key: int) -> str:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2",
            (key_class, key & 0xFFFFFFFF),
        ).fetchone()
        return str(row[0]).removeprefix("certkeeper ") if row else ""

    # -- the fleet ---------------------------------------------------------------------------------------------

    def fleet_head(self, name: str) -> FleetVersion | None:
        rows = self._query(
            "SELECT v.name, v.version, v.ordered_by, v.created_at, v.issuer, v.domains, v.not_before, v.not_after, "
            "array_agg(p.fingerprint ORDER BY p.key_type), array_agg(p.key_type ORDER BY p.key_type), "
            "array_agg(p.serial ORDER BY p.key_type) "
            "FROM fleet_versions v JOIN fleet_pairs p USING (name, version) WHERE v.name = %s "
            "GROUP BY v.name, v.version ORDER BY v.version DESC LIMIT 1", (name,))
        return _fleet_version(rows[0]) if rows else None

    def fleet_heads(self, names: Sequence[str]) -> list[FleetVersion]:
        rows = self._query(
            "SELECT v.name, v.version, v.ordered_by, v.created_at, v.issuer, v.domains, v.not_before, v.not_after, "
            "array_agg(p.fingerprint ORDER BY p.key_type), array_agg(p.key_type ORDER BY p.key_type), "
            "array_agg(p.serial ORDER BY p.key_type) "
            "FROM (SELECT name, max(version) AS version FROM fleet_versions WHERE name = ANY(%s) GROUP BY name) h "
            "JOIN fleet_versions v USING (name, version) JOIN fleet_pairs p USING (name, version) "
            "GROUP BY v.name, v.version", (list(names),))
        return [_fleet_version(row) for row in rows]

    def fleet_version(self, name: str, version: int) -> FleetVersion | None:
        with self._session() as conn:
            self.queries += 2
            head = conn.execute(
                "SELECT name, version, ordered_by, created_at, issuer, domains, not_before, not_after "
                "FROM fleet_versions WHERE name = %s AND version = %s", (name, version)).fetchone()
            if head is None:
                return None
            pairs = conn.execute(
                "SELECT key_type, fullchain, private_key, serial, fingerprint, key_version FROM fleet_pairs "
                "WHERE name = %s AND version = %s ORDER BY key_type", (name, version)).fetchall()
        found = tuple(FleetPair(p[0], p[1].encode(), bytes(p[2]), p[3], p[4], p[5]) for p in pairs)
        return FleetVersion(head[0], head[1], head[2], head[3], head[4], tuple(head[5]), head[6], head[7],
                            frozenset(p.fingerprint for p in found), tuple(p.key_type for p in found),
                            tuple(p.serial for p in found), found)

    def acquire_lease(self, name: str, node: str, token: str, seconds: float) -> LeaseHolder | None:
        rows = self._query(
            "INSERT INTO fleet_leases AS l (name, node, token, expires_at) "
            "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, token = EXCLUDED.token, "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() OR l.token = EXCLUDED.token "
            "RETURNING token", (name, node, token, seconds))
        if rows:
            return None
        holder = self._query("SELECT node, expires_at FROM fleet_leases WHERE name = %s", (name,))
        # Released between the two statements: report it as held for an instant; the caller retries.
        return LeaseHolder(*holder[0]) if holder else LeaseHolder("", datetime.now().astimezone())

    def extend_lease(self, name: str, token: str, seconds: float) -> bool:
        return bool(self._execute(
            "UPDATE fleet_leases SET expires_at = now() + make_interval(secs => %s) "
            "WHERE name = %s AND token = %s AND expires_at > now()", (seconds, name, token)))

    def release_lease(self, name: str, token: str) -> None:
        self._execute("DELETE FROM fleet_leases WHERE name = %s AND token = %s", (name, token))

    def store_fleet_version(self, version: FleetVersion, token: str) -> bool:
        with self._session() as conn, conn.transaction():
            self.queries += 2 + len(version.pairs)
            # Fencing: the lease row stays locked until commit, so it cannot expire and be taken meanwhile.
            held = conn.execute("SELECT 1 FROM fleet_leases WHERE name = %s AND token = %s AND expires_at > now() "
                                "FOR UPDATE", (version.name, token)).fetchone()
            if held is None:
                return False
            conn.execute(
                "INSERT INTO fleet_versions VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (version.name, version.version, version.ordered_by, version.created_at, version.issuer,
                 list(version.domains), version.not_before, version.not_after))
            for pair in version.pairs:
                conn.execute("INSERT INTO fleet_pairs (name, version, key_type, fullchain, serial, fingerprint, "
                             "private_key, key_version) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                             (version.name, version.version, pair.key_type, pair.fullchain_pem.decode(),
                              pair.serial, pair.fingerprint, pair.sealed_key, pair.key_version))
        return True

    def fleet_salts(self) -> dict[int, bytes]:
        return {int(row[0]): bytes(row[1]) for row in self._query("SELECT key_version, salt FROM fleet_keys")}

    def put_node_results(self, results: Sequence[NodeResult]) -> None:
        if not results:
            return
        with self._session() as conn, conn.cursor() as cursor:
            self.queries += 1
            cursor.executemany(
                "INSERT INTO node_results VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (node, name) DO UPDATE SET "
                "version = EXCLUDED.version, result = EXCLUDED.result, at = EXCLUDED.at, "
                "detail = EXCLUDED.detail, serials = EXCLUDED.serials",
                [(r.node, r.name, r.version, r.result, r.at, r.detail, r.serials) for r in results])

    def node_results(self, names: Sequence[str] | None = None) -> list[NodeResult]:
        if names is None:
            rows = self._query("SELECT * FROM node_results ORDER BY name, node")
        else:
            rows = self._query("SELECT * FROM node_results WHERE name = ANY(%s) ORDER BY name, node", (list(names),))
        return [NodeResult(*row) for row in rows]

    # -- the order budget --------------------------------------------------------------------------------------

    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None:
        """One transaction: the bucket rows locked (in key order, so two nodes never deadlock), decided, written."""
        keys = sorted(limit.key for limit in limits)
        with self._session() as conn, conn.transaction():
            self.queries += 4
            with conn.cursor() as cursor:
                cursor.executemany("INSERT INTO order_budget VALUES (%s, %s, %s, NULL) ON CONFLICT (key) DO NOTHING",
                                   [(limit.key, float(limit.capacity), now) for limit in spending(limits)])
            buckets = {r[0]: Bucket(*r) for r in conn.execute(
                "SELECT * FROM order_budget WHERE key = ANY(%s) ORDER BY key FOR UPDATE", (keys,)).fetchall()}
            waiters = [Waiter(*r) for r in conn.execute(
                "SELECT * FROM order_waits WHERE key = ANY(%s)", (keys,)).fetchall()]
            spent, go_at = decide_spend(limits, buckets, waiters, name=name, count=count,
                                         not_after=not_after, now=now)
            with conn.cursor() as cursor:
                cursor.executemany("UPDATE order_budget SET tokens = %s, updated_at = %s WHERE key = %s",
                                   [(b.tokens, b.updated_at, b.key) for b in spent])
                if go_at is None:
                    cursor.execute("DELETE FROM order_waits WHERE name = %s", (name,))
                    return None
                cursor.executemany(
                    "INSERT INTO order_waits VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (key, name) DO UPDATE SET "
                    "count = EXCLUDED.count, not_after = EXCLUDED.not_after, seen_at = EXCLUDED.seen_at, "
                    "may_go_at = EXCLUDED.may_go_at",
                    [(key, name, count, not_after, now, now, go_at) for key in wait_keys(limits)])
            return go_at

    def block_budget(self, limits: Sequence[Limit], until: datetime, now: datetime) -> None:
        with self._session() as conn, conn.transaction():
            self.queries += 2 * len(limits)
            for limit in limits:
                row = conn.execute("SELECT * FROM order_budget WHERE key = %s FOR UPDATE", (limit.key,)).fetchone()
                bucket = blocked(limit.key, Bucket(*row) if row else None, until, now)
                conn.execute("INSERT INTO order_budget VALUES (%s,%s,%s,%s) ON CONFLICT (key) DO UPDATE SET "
                             "blocked_until = EXCLUDED.blocked_until",
                             (bucket.key, bucket.tokens, bucket.updated_at, bucket.blocked_until))

    def budget(self) -> tuple[list[Bucket], list[Waiter]]:
        buckets = [Bucket(*r) for r in self._query("SELECT * FROM order_budget ORDER BY key")]
        waiters = [Waiter(*r) for r in self._query("SELECT * FROM order_waits ORDER BY key, not_after, name")]
        return buckets, waiters

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _read_password(path: Path | None) -> str | None:
    """The first line of ``database_password_file``; None leaves it to libpq (``PGPASSWORD``, ``~/.pgpass``)."""
    if path is None:
        return None
    check_trusted_file(path, "database_password_file")
    try:
        text = path.read_text()
        return text.splitlines()[0] if text.strip() else ""
    except OSError as exc:
        raise InputError(str(path), f"cannot read the database password file: {exc.strerror}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _state(row: tuple[Any, ...]) -> CertState:
    return CertState(
        name=row[0], last_attempt_at=row[1], last_success_at=row[2], failures=row[3], last_error=row[4],
        next_check_at=row[5], next_reason=row[6], ari_start=row[7], ari_end=row[8], ari_retry_after=row[9],
        ari_chosen_at=row[10], reload_pending=bool(row[11]), failed_inputs=row[12],
    )


def _fleet_version(row: tuple[Any, ...]) -> FleetVersion:
    return FleetVersion(row[0], row[1], row[2], row[3], row[4], tuple(row[5]), row[6], row[7],
                        frozenset(row[8]), tuple(row[9]), tuple(row[10]))
