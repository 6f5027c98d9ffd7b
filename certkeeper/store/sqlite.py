"""The embedded store: one SQLite file under ``state_dir``, and file locks beside it.

WAL mode so a ``certkeeper status`` never blocks the daemon; every write is its own short transaction.  Locks are
``flock`` on ``state_dir/locks/<name>.lock``: the kernel releases them when a holder dies, so a crashed
certkeeper never blocks the next one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from certkeeper.errors import LockBusy, SchemaTooNew, StoreError, UnsafePath
from certkeeper.permissions import check_trusted_dir, open_nofollow
from certkeeper.store.atomic import make_dirs
from certkeeper.store.base import AlertRecord, CertState, EndpointRecord, HistoryRecord, RenewalRecord, TlsReportRecord

if TYPE_CHECKING:  # the order budget is imported by the calls that spend or show it: a pass that orders nothing
    # never loads it (nor the Public Suffix List it reads domains with)
    from certkeeper.store.budget import Bucket, Limit, Waiter

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 5

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE cert_state (
        name TEXT PRIMARY KEY,
        last_attempt_at TEXT, last_success_at TEXT,
        failures INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
        next_check_at TEXT, next_reason TEXT NOT NULL DEFAULT '',
        ari_start TEXT, ari_end TEXT, ari_retry_after TEXT, ari_chosen_at TEXT,
        reload_pending INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE renewals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, at TEXT NOT NULL, result TEXT NOT NULL,
        version TEXT NOT NULL DEFAULT '', serial TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX renewals_by_name ON renewals (name, id);
    CREATE TABLE endpoints (
        owner TEXT NOT NULL, endpoint TEXT NOT NULL, at TEXT NOT NULL, status TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '', fingerprint TEXT NOT NULL DEFAULT '', not_after TEXT,
        stale INTEGER NOT NULL DEFAULT 0, details TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (owner, endpoint)
    );
    CREATE TABLE alert_keys (key TEXT PRIMARY KEY, first_at TEXT NOT NULL);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL, created_at TEXT NOT NULL, severity TEXT NOT NULL,
        subject TEXT NOT NULL, body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', sent_at TEXT
    );
    CREATE INDEX alerts_pending ON alerts (sent_at, id);
    """,
    # The order budget of a single host (certkeeper.store.budget); a fleet keeps it in PostgreSQL.
    2: """
    CREATE TABLE order_budget (
        key TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at TEXT NOT NULL, blocked_until TEXT
    );
    CREATE TABLE order_waits (
        key TEXT NOT NULL, name TEXT NOT NULL, count INTEGER NOT NULL, not_after TEXT,
        since TEXT NOT NULL, seen_at TEXT NOT NULL, may_go_at TEXT NOT NULL,
        PRIMARY KEY (key, name)
    );
    """,
    # TLS reports (RFC 8460), one row per report-id: a report mailed twice or POSTed again is kept once.
    3: """
    CREATE TABLE tls_reports (
        report_id TEXT PRIMARY KEY, organization TEXT NOT NULL, start_at TEXT NOT NULL, end_at TEXT NOT NULL,
        received_at TEXT NOT NULL, source TEXT NOT NULL, document TEXT NOT NULL
    );
    CREATE INDEX tls_reports_by_end ON tls_reports (end_at);
    CREATE TABLE tls_sessions (
        report_id TEXT NOT NULL REFERENCES tls_reports ON DELETE CASCADE, policy_domain TEXT NOT NULL,
        receiving_mx TEXT NOT NULL, result TEXT NOT NULL, organization TEXT NOT NULL, sessions INTEGER NOT NULL,
        PRIMARY KEY (report_id, policy_domain, receiving_mx, result)
    );
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX history_by_at ON history (at);
    """,
    # The DANE rollover state (certkeeper.dane.rollover): one JSON document per certificate.
    4: """
    CREATE TABLE dane_state (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    """,
    # What a failed attempt was made with (certkeeper.renewal.lifecycle): a change ends its backoff.
    5: """
    ALTER TABLE cert_state ADD COLUMN failed_inputs TEXT NOT NULL DEFAULT '';
    """,
}


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    """A moment as :func:`_ts` wrote it; ValueError or TypeError for anything else (a row edited by hand)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        msg = f"a moment without a UTC offset: {value!r}"
        raise ValueError(msg)
    return moment


BUSY_SECONDS = 30  # how long a writer waits for another process's transaction


def _enter_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another process has the file open.

    Switching a new database to WAL turns the statement's read transaction into a write one, and SQLite does not
    wait for that (its busy handler could deadlock there): two processes opening a new state store at the same
    moment (``renew --force mail & renew --force other``) had one fail at once with "database is locked".
    """
    deadline = time.monotonic() + BUSY_SECONDS
    pause = 0.002
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or time.monotonic() + pause > deadline:
                raise
        else:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class SqliteStore:
    """The default store.  Safe to share between threads of one process and between processes."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.db"
        self.location = str(self.path)
        self._lock_dir = state_dir / "locks"
        self._mutex = threading.Lock()
        try:
            # 0711: the group named by a certificate's `group` must pass through to reach certs/<name>/, but
            # nobody lists or reads the state itself.
            make_dirs(state_dir, mode=0o711)
            make_dirs(self._lock_dir, mode=0o700)
            # Before anything is opened in it: a state_dir others can change lets them plant symbolic links.
            check_trusted_dir(self._lock_dir, "state_dir")
            if self.path.is_symlink():
                what = "state_dir"
                raise UnsafePath(what, self.path, "-", self.path.lstat().st_mode,
                                 "is a symbolic link, which certkeeper never follows inside its state directory",
                                 f"remove it (rm {self.path}) and find out who created it")
            self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, check_same_thread=False,
                                       isolation_level=None)
            _enter_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
            self._migrate()
        except sqlite3.Error as exc:
            msg = f"{self.path}: cannot open the state store: {exc}{_space_hint(self.path.parent)}"
            raise StoreError(msg) from None
        except OSError as exc:
            msg = f"{state_dir}: cannot create the state directory: {exc.strerror}{_permission_hint(state_dir, exc)}"
            raise StoreError(msg) from None

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = self._schema_version(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(self.location, current, SCHEMA_VERSION)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                db.executescript_safe(_MIGRATIONS[version])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _schema_version(self, text: object) -> int:
        """The version a certkeeper wrote: a whole number of at least 1 (0 means a new, empty store)."""
        try:
            version = int(str(text).strip())
        except ValueError:
            version = 0
        if version < 1:
            msg = (f"{self.path}: the state store's schema version (meta table, key schema_version) is {text!r}, "
                   f"which no certkeeper writes; restore state.db from a backup, or set it to the version it has "
                   f"({SCHEMA_VERSION} if this certkeeper last opened it)")
            raise StoreError(msg)
        return version

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        """One write transaction.  SQLite's own failures (disk full, locked past busy_timeout, I/O errors) become
        :class:`StoreError` naming the file: a clear error, never a traceback (issue 21)."""
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                msg = f"{self.path}: cannot write the state store: {exc}{_space_hint(self.path.parent)}"
                raise StoreError(msg) from None
            try:
                yield _Cursor(self._db)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                msg = f"{self.path}: cannot write the state store: {exc}{_space_hint(self.path.parent)}"
                raise StoreError(msg) from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have ended the transaction already
            self._db.execute("ROLLBACK")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._mutex:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                msg = f"{self.path}: {exc}{_space_hint(self.path.parent)}"
                raise StoreError(msg) from None

    # -- certificate state -------------------------------------------------------------------------------------

    def get_state(self, name: str) -> CertState | None:
        rows = self._query("SELECT * FROM cert_state WHERE name = ?", (name,))
        return self._decoded(rows)[0] if rows else None

    def states(self) -> list[CertState]:
        return self._decoded(self._query("SELECT * FROM cert_state ORDER BY name"))

    def _decoded(self, rows: list[tuple[Any, ...]]) -> list[CertState]:
        """The rows as states; a damaged one (edited by hand, a damaged file) salvaged and written back repaired,
        rather than failing every pass that reads it."""
        states, repaired = [], []
        for row in rows:
            state = _state(row)
            if state is None:
                state = _salvaged_state(row, self.path)
                repaired.append(state)
            states.append(state)
        if repaired:
            with contextlib.suppress(StoreError):  # a read-only state store: salvaged again next time
                self.put_states(repaired)
        return states

    def put_state(self, state: CertState) -> None:
        self.put_states([state])

    def put_states(self, states: Sequence[CertState], renewals: Sequence[RenewalRecord] = ()) -> None:
        with self._transaction() as db:
            for state in states:
                db.execute(
                    "INSERT OR REPLACE INTO cert_state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (state.name, _ts(state.last_attempt_at), _ts(state.last_success_at), state.failures,
                     state.last_error, _ts(state.next_check_at), state.next_reason, _ts(state.ari_start),
                     _ts(state.ari_end), _ts(state.ari_retry_after), _ts(state.ari_chosen_at),
                     int(state.reload_pending), state.failed_inputs),
                )
            for record in renewals:
                db.execute(
                    "INSERT INTO renewals (name, at, result, version, serial, detail) VALUES (?,?,?,?,?,?)",
                    (record.name, _ts(record.at), record.result, record.version, record.serial, record.detail),
                )

    # -- history -----------------------------------------------------------------------------------------------

    def add_renewal(self, record: RenewalRecord) -> None:
        self.put_states((), [record])

    def renewals(self, name: str | None = None, limit: int = 100) -> list[RenewalRecord]:
        where, params = ("WHERE name = ?", [name]) if name else ("", [])
        rows = self._query(
            f"SELECT name, at, result, version, serial, detail FROM renewals {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return self._each("renewals", rows, lambda r: RenewalRecord(r[0], _dt(r[1]) or datetime.min, *r[2:6]))

    def renewal_counts(self) -> dict[tuple[str, str], int]:
        rows = self._query("SELECT name, result, COUNT(*) FROM renewals GROUP BY name, result")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- endpoints ---------------------------------------------------------------------------------------------

    def put_endpoint(self, record: EndpointRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO endpoints VALUES (?,?,?,?,?,?,?,?,?)",
                (record.owner, record.endpoint, _ts(record.at), record.status, record.message,
                 record.fingerprint, _ts(record.not_after), int(record.stale), json.dumps(record.details)),
            )

    def endpoints(self) -> list[EndpointRecord]:
        rows = self._query("SELECT * FROM endpoints ORDER BY owner, endpoint")
        return self._each("endpoints", rows, lambda r: EndpointRecord(
            r[0], r[1], _dt(r[2]) or datetime.min, r[3], r[4], r[5], _dt(r[6]), bool(r[7]), dict(json.loads(r[8]))))

    # -- DANE rollover state ------------------------------------------------------------------------------------

    def get_dane_state(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT data FROM dane_state WHERE name = ?", (name,))
        return dict(json.loads(rows[0][0])) if rows else None  # damaged: ValueError, the rollover starts over

    def put_dane_state(self, name: str, data: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO dane_state VALUES (?, ?)", (name, json.dumps(data)))

    # -- alerts ------------------------------------------------------------------------------------------------

    def alert_seen(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM alert_keys WHERE key = ?", (key,)))

    def forget_alerts(self, prefix: str) -> int:
        with self._transaction() as db:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return db.execute("DELETE FROM alert_keys WHERE key LIKE ? ESCAPE '\\'", (escaped + "%",)).rowcount

    def enqueue_alert(self, key: str, severity: str, subject: str, body: str, at: datetime) -> AlertRecord | None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM alert_keys WHERE key = ?", (key,)).fetchone():
                return None
            db.execute("INSERT INTO alert_keys VALUES (?, ?)", (key, _ts(at)))
            cursor = db.execute(
                "INSERT INTO alerts (key, created_at, severity, subject, body) VALUES (?,?,?,?,?)",
                (key, _ts(at), severity, subject, body),
            )
            return AlertRecord(int(cursor.lastrowid or 0), key, at, severity, subject, body)

    def pending_alerts(self) -> list[AlertRecord]:
        rows = self._query(
            "SELECT id, key, created_at, severity, subject, body, attempts, last_error, sent_at "
            "FROM alerts WHERE sent_at IS NULL ORDER BY id"
        )
        return self._each("alerts", rows, _alert)

    def recent_alerts(self, limit: int = 200) -> list[AlertRecord]:
        rows = self._query(
            "SELECT id, key, created_at, severity, subject, body, attempts, last_error, sent_at "
            "FROM alerts ORDER BY id DESC LIMIT ?", (limit,)
        )
        return self._each("alerts", rows, _alert)

    def mark_alert_attempt(self, ids: Sequence[int], at: datetime, error: str | None) -> None:
        with self._transaction() as db:
            for alert_id in ids:
                if error is None:
                    db.execute("UPDATE alerts SET attempts = attempts + 1, last_error = '', sent_at = ? "
                               "WHERE id = ?", (_ts(at), alert_id))
                else:
                    db.execute("UPDATE alerts SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                               (error, alert_id))

    def add_history(self, record: HistoryRecord) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO history (name, at, kind, detail) VALUES (?,?,?,?)",
                       (record.name, _ts(record.at), record.kind, record.detail))

    def history(self, since: datetime | None = None) -> list[HistoryRecord]:
        rows = self._query("SELECT name, at, kind, detail FROM history WHERE at >= ? ORDER BY at, id",
                           (_ts(since) if since else "",))
        return self._each("history", rows, lambda r: HistoryRecord(r[0], _dt(r[1]) or datetime.min, r[2], r[3]))

    # -- TLS reports -------------------------------------------------------------------------------------------

    def add_tls_report(self, record: TlsReportRecord) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO tls_reports VALUES (?,?,?,?,?,?,?)",
                (record.report_id, record.organization, _ts(record.start), _ts(record.end),
                 _ts(record.received_at), record.source, record.document),
            )
            if cursor.rowcount != 1:
                return False
            for count in record.sessions:
                db.execute("INSERT INTO tls_sessions VALUES (?,?,?,?,?,?)",
                           (record.report_id, count.policy_domain, count.receiving_mx, count.result,
                            count.organization, count.sessions))
            return True

    def tls_reports(self, since: datetime | None = None) -> list[TlsReportRecord]:
        # ISO 8601 in UTC with one offset format sorts as text in time order.
        rows = self._query("SELECT * FROM tls_reports WHERE end_at >= ? ORDER BY start_at, report_id",
                           (_ts(since) if since else "",))
        return self._each("tls_reports", rows, lambda r: TlsReportRecord(
            r[0], r[1], _dt(r[2]) or datetime.min, _dt(r[3]) or datetime.min, _dt(r[4]) or datetime.min, r[5], r[6]))

    def tls_session_totals(self) -> dict[tuple[str, str, str], int]:
        rows = self._query("SELECT policy_domain, receiving_mx, result, SUM(sessions) FROM tls_sessions "
                           "GROUP BY policy_domain, receiving_mx, result")
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    def tls_last_reports(self) -> dict[str, datetime]:
        rows = self._query("SELECT organization, MAX(received_at) FROM tls_reports GROUP BY organization")
        return dict(self._each("tls_reports", rows, lambda r: (r[0], _dt(r[1]) or datetime.min)))

    # -- locks -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, wait: float) -> Iterator[None]:
        path = self._lock_dir / f"{name}.lock"
        try:
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a folder where the lock file belongs, or a file where locks/ does
            hint = {errno.EISDIR: f" (a folder is in the way: move it aside, mv {path} {path}.moved)",
                    errno.ENOTDIR: f" ({self._lock_dir} is not a folder: move it aside, "
                                   f"mv {self._lock_dir} {self._lock_dir}.moved)"}
            msg = f"{path}: cannot open the lock of {name}: {exc.strerror}" \
                  f"{hint.get(exc.errno or 0, '') or _space_hint(self._lock_dir)}"
            raise StoreError(msg) from None
        try:
            deadline = time.monotonic() + wait
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(name, wait, _read_holder(fd)) from None
                    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, 0.5)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- the order budget --------------------------------------------------------------------------------------

    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None:
        from certkeeper.store.budget import decide_spend, wait_keys

        keys = [limit.key for limit in limits]
        marks = ",".join("?" * len(keys))
        try:
            with self._transaction() as db:
                buckets = {b.key: b for b in self._each("order_budget", db.execute(
                    f"SELECT * FROM order_budget WHERE key IN ({marks})", keys).fetchall(), _bucket)}
                waiters = self._each("order_waits", db.execute(
                    f"SELECT * FROM order_waits WHERE key IN ({marks})", keys).fetchall(), _waiter)
                spent, go_at = decide_spend(limits, buckets, waiters, name=name, count=count,
                                         not_after=not_after, now=now)
                for bucket in spent:
                    db.execute("INSERT OR REPLACE INTO order_budget VALUES (?,?,?,?)",
                               (bucket.key, bucket.tokens, _ts(bucket.updated_at), _ts(bucket.blocked_until)))
                if go_at is None:
                    db.execute("DELETE FROM order_waits WHERE name = ?", (name,))
                    return None
                for key in wait_keys(limits):
                    db.execute("INSERT INTO order_waits VALUES (?,?,?,?,?,?,?) ON CONFLICT (key, name) DO UPDATE "
                               "SET count = excluded.count, not_after = excluded.not_after, "
                               "seen_at = excluded.seen_at, may_go_at = excluded.may_go_at",
                               (key, name, count, _ts(not_after), _ts(now), _ts(now), _ts(go_at)))
                return go_at
        except sqlite3.Error as exc:
            msg = f"{self.path}: order budget: {exc}{_space_hint(self.path.parent)}"
            raise StoreError(msg) from None

    def block_budget(self, limits: Sequence[Limit], until: datetime, now: datetime) -> None:
        from certkeeper.store.budget import blocked

        with self._transaction() as db:
            for limit in limits:
                rows = db.execute("SELECT * FROM order_budget WHERE key = ?", (limit.key,)).fetchall()
                bucket = blocked(limit.key, next(iter(self._each("order_budget", rows, _bucket)), None), until, now)
                db.execute("INSERT OR REPLACE INTO order_budget VALUES (?,?,?,?)",
                           (bucket.key, bucket.tokens, _ts(bucket.updated_at), _ts(bucket.blocked_until)))

    def budget(self) -> tuple[list[Bucket], list[Waiter]]:
        buckets = self._each("order_budget", self._query("SELECT * FROM order_budget ORDER BY key"), _bucket)
        waiters = self._each("order_waits", self._query("SELECT * FROM order_waits ORDER BY key, not_after, name"),
                             _waiter)
        return buckets, waiters

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def _each(self, table: str, rows: Iterable[tuple[Any, ...]], decode: Callable[[tuple[Any, ...]], T]) -> list[T]:
        """Each row decoded; one holding what certkeeper never writes (edited by hand, a damaged file) is left out
        and said, instead of failing every command that reads the table."""
        decoded = []
        for row in rows:
            try:
                decoded.append(decode(row))
            except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested absurdly deep
                log.warning("%s: a damaged row of %s left out (%s): %s", self.path, table, exc, _row_key(row))
        return decoded


def _read_holder(fd: int) -> str:
    """Who holds the flock on ``fd``'s file, as the kernel's table of locks says: "pid N", or "".

    Nothing is written into the lock file (it was: the holder's pid, truncated again on release, three changes of
    its inode for every certificate locked, each one journal work for the next fsync of a pass).  A line of
    ``/proc/locks`` reads ``1: FLOCK  ADVISORY  WRITE 4242 fe:00:1048603 0 EOF`` (a waiter's has ``->`` after the
    number; certkeeper never waits in the kernel); the pid is 0 or -1 for a holder in another pid namespace.
    """
    try:
        status = os.fstat(fd)
        file = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as table:  # noqa: PTH123 (not a state file)
            for line in table:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file and fields[4].isdigit() \
                        and fields[4] != "0":
                    return f"pid {fields[4]}"
    except OSError:  # no /proc: the message goes without the holder
        pass
    return ""


class _Cursor:
    """The connection inside a transaction; ``executescript`` would COMMIT, so statements go one by one."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def executescript_safe(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)


def _row_key(row: tuple[Any, ...]) -> str:
    """What names a damaged row in a warning: its first column (a name, an id, a key), never the rest."""
    return repr(row[0])[:200] if row else "()"


def _alert(r: tuple[Any, ...]) -> AlertRecord:
    return AlertRecord(r[0], r[1], _dt(r[2]) or datetime.min, r[3], r[4], r[5], r[6], r[7], _dt(r[8]))


def _bucket(row: tuple[Any, ...]) -> Bucket:
    from certkeeper.store.budget import Bucket

    updated = _dt(row[2])
    if updated is None:
        msg = "no updated_at"
        raise ValueError(msg)
    return Bucket(row[0], float(row[1]), updated, _dt(row[3]))


def _waiter(row: tuple[Any, ...]) -> Waiter:
    from certkeeper.store.budget import Waiter

    since, seen, go_at = _dt(row[4]), _dt(row[5]), _dt(row[6])
    if since is None or seen is None or go_at is None:
        msg = "a moment missing"
        raise ValueError(msg)
    return Waiter(row[0], row[1], int(row[2]), _dt(row[3]), since, seen, go_at)


def _count(value: object) -> int:
    if type(value) is not int:  # SQLite keeps whatever a column is given: text where a count belongs
        raise TypeError(value)
    return value


def _text(value: object) -> str:
    if type(value) is not str:
        raise TypeError(value)
    return value


# The columns of cert_state, in order, and how each is read.
_STATE_COLUMNS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("name", _text), ("last_attempt_at", _dt), ("last_success_at", _dt), ("failures", _count),
    ("last_error", _text), ("next_check_at", _dt), ("next_reason", _text), ("ari_start", _dt), ("ari_end", _dt),
    ("ari_retry_after", _dt), ("ari_chosen_at", _dt), ("reload_pending", bool), ("failed_inputs", _text),
)


def _state(row: tuple[Any, ...]) -> CertState | None:
    """The state a ``cert_state`` row holds; None when it holds what certkeeper never writes."""
    name, _, _, failures, last_error, _, next_reason, _, _, _, _, reload_pending, failed_inputs = row
    if type(name) is not str or type(failures) is not int or type(last_error) is not str or \
            type(next_reason) is not str or type(failed_inputs) is not str:
        return None
    try:  # spelled out: every pass reads every row (1,000 certificates, 1,000 rows)
        return CertState(name, _dt(row[1]), _dt(row[2]), failures, last_error, _dt(row[5]), next_reason,
                         _dt(row[7]), _dt(row[8]), _dt(row[9]), _dt(row[10]), bool(reload_pending), failed_inputs)
    except (TypeError, ValueError):
        return None


def _salvaged_state(row: tuple[Any, ...], path: Path) -> CertState:
    """A damaged ``cert_state`` row, field by field: what can be read is kept (a reload owed, the backoff), what
    cannot is taken as unset, and said."""
    values: dict[str, Any] = {"name": str(row[0])}
    damaged = []
    for (field, read), value in zip(_STATE_COLUMNS[1:], row[1:], strict=True):
        try:
            values[field] = read(value)
        except (TypeError, ValueError):
            damaged.append(f"{field} = {value!r}")
    log.warning("%s: the state of certificate %r was damaged (%s): taken as unset, and the row written back "
                "repaired", path, values["name"], ", ".join(damaged))
    return CertState(**values)


def _space_hint(folder: Path) -> str:
    """SQLite reports a full disk as "disk I/O error" when it cannot grow its shared-memory or WAL file: say so."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= 1024 * 1024:
        return ""
    return f" (the file system of {folder} has {free:,} bytes free: free some space; the next run repairs the rest)"


def _permission_hint(state_dir: Path, exc: OSError) -> str:
    """For a refused state directory: who certkeeper runs as, who owns the nearest existing folder, what to do."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    existing = next((p for p in (state_dir, *state_dir.parents) if p.exists()), Path("/"))
    try:
        st = existing.stat()
    except OSError:
        return ""
    return (f" (certkeeper runs as uid {os.geteuid()}; {existing} belongs to uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):04o}: run certkeeper as root or as that user, or set [certkeeper] "
            f"state_dir to a folder this user may write)")
