"""Fleets: several mail hosts share certificates through PostgreSQL.

Every host runs certkeeper with the same certificate entries, ``database``, ``fleet_key_file`` and its own
``node`` name.  For each renewal exactly one node orders; every node installs, reloads and verifies locally.

How one renewal goes (:meth:`Fleet.obtain`, called by :class:`certkeeper.renewal.lifecycle.Renewer` for a due
certificate):

1. If the database holds a version newer than what this node has installed (another node renewed), take it:
   decrypt its key, install it.  Nothing is ordered.
2. Otherwise take the certificate's *ordering lease*: a row in ``fleet_leases`` with an expiry by the database's
   clock (``fleet_lease``, default 10 minutes), extended every third of that while the order runs.  A node
   that dies mid-order stops extending it; after at most ``fleet_lease`` another node takes over.  A node that
   finds the lease held waits (up to ``lock_timeout``, polling with backoff) for the holder's version to
   appear, then installs it; if the wait runs out it reports ``busy`` and looks again on its next pass.
3. Lease taken, look again (lock, then re-check): the holder before us may have stored a version meanwhile.
4. Order, gate the pair (key matches, chain verifies, names cover), and store it in ``fleet_versions`` /
   ``fleet_pairs`` in one transaction that first checks, with the lease row locked, that the lease is still
   ours (fencing: a node whose lease ran out while it ordered stores nothing, so a version number is never
   given twice).  Release the lease.

Private keys are sealed before they leave the node: AES-256-GCM under a key derived with HKDF-SHA256 from
``fleet_key_file`` and the fleet's salt (``fleet_keys``, one per key version, made with the schema), with the
certificate name, version and key type as associated data (a sealed key cannot be moved to another row
unnoticed).  PostgreSQL, its backups and its administrators see ciphertext only.

A node whose ``current`` differs from the fleet's newest version catches up on its next pass:
:meth:`Renewer.decide <certkeeper.renewal.lifecycle.Renewer.decide>` makes the certificate due as "fleet has a newer
certificate" and the pass installs it without ordering.  A version this node already had and moved away from
(it rolled back because its own hook or daemon failed) is not forced on it again; it is reported
(``node_results``) and alerted, and the node retries when its own renewal point comes.  Each pass records
every node's state per certificate in ``node_results``; ``certkeeper status`` shows them.

The database being unreachable does not stop a node: its own decisions, history and alert queue stay in the
local SQLite store under ``state_dir``, so it keeps serving, probing, verifying and alerting (an alert "fleet
store down" says so).  A renewal that falls due meanwhile waits ("busy", looked at again every 10 minutes) for
``fleet_grace`` (default 3 days) after the first failed contact; then the node orders alone and installs its
own certificate.  When the database is back, it publishes that version (:meth:`Fleet.catch_up`: under the
lease, fenced) if it is newer than the fleet's, and the other nodes install it at their next pass.

Scale: 1,000 nodes and 10,000 certificates
------------------------------------------
Worked through in ``deploy/FLEET.md``, backed by ``tests/bench/bench_fleet.py``.  In short, at the default
``check_interval`` of 12 h:

* Database load: a pass reads the heads of all the node's certificates in one query (no key material), the
  daemon's next-wake decisions reuse them, and it writes one batch of results: 2 queries per node per pass
  with nothing due, whatever the number of certificates (it was one head query per certificate, twice).
  One idle connection per node: put PgBouncer (transaction mode) in front of 1,000.
* Lease contention: only the nodes sharing a certificate, only at its renewal moment (they all compute the same
  moment).  Waiters poll the lease row with backoff (0.2 s growing to 5 s) for at most ``lock_timeout``.  The
  benchmark races 100 nodes for every renewal and holds orders per renewal at exactly 1.0.
* The CA sees one client, within a fleet-wide order budget (:mod:`certkeeper.store.budget`): the node holding
  the lease spends a token of ``orders_per_3h`` / ``duplicates_per_week`` / ``certificates_per_domain_week``
  before it orders, or the renewal waits (``waiting``), closest to expiry first; a CA's 429 blocks every node
  until its Retry-After.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certkeeper import pki
from certkeeper.config import CertificateConfig, Config
from certkeeper.errors import CertkeeperError, FleetStoreDown, InputError, IssuanceError, LockBusy, StoreError
from certkeeper.model import KeyType, format_duration
from certkeeper.permissions import check_trusted_file
from certkeeper.store import Store
from certkeeper.store.budget import obtain_within_budget, record_rate_limit, spend_or_wait
from certkeeper.store.fleet_records import FleetDatabase, FleetPair, FleetVersion, LeaseHolder, NodeResult
from certkeeper.store.versions import CertificateHome, InstalledPair, KeyPair, Version
from certkeeper.values import frozen

log = logging.getLogger("certkeeper.store.fleet")

DOWN_ALERT_KEY = "fleet:store-down"
_HKDF_INFO = b"certkeeper fleet private keys v1"
_NONCE_BYTES = 12
_RECONNECT_PAUSE = 5.0  # seconds between connection attempts while the database is down
_MARKER = "fleet-unreachable-since"


def _certificate_and_chain(pair: InstalledPair) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    try:
        certificates = pki.load_certificates(pair.fullchain.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(str(pair.fullchain), str(exc)) from None
    return certificates[0], tuple(certificates[1:])


class FleetKey:
    """Seals private keys for the database: AES-256-GCM, key = HKDF-SHA256(``fleet_key_file``, the fleet's salt).

    ``salts`` are the database's ``fleet_keys`` (key version -> salt); new keys are sealed under the newest.
    Key version 0 is HKDF without a salt, for rows sealed before the database had salts.
    """

    def __init__(self, secret: bytes, salts: Mapping[int, bytes] | None = None) -> None:
        if len(secret) < 16:
            msg = "the fleet key needs at least 16 bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            raise ValueError(msg)
        self._secret = secret
        self._aeads = {version: AESGCM(_derive(secret, salt))
                       for version, salt in {0: None, **(salts or {})}.items()}
        self.key_version = max(self._aeads)

    def with_salts(self, salts: Mapping[int, bytes]) -> FleetKey:
        return FleetKey(self._secret, salts)

    @classmethod
    def from_file(cls, path: Path) -> FleetKey:
        # The key opens every private key of the fleet: 0600 (or 0640 to the service group), never 0644.
        check_trusted_file(path, "fleet_key_file", secret=True)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise InputError(str(path), f"cannot read the fleet key (fleet_key_file): {exc.strerror}") from None
        try:
            return cls(secret)
        except ValueError as exc:
            raise InputError(str(path), str(exc)) from None

    def seal(self, name: str, version: int, key_type: str, plaintext: bytes) -> bytes:
        """``plaintext`` sealed under :attr:`key_version` (store that with it)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aeads[self.key_version].encrypt(nonce, plaintext, _associated(name, version, key_type))

    def open(self, name: str, version: int, key_type: str, sealed: bytes, key_version: int = 0) -> bytes:
        aead = self._aeads.get(key_version)
        if aead is None:
            msg = (f"certificate {name!r}: the {key_type} key of fleet version {version} was sealed under fleet key "
                   f"version {key_version}, which this node does not know (fleet_keys); upgrade certkeeper here")
            raise CertkeeperError(msg)
        try:
            return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _associated(name, version, key_type))
        except InvalidTag:
            msg = (
                f"certificate {name!r}: the {key_type} key of fleet version {version} does not decrypt: this "
                f"node's fleet_key_file differs from the one of the node that stored it (or the row was "
                f"altered); copy the fleet's key file to this node"
            )
            raise CertkeeperError(
                msg) from None


def _derive(secret: bytes, salt: bytes | None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(secret)


def _associated(name: str, version: int, key_type: str) -> bytes:
    return f"certkeeper fleet\0{name}\0{version}\0{key_type}".encode()


# -- pure decisions --------------------------------------------------------------------------------------------


def fleet_is_newer(head: FleetVersion, current: Version | None, certificate: CertificateConfig,
                   now: datetime) -> bool:
    """Should this node take ``head`` instead of what it has installed?

    Only a version that fits this node's configuration (domains, key types), is still valid at ``now``, and
    is newer than the installed one.  A node that renewed alone (database down) keeps its own newer pair.
    Certificates carry whole seconds: a version ordered in the same second as the installed one (a forced
    renewal right after a pass) has the same ``not_before``, and the fleet's head, the newest version the fleet
    stored, is taken then too (:func:`local_is_newer` never claims such a tie, so the two cannot alternate).
    """
    if sorted(head.domains) != sorted(certificate.domains):
        return False
    if sorted(head.key_types) != sorted(k.value for k in certificate.key_types):
        return False
    if head.not_after <= now:
        return False
    if current is None:
        return True
    return head.fingerprints != current.fingerprints and head.not_before >= current.not_before


def local_is_newer(head: FleetVersion | None, current: Version | None, certificate: CertificateConfig,
                   now: datetime) -> bool:
    """Should this node publish its installed version to the fleet?  Yes when it fits the configuration, is
    still valid, and is newer than the fleet's newest (it renewed alone while the database was down)."""
    if current is None or current.not_after <= now:
        return False
    if sorted(current.domains) != sorted(certificate.domains):
        return False
    if sorted(p.key_type for p in current.pairs) != sorted(k.value for k in certificate.key_types):
        return False
    if head is None:
        return True
    return current.fingerprints != head.fingerprints and current.not_before > head.not_before


def may_renew_alone(down_since: datetime, now: datetime, grace: timedelta) -> bool:
    return now - down_since >= grace


@frozen
class PassResult:
    """What one pass left on this node for one certificate, as :meth:`Fleet.record_pass` reports it."""

    name: str
    current: Version | None
    result: str
    detail: str = ""


# -- the coordination ------------------------------------------------------------------------------------------


class Fleet:
    """This node's view of the fleet: reads and writes the shared database, survives it being down."""

    def __init__(self, config: Config, local: Store, key: FleetKey, connect: Callable[[], FleetDatabase],
                 clock: Callable[[], datetime] = pki.now_utc) -> None:
        self.settings = config.settings
        self.issuers = config.issuers
        self.node = config.settings.node or socket.gethostname()
        self.local = local
        self.key = key
        self.clock = clock
        self._connect = connect
        self._database: FleetDatabase | None = None
        self._retry_at = 0.0
        self._mutex = threading.Lock()
        self._heads: dict[str, FleetVersion] = {}
        self.names = tuple(config.certificates)
        self._pass_heads: dict[str, FleetVersion | None] = {}
        self._after_pass: set[str] | None = None  # names answered since the last pass ended
        self._marker = config.settings.state_dir / _MARKER
        # Set when the daemon is stopping: a wait for another node's lease is abandoned (nothing was started).
        self.stopping = threading.Event()
        self.location = config.settings.database or ""
        self.last_error = ""

    # -- the database, and its absence -------------------------------------------------------------------------

    def database(self) -> FleetDatabase | None:
        """The connection, opened on first use; None while the database is unreachable."""
        with self._mutex:
            if self._database is not None:
                return self._database
            if time.monotonic() < self._retry_at:
                return None
            try:
                database = self._connect()
                if self.key.key_version == 0:  # the salts come with the schema; fetched once per process
                    self.key = self.key.with_salts(database.fleet_salts())
                self._database = database
            except StoreError as exc:
                self._went_down(str(exc))
                return None
            self.location = self._database.location
        self._came_back()
        return self._database

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turns a lost connection into "down" (dropping the connection) and lets the caller decide."""
        try:
            yield
        except StoreError as exc:
            with self._mutex:
                if self._database is not None:
                    with contextlib.suppress(Exception):
                        self._database.close()
                    self._database = None
            self._went_down(str(exc))
            raise

    def down_since(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self._marker.read_text().strip())
        except (OSError, ValueError):
            return None

    def _went_down(self, error: str) -> None:
        now = self.clock()
        self._retry_at = time.monotonic() + _RECONNECT_PAUSE
        self.last_error = error
        since = self.down_since()
        if since is None:
            since = now
            with contextlib.suppress(OSError):
                self._marker.parent.mkdir(parents=True, exist_ok=True)
                self._marker.write_text(now.astimezone(UTC).isoformat() + "\n")
            log.warning("fleet store unreachable: %s", error)
        alone_at = since + self.settings.fleet_grace
        body = (f"{self.node} cannot reach the fleet database ({error}).\n"
                f"It keeps serving, probing and verifying its installed certificates; renewals wait for the "
                f"database until {alone_at:%Y-%m-%d %H:%M} UTC (fleet_grace "
                f"{format_duration(self.settings.fleet_grace)}), then this node renews alone.\n"
                f"Check the database server, the network path and database_password_file.")
        with contextlib.suppress(CertkeeperError):
            self.local.enqueue_alert(DOWN_ALERT_KEY, "CRITICAL", f"fleet store down ({self.node})", body, now)

    def _came_back(self) -> None:
        since = self.down_since()
        if since is None:
            return
        with contextlib.suppress(OSError):
            self._marker.unlink()
        log.warning("fleet store reachable again (unreachable since %s)", since.isoformat())
        with contextlib.suppress(CertkeeperError):
            if self.local.forget_alerts(DOWN_ALERT_KEY):
                now = self.clock()
                self.local.enqueue_alert(
                    f"fleet:store-up:{now.astimezone(UTC).isoformat()}", "INFO",
                    f"fleet store reachable again ({self.node})",
                    f"{self.node} reaches the fleet database again (unreachable since {since:%Y-%m-%d %H:%M} UTC).",
                    now)

    # -- reading -----------------------------------------------------------------------------------------------

    def head(self, name: str) -> FleetVersion | None:
        """The fleet's newest version of ``name`` (metadata only), or None (none yet, or database down).

        A pass asks for every certificate's head; the first question fetches the heads of all of this node's
        certificates in one query, and the answers serve the rest of the pass.  After :meth:`record_pass` they
        answer each name once more (the daemon's next-wake decisions); a second question for a name means a new
        pass, which fetches again.  Ordering always reads the head afresh, under the lease.
        """
        if name in self._pass_heads:
            if self._after_pass is None:
                return self._pass_heads[name]
            if name not in self._after_pass:
                self._after_pass.add(name)
                return self._pass_heads[name]
        database = self.database()
        if database is None:
            return None
        names = list(dict.fromkeys([*self.names, name]))
        with contextlib.suppress(StoreError), self._guard():
            found = {head.name: head for head in database.fleet_heads(names)}
            self._heads.update(found)
            self._pass_heads = {n: found.get(n) for n in names}
            self._after_pass = None
            return found.get(name)
        return None

    def newer(self, certificate: CertificateConfig, current: Version | None, now: datetime) -> FleetVersion | None:
        head = self.head(certificate.name)
        return head if head is not None and fleet_is_newer(head, current, certificate, now) else None

    def catch_up(self, certificate: CertificateConfig, home: CertificateHome, now: datetime) -> FleetVersion | None:
        """A fleet version this node should install now, or None.

        Not one this node already had and moved away from (a local rollback): that one waits for the node's
        own renewal point, so a broken local daemon is not reloaded into the same failure every pass.
        """
        current = home.current()
        head = self.head(certificate.name)
        if local_is_newer(head, current, certificate, now):
            assert current is not None
            self._publish(certificate, home, current, now)
            return None
        if head is None or not fleet_is_newer(head, current, certificate, now):
            return None
        if any(v.fingerprints == head.fingerprints for v in home.versions()):
            return None
        return head

    # -- one renewal -------------------------------------------------------------------------------------------

    def obtain(self, certificate: CertificateConfig, current: Version | None,
               issue: Callable[[], Sequence[KeyPair]]) -> list[KeyPair]:
        """The key pairs to install for a due ``certificate``: the fleet's newer version, or a new order
        placed by this node under the ordering lease (then stored for the others).  See the module docstring.

        Raises :class:`LockBusy` when another node holds the lease past ``lock_timeout``, and
        :class:`FleetStoreDown` when the database is unreachable and ``fleet_grace`` has not passed.
        """
        name = certificate.name
        issuer = self.issuers.get(certificate.issuer)
        database = self.database()
        if database is None:
            return self._alone(certificate, current, issue)
        try:
            with self._guard():
                found = self._fleet_pairs(database, certificate, current)
                if found is not None:
                    return found
                token = secrets.token_hex(16)
                holder = self._take_lease(database, certificate, current, token)
                if holder is not None:
                    found = self._fleet_pairs(database, certificate, current)
                    if found is not None:
                        return found
                    raise LockBusy(name, self.settings.lock_timeout.total_seconds(),
                                   f"node {holder.node}, ordering for the fleet; its lease runs until "
                                   f"{holder.expires_at:%H:%M:%S} UTC")
        except StoreError:
            return self._alone(certificate, current, issue)
        try:
            with self._guard():
                # Lease taken, look again: the previous holder may have stored its version just now.
                found = self._fleet_pairs(database, certificate, current)
                if found is not None:
                    return found
                # The fleet's order budget, under the lease: OrderWaiting when it is spent (the lease goes back).
                spend_or_wait(database, issuer, certificate, current, self.clock())
            try:
                with self._heartbeat(database, name, token):
                    pairs = list(issue())
            except IssuanceError as exc:  # a 429 stops every node, not only this one
                with contextlib.suppress(StoreError), self._guard():
                    record_rate_limit(database, issuer, certificate, exc, self.clock())
                raise
            self._store(database, certificate, pairs, token)
            return pairs
        finally:
            with contextlib.suppress(StoreError), self._guard():
                database.release_lease(name, token)

    def _publish(self, certificate: CertificateConfig, home: CertificateHome, current: Version,
                 now: datetime) -> None:
        """Store this node's newer version for the fleet (under the lease, fenced, like an order), so the other
        nodes converge on it at their next pass without a new order.  Skipped when the lease is held: the
        holder is ordering, and its version will be the newest."""
        database = self.database()
        if database is None:
            return
        name = certificate.name
        token = secrets.token_hex(16)
        with contextlib.suppress(StoreError), self._guard():
            if database.acquire_lease(name, self.node, token, self.settings.fleet_lease.total_seconds()) is not None:
                return
            try:
                if not local_is_newer(database.fleet_head(name), current, certificate, now):
                    return
                pairs = [KeyPair(KeyType(p.key_type), home.load_pair_key(p), *_certificate_and_chain(p))
                         for p in current.pairs]
                log.warning("%s: publishing this node's version %s to the fleet: it is newer than the fleet's "
                            "(renewed alone while the database was unreachable)", name, current.id)
                with contextlib.suppress(CertkeeperError):
                    self._store(database, certificate, pairs, token)
            finally:
                database.release_lease(name, token)

    def _alone(self, certificate: CertificateConfig, current: Version | None,
               issue: Callable[[], Sequence[KeyPair]]) -> list[KeyPair]:
        now = self.clock()
        since = self.down_since() or now
        if not may_renew_alone(since, now, self.settings.fleet_grace):
            raise FleetStoreDown(certificate.name, self.location, since, since + self.settings.fleet_grace,
                                 self.last_error or "not reachable")
        log.warning("%s: the fleet store is unreachable since %s, longer than fleet_grace: renewing alone",
                    certificate.name, since.isoformat())
        # Alone, the budget is this node's own (its SQLite store): it cannot know what the others spend.
        return list(obtain_within_budget(self.local, self.issuers.get(certificate.issuer), certificate,
                                         current, issue, now))

    def _fleet_pairs(self, database: FleetDatabase, certificate: CertificateConfig,
                     current: Version | None) -> list[KeyPair] | None:
        head = database.fleet_head(certificate.name)
        if head is None or not fleet_is_newer(head, current, certificate, self.clock()):
            return None
        self._heads[certificate.name] = head
        self._pass_heads[certificate.name] = head
        full = database.fleet_version(certificate.name, head.version)
        if full is None:
            return None
        log.info("%s: installing fleet version %d (ordered by %s)", certificate.name, full.version,
                 full.ordered_by)
        by_type = {p.key_type: self._unseal(full, p) for p in full.pairs}
        return [by_type[k.value] for k in certificate.key_types]

    def _unseal(self, version: FleetVersion, pair: FleetPair) -> KeyPair:
        key_pem = self.key.open(version.name, version.version, pair.key_type, pair.sealed_key, pair.key_version)
        certificates = pki.load_certificates(pair.fullchain_pem)
        return KeyPair(KeyType(pair.key_type), pki.load_key(key_pem), certificates[0], tuple(certificates[1:]))

    def _take_lease(self, database: FleetDatabase, certificate: CertificateConfig, current: Version | None,
                    token: str) -> LeaseHolder | None:
        """Wait up to ``lock_timeout`` for the lease: None once taken, else who holds it.  Gives up early when
        the holder's version appears."""
        seconds = self.settings.fleet_lease.total_seconds()
        deadline = time.monotonic() + self.settings.lock_timeout.total_seconds()
        delay = 0.2
        while True:
            holder = database.acquire_lease(certificate.name, self.node, token, seconds)
            if holder is None:
                return None
            head = database.fleet_head(certificate.name)
            if head is not None and fleet_is_newer(head, current, certificate, self.clock()):
                return holder
            if time.monotonic() >= deadline or self.stopping.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                return holder
            delay = min(delay * 1.5, 5.0)

    @contextlib.contextmanager
    def _heartbeat(self, database: FleetDatabase, name: str, token: str) -> Iterator[None]:
        """Extend the lease every third of ``fleet_lease`` while the order runs."""
        seconds = self.settings.fleet_lease.total_seconds()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(seconds / 3):
                try:
                    if not database.extend_lease(name, token, seconds):
                        log.warning("%s: the ordering lease was lost while ordering", name)
                        return
                except StoreError as exc:
                    log.warning("%s: cannot extend the ordering lease: %s", name, exc)
                    return

        thread = threading.Thread(target=beat, name=f"lease-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _store(self, database: FleetDatabase, certificate: CertificateConfig, pairs: Sequence[KeyPair],
               token: str) -> None:
        name = certificate.name
        try:
            with self._guard():
                head = database.fleet_head(name)
                number = (head.version if head else 0) + 1
                sealed = tuple(
                    FleetPair(p.key_type.value,
                              pki.cert_to_pem(p.certificate) + b"".join(pki.cert_to_pem(c) for c in p.chain),
                              self.key.seal(name, number, p.key_type.value, pki.key_to_pem(p.key)),
                              pki.serial_hex(p.certificate), pki.fingerprint(p.certificate), self.key.key_version)
                    for p in pairs)
                version = FleetVersion(
                    name, number, self.node, self.clock(), certificate.issuer, certificate.domains,
                    max(pki.not_before(p.certificate) for p in pairs), min(pki.not_after(p.certificate) for p in pairs),
                    frozenset(p.fingerprint for p in sealed), tuple(p.key_type for p in sealed),
                    tuple(p.serial for p in sealed), sealed)
                stored = database.store_fleet_version(version, token)
        except StoreError:
            # Ordered, then the database went away: install it here rather than waste the order.
            log.warning("%s: ordered, but the fleet store went away before it was stored; installing it on "
                        "this node only", name)
            return
        if not stored:
            msg = (
                f"certificate {name!r}: this node's ordering lease ran out before the new certificate was stored "
                f"(fleet_lease = {format_duration(self.settings.fleet_lease)}); another node took over, so this "
                f"certificate is discarded and the fleet's is installed on the next pass"
            )
            raise CertkeeperError(
                msg)
        self._heads[name] = version
        self._pass_heads[name] = version
        log.info("%s: stored fleet version %d", name, number)

    # -- reporting ---------------------------------------------------------------------------------------------

    def record_pass(self, results: Sequence[PassResult]) -> None:
        """Each certificate's state on this node after a pass (``node_results``); skipped while down."""
        self._after_pass = set()
        database = self.database()
        if database is None:
            return
        now = self.clock()
        rows = []
        for item in results:
            head = self._heads.get(item.name)
            if item.current is None:
                label = "-"
            elif head is not None and head.fingerprints == item.current.fingerprints:
                label = str(head.version)
            else:
                label = f"local {item.current.id}"
            serials = ",".join(p.serial for p in item.current.pairs) if item.current else ""
            rows.append(NodeResult(self.node, item.name, label, item.result, now, item.detail, serials))
        with contextlib.suppress(StoreError), self._guard():
            database.put_node_results(rows)

    def node_results(self, names: Sequence[str] | None = None) -> list[NodeResult]:
        database = self.database()
        if database is None:
            return []
        with contextlib.suppress(StoreError), self._guard():
            return list(database.node_results(names))
        return []

    def close(self) -> None:
        with self._mutex:
            if self._database is not None:
                self._database.close()
                self._database = None


def open_fleet(config: Config, local: Store, clock: Callable[[], datetime] = pki.now_utc) -> Fleet:
    """The fleet of ``config`` (``database`` set).  Connects on first use, so a node starts without it."""
    settings = config.settings
    assert settings.database is not None and settings.fleet_key_file is not None
    database_url, password_file, node = settings.database, settings.database_password_file, settings.node

    def connect() -> FleetDatabase:
        from certkeeper.store.postgres import PostgresStore

        return PostgresStore(database_url, password_file, node=node)

    return Fleet(config, local, FleetKey.from_file(settings.fleet_key_file), connect, clock)
