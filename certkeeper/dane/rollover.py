"""The DANE key rollover of one certificate, on disk and in DNS: the shell around :mod:`certkeeper.dane.records`.

Files, beside the version folders of :class:`~certkeeper.store.versions.CertificateHome`::

    certs/<name>/next/<key-type>.key     the key the next renewal will use (0600, written whole by rename)

and in the state store (``dane_state``, one JSON document per certificate): the records published, since when
each is visible everywhere, the records retiring with their probe streaks, the servers that lagged.  (Before the
store held it, the state was ``next/dane.json``; it is read from there once.)

The lifecycle calls three things: :meth:`DaneRollover.gate` when a renewal is due (publish, confirm, then
go / wait / go unsafely), :meth:`DaneRollover.keys_for_renewal` for the key to certify, and
:meth:`DaneRollover.after_install` once the new certificate is served (a new next key; current + next published,
RFC 7671 section 8.1; the old key's records retire: :mod:`certkeeper.dane.retire`).
:meth:`DaneRollover.synchronise` also runs on passes with nothing due: a failed publication is retried and
retiring records are probed without waiting for the next renewal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from certkeeper import pki
from certkeeper.config import AcmeIssuerConfig, CertificateConfig, IssuerConfig
from certkeeper.dane import records as dane
from certkeeper.dane.propagation import lagging_servers
from certkeeper.dane.publish import TlsaPublisher, dns_settings
from certkeeper.dane.records import (
    EndEntity,
    Gate,
    ProbePoint,
    Retirement,
    RolloverState,
    RolloverStep,
    Streak,
    TlsaParameters,
    TlsaRecord,
)
from certkeeper.dane.retire import (
    begin_retirements,
    decide_retirement,
    note_probes,
    points_for,
    retire_dwell,
)
from certkeeper.dane.served import clean_samples, probe_points, resolve_addresses
from certkeeper.errors import CertkeeperError, InputError, TlsaDnsError
from certkeeper.events import (
    Event,
    RenewalWaitingForTlsa,
    TlsaPropagationLagging,
    TlsaRecordsPublished,
    TlsaRecordsRetiring,
    TlsaUpdateFailed,
    UnsafeKeyRollover,
)
from certkeeper.model import KeyType
from certkeeper.store.atomic import make_dirs, write_atomic
from certkeeper.store.base import Store
from certkeeper.store.versions import CertificateHome, Version
from certkeeper.values import field, frozen, replace

log = logging.getLogger("certkeeper.dane.records")

DEFAULT_DNS_TIMEOUT = 120.0
PROBE_TIMEOUT = 10.0


def _servers(lagging: tuple[str, ...]) -> tuple[str, ...]:
    return lagging_servers(lagging)


@frozen
class RecordSets:
    """The records of one moment: ``desired`` to publish, ``needed`` by the next certificate, ``current`` matched
    by the certificate installed now."""

    desired: frozenset[TlsaRecord]
    needed: frozenset[TlsaRecord]
    current: frozenset[TlsaRecord]
    owners: Mapping[TlsaRecord, str] = field(default_factory=dict)  # key type (or CA) of each desired record
    needed_by_key: Mapping[str, frozenset[TlsaRecord]] = field(default_factory=dict)
    installed_keys: frozenset[str] = frozenset()  # the key types of the certificate installed now


class DaneRollover:
    def __init__(self, certificate: CertificateConfig, home: CertificateHome, issuer: IssuerConfig | None,
                 publish_event: Callable[[Event], None], clock: Callable[[], datetime], *,
                 process_lifetime: Callable[[], timedelta | None] = lambda: None, store: Store | None = None) -> None:
        """``process_lifetime``: how long a server process started before a reload may still present the old
        key (Postfix's ``max_idle``, read by the renewal layer: :func:`certkeeper.mailserver.config.
        server_process_lifetime`); asked once, when a retirement needs its dwell.  ``store``: where the rollover
        state lives across passes (the state store; ``next/dane.json`` without one)."""
        assert certificate.dane is not None
        self.certificate = certificate
        self.config = certificate.dane
        self.home = home
        self.issuer = issuer
        self.publish_event = publish_event
        self.clock = clock
        self.parameters = [TlsaParameters.parse(text) for text in self.config.tlsa]
        self.names = dane.record_names(self.config.hosts or certificate.domains, self.config.ports)
        self.next_dir = home.root / "next"
        self.state_file = self.next_dir / "dane.json"
        self.process_lifetime = process_lifetime
        self.store = store
        self._lifetime: timedelta | None = None
        self._rolling: tuple[str, ...] = ()  # the gate's: key types whose next key the renewal certifies

    @property
    def uses_next_key(self) -> bool:
        """A fresh key per renewal under a DANE-EE record: the next key must be in DNS before it is served.
        With ``reuse_key`` (or DANE-TA records only) a renewal changes no record (RFC 7671 section 8.1)."""
        return not self.certificate.reuse_key and any(p.usage == dane.DANE_EE for p in self.parameters)

    # -- what the lifecycle calls ------------------------------------------------------------------------------

    def gate(self, previous: Version | None, now: datetime) -> Gate:
        """Bring DNS one step further, then decide whether the due renewal may change the key now."""
        step = self.synchronise(now)
        self._rolling = step.rolling
        gate = dane.gate_renewal(step, now=self.clock(), not_after=previous.not_after if previous else None,
                                 unsafe_rollover_days=self.config.unsafe_rollover_days)
        if gate.unsafe:
            self._rolling = ()
            self.publish_event(UnsafeKeyRollover(self.clock(), self.certificate.name, gate.reason))
        elif not gate.proceed:
            self.publish_event(RenewalWaitingForTlsa(self.clock(), self.certificate.name, step.phase, gate.reason,
                                                     gate.retry_at))
        return gate

    def keys_for_renewal(self) -> dict[str, pki.PrivateKey]:
        """The keys by key type for the renewal to certify: the next key of each key type the gate let roll, the
        installed key of the others (their next records are not ready: they roll at a later renewal); empty
        when renewals keep the key."""
        if not self.uses_next_key:
            return {}
        keys = {}
        current = self.home.current()
        for key_type in self.certificate.key_types:
            pair = next((p for p in current.pairs if p.key_type == key_type.value), None) if current else None
            if self._rolling and key_type.value not in self._rolling and pair is not None:
                log.info("%s: the %s key is kept this renewal: its next key's TLSA records are not ready",
                         self.certificate.name, key_type.value)
                keys[key_type.value] = self.home.load_pair_key(pair)
            else:
                keys[key_type.value] = self._next_key(key_type)
        return keys

    def after_install(self, now: datetime) -> RolloverStep:
        """The new certificate is served: make new next keys, publish current + next; the old key's records retire."""
        return self.synchronise(now)

    def synchronise(self, now: datetime) -> RolloverStep:  # noqa: ARG002 - one signature for every step
        """Publish what is missing, confirm it on every authoritative server (and the validating resolver),
        record since when; probe every address while records retire, and remove them when their dwell is over.

        Failures become :class:`TlsaUpdateFailed` (or :class:`TlsaPropagationLagging`) events, and the returned
        step still says what is owed; nothing raises into the pass.
        """
        try:
            records = self.record_sets()
        except CertkeeperError as exc:
            return self._failed(None, str(exc), "unpublished")
        state = self.load_state()
        owners = {r: o for r, o in {**state.owners, **records.owners}.items() if r in state.published | records.desired}
        state = replace(state, owners=owners, retirements=begin_retirements(
            state.retirements, state.published - records.desired, owners, self.clock()))
        step = self.decide(state, records)
        if step.action not in ("publish", "confirm") and not step.retiring:
            self._save_if_changed(state)
            return step
        settings = dns_settings(self.config, self.issuer)
        if settings is None:
            return self._failed(state, "no DNS server to update: set dane.dns_server and dane.tsig_key_file (or "
                                       "the issuer's), or publish the records by hand with "
                                       f"`certkeeper dane show {self.certificate.name}`", step.phase)
        try:
            publisher = TlsaPublisher(settings, ttl=self.config.ttl, timeout=self._dns_timeout())
            if step.action == "publish":
                for name, count in dane.crowded_names(state.published | step.add):
                    log.warning("%s: %s would carry %d TLSA records, more than %d: some large senders handle no "
                                "more than about a dozen", self.certificate.name, name, count, dane.CROWDED_NAME)
                state = self._publish(publisher, state, step.add, step.remove)
            unseen = {r for r in records.desired if r not in state.visible_since}
            if unseen:
                state = self._confirm(publisher, state, unseen)
            if state.retirements:
                state = self._retire(publisher, settings.server, state, records)
        except TlsaDnsError as exc:
            return self._failed(state, str(exc), step.phase)
        self.save_state(state)
        if state.lagging and any(r not in state.visible_since for r in records.desired):
            return self._lagging(state, settings.zone)
        return self.decide(state, records)

    def _publish(self, publisher: TlsaPublisher, state: RolloverState, add: frozenset[TlsaRecord],
                 remove: frozenset[TlsaRecord]) -> RolloverState:
        publisher.publish(add, remove)
        published = (state.published | add) - remove
        retirements = tuple(replace(r, records=r.records - remove) for r in state.retirements if r.records - remove)
        state = replace(state, published=published, retirements=retirements,
                        owners={r: o for r, o in state.owners.items() if r in published},
                        visible_since={r: t for r, t in state.visible_since.items() if r in published})
        self.save_state(state)
        self.publish_event(TlsaRecordsPublished(self.clock(), self.certificate.name,
                                                tuple(r.rdata for r in sorted(add)),
                                                tuple(r.rdata for r in sorted(remove))))
        return state

    def _confirm(self, publisher: TlsaPublisher, state: RolloverState, unseen: set[TlsaRecord]) -> RolloverState:
        """Ask every authoritative address and the resolver; the records all of them answer are visible from now."""
        seen = publisher.wait_visible(unseen, resolver=self.config.resolver, timeout=self._confirm_timeout())
        moment = self.clock()
        state = replace(state, visible_since={**state.visible_since, **dict.fromkeys(seen.visible, moment)},
                        lagging=seen.lagging if seen.visible != unseen else (), last_error="")
        if state.lagging:
            self.publish_event(TlsaPropagationLagging(moment, self.certificate.name,
                                                      _servers(state.lagging), "; ".join(state.lagging)))
        return state

    def _retire(self, publisher: TlsaPublisher, dns_server: str, state: RolloverState,
                records: RecordSets) -> RolloverState:
        """Probe every address with and without SNI; remove each key's retiring records once its dwell is over."""
        now = self.clock()
        hosts = [h for h in (self.config.hosts or self.certificate.domains) if not h.startswith("*.")]
        addresses = resolve_addresses(hosts, resolver=self.config.resolver, dns_server=dns_server,
                                      timeout=min(self._dns_timeout(), 5.0))
        points = points_for(hosts, self.config.ports, addresses)
        results = probe_points(points, now=now, timeout=PROBE_TIMEOUT, ca_file=None,
                               dual=len(self.certificate.key_types) > 1)
        kept: list[Retirement] = []
        done: set[TlsaRecord] = set()
        waiting: list[str] = []
        for before in state.retirements:
            # A key type's retirement asks only about its own leaf (the records of that key type kept).
            own = (frozenset(r for r in records.desired if records.owners.get(r) == before.key)
                   if before.key not in ("", dane.CA_OWNER) else None)
            retirement = note_probes(before, clean_samples(results, retiring=before.records, kept=records.desired,
                                                           own=own), now)
            decision = decide_retirement(retirement, points, now=now, dwell=self.dwell(),
                                         probes=self.config.retire_probes)
            if decision.done:
                log.info("%s: %s%s; removing the old key's TLSA records", self.certificate.name,
                         f"{before.key} key: " * bool(before.key), decision.reason)
                done |= retirement.records
            else:
                waiting.append(f"{before.key} key: {decision.reason}" if before.key else decision.reason)
                kept.append(replace(retirement, next_probe_at=decision.probe_at))
        state = replace(state, retirements=tuple(kept))
        if waiting:
            self.save_state(state)
            self.publish_event(TlsaRecordsRetiring(now, self.certificate.name,
                                                   tuple(r.rdata for r in sorted(state.retiring)), "; ".join(waiting)))
        if done:
            return self._publish(publisher, state, frozenset(), frozenset(done))
        return state

    def dwell(self) -> timedelta:
        """``dane.retire_after`` (default two TTLs), at least the server processes' lifetime."""
        return retire_dwell(ttl=self.config.ttl, retire_after=self.config.retire_after,
                            process_lifetime=self._process_lifetime())

    def _process_lifetime(self) -> timedelta | None:
        if self._lifetime is None:
            self._lifetime = self.process_lifetime()
        return self._lifetime

    def _lagging(self, state: RolloverState, zone: str | None) -> RolloverStep:
        reason = (f"TLSA records not yet visible everywhere in {zone or 'the zone'}: " + "; ".join(state.lagging))
        log.warning("%s: %s", self.certificate.name, reason)
        return RolloverStep("next-published", "confirm", reason)

    def out_of_step(self) -> bool:
        """Whether DNS owes something (a record to add, remove, confirm or retire): cheap, no DNS asked."""
        try:
            state = self.load_state()
            records = self.record_sets(create=False)
        except CertkeeperError:
            return True
        return bool(state.published - records.desired) or self.decide(state, records).action in ("publish", "confirm")

    def next_look(self) -> datetime | None:
        """When the retiring records want their next probe (no DNS asked); None when nothing retires."""
        looks = [r.next_probe_at for r in self.load_state().retirements if r.next_probe_at is not None]
        return min(looks, default=None)

    # -- records ------------------------------------------------------------------------------------------------

    def record_sets(self, *, create: bool = True) -> RecordSets:
        """Desired, needed and current records from the installed version, the next keys and the issuing CAs."""
        current_version = self.home.current()
        current_entities: dict[str, EndEntity] = {}
        chain: list[x509.Certificate] = []
        for pair in current_version.pairs if current_version else ():
            certificate = self.home.load_pair_certificate(pair)
            current_entities[pair.key_type] = EndEntity(dane.certificate_spki_der(certificate),
                                                        dane.certificate_der(certificate))
            chain += self._chain(pair.directory / "chain.pem")
        # DANE-TA: the CAs of the chain served now (its records must stay while it is served), and those that may
        # sign the next certificate: dane.issuers when listed, else the ACME issuer's trust_roots intermediates.
        upcoming_cas = [c for path in self.config.issuers for c in self._chain(path)] or self._issuer_intermediates()
        cas = dane.issuing_cas(chain + upcoming_cas)
        next_entities: dict[str, EndEntity] = {}
        if self.uses_next_key:
            for key_type in self.certificate.key_types:
                key = self._next_key(key_type) if create else self._load_next_key(key_type)
                if key is not None:
                    next_entities[key_type.value] = EndEntity(pki.public_key_der(key))
        current = dane.records_for(self.parameters, self.names, end_entities=list(current_entities.values()),
                                   issuing_cas=cas)
        upcoming = dane.records_for(self.parameters, self.names, end_entities=list(next_entities.values()),
                                    issuing_cas=cas)
        owners = dict.fromkeys(dane.records_for(self.parameters, self.names, end_entities=[], issuing_cas=cas),
                               dane.CA_OWNER)
        needed_by_key: dict[str, frozenset[TlsaRecord]] = {}
        for kind in {*current_entities, *next_entities}:
            entities = [e for e in (current_entities.get(kind), next_entities.get(kind)) if e is not None]
            for record in dane.records_for(self.parameters, self.names, end_entities=entities, issuing_cas=[]):
                owners[record] = kind
            if kind in next_entities:
                needed_by_key[kind] = dane.records_for(self.parameters, self.names,
                                                       end_entities=[next_entities[kind]], issuing_cas=[])
        needed = upcoming if self.uses_next_key else current
        return RecordSets(current | upcoming, needed, current, owners, needed_by_key if self.uses_next_key else {},
                          frozenset(current_entities))

    def decide(self, state: RolloverState, records: RecordSets) -> RolloverStep:
        # Retired records are removed by _retire, after their dwell: none is removed by the decision alone.
        return dane.decide_rollover(state, desired=records.desired, needed=records.needed, current=records.current,
                                    now=self.clock(), ttl=self.config.ttl, needed_by_key=records.needed_by_key,
                                    installed_keys=records.installed_keys)

    def _failed(self, state: RolloverState | None, error: str, phase: dane.Phase) -> RolloverStep:
        log.warning("%s: %s", self.certificate.name, error)
        if state is not None and state.last_error != error:
            self.save_state(replace(state, last_error=error))
        self.publish_event(TlsaUpdateFailed(self.clock(), self.certificate.name, error))
        return RolloverStep(phase, "confirm" if phase == "next-published" else "publish", error)

    def _issuer_intermediates(self) -> list[x509.Certificate]:
        """Intermediates the CA may issue from, when the issuer names them (ACME ``trust_roots``)."""
        if isinstance(self.issuer, AcmeIssuerConfig) and self.issuer.trust_roots is not None:
            return self._chain(self.issuer.trust_roots)
        return []

    @staticmethod
    def _chain(path: Path) -> list[x509.Certificate]:
        try:
            return pki.load_certificates(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise InputError(str(path), str(exc)) from None

    def _dns_timeout(self) -> float:
        if isinstance(self.issuer, AcmeIssuerConfig):
            return self.issuer.dns_timeout.total_seconds()
        return DEFAULT_DNS_TIMEOUT

    def _confirm_timeout(self) -> float:
        """How long one pass waits for the records to show everywhere: two TTLs at most (a resolver's cache of
        the old RRset is gone after one); the next pass asks again."""
        return min(self._dns_timeout(), max(2.0 * self.config.ttl, 5.0))

    # -- next keys ----------------------------------------------------------------------------------------------

    def next_key_path(self, key_type: KeyType) -> Path:
        return self.next_dir / f"{key_type.value}.key"

    def _load_next_key(self, key_type: KeyType) -> pki.PrivateKey | None:
        path = self.next_key_path(key_type)
        try:
            return pki.load_key(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(str(path), str(exc)) from None

    def _next_key(self, key_type: KeyType) -> pki.PrivateKey:
        """The stored next key; a new one when there is none or the installed certificate already uses it (the
        rollover happened, or a crash came between install and :meth:`after_install`)."""
        key = self._load_next_key(key_type)
        if key is not None and not self._installed_key(key):
            return key
        key = pki.generate_key(key_type)
        make_dirs(self.next_dir, mode=0o700)
        # 0600: the mail daemon never reads a next key; only certkeeper does, until it is installed.
        write_atomic(self.next_key_path(key_type), pki.key_to_pem(key), mode=0o600)
        log.info("%s: new next %s key for the DANE rollover", self.certificate.name, key_type.value)
        return key

    def _installed_key(self, key: pki.PrivateKey) -> bool:
        current = self.home.current()
        spki = pki.public_key_der(key)
        return current is not None and any(
            pki.public_key_der(self.home.load_pair_certificate(pair).public_key()) == spki  # type: ignore[arg-type]
            for pair in current.pairs)

    # -- state --------------------------------------------------------------------------------------------------

    def load_state(self) -> RolloverState:
        """The rollover state from the store; from ``next/dane.json`` when the store has none yet (written there
        before the state moved into the store)."""
        try:
            stored = self.store.get_dane_state(self.certificate.name) if self.store is not None else None
            data = stored if stored is not None else json.loads(self.state_file.read_text())
            published = frozenset(TlsaRecord.from_text(r["name"], r["rdata"]) for r in data["published"])
            visible = {TlsaRecord.from_text(r["name"], r["rdata"]): datetime.fromisoformat(r["since"])
                       for r in data["visible_since"]}
            # One retirement per key; before they were per key, one ("retiring") for all.
            retirements = tuple(r for r in map(_load_retirement, data.get("retirements", [data.get("retiring")]))
                                if r is not None)
            owners = {TlsaRecord.from_text(r["name"], r["rdata"]): str(r["owner"]) for r in data.get("owners", ())}
            return RolloverState(published, visible, str(data.get("last_error", "")), retirements,
                                 tuple(str(line) for line in data.get("lagging", ())), owners)
        except FileNotFoundError:
            return RolloverState()
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # Unreadable state costs a republication and two TTLs of waiting, never a premature key change.
            log.warning("%s: unreadable %s (%s); starting the rollover over", self.certificate.name,
                        self.state_file, exc)
            return RolloverState()

    def save_state(self, state: RolloverState) -> None:
        if self.store is not None:
            self.store.put_dane_state(self.certificate.name, _state_json(state))
            return
        make_dirs(self.next_dir, mode=0o700)
        write_atomic(self.state_file, json.dumps(_state_json(state), indent=2).encode(), mode=0o600)

    def _save_if_changed(self, state: RolloverState) -> None:
        if state != self.load_state():
            self.save_state(state)


def _state_json(state: RolloverState) -> dict[str, object]:
    data: dict[str, object] = {
        "published": [{"name": r.name, "rdata": r.rdata} for r in sorted(state.published)],
        "visible_since": [{"name": r.name, "rdata": r.rdata, "since": t.isoformat()}
                          for r, t in sorted(state.visible_since.items())],
        "last_error": state.last_error,
        "lagging": list(state.lagging),
        "owners": [{"name": r.name, "rdata": r.rdata, "owner": o} for r, o in sorted(state.owners.items())],
        "retirements": [{
            "key": retirement.key,
            "records": [{"name": r.name, "rdata": r.rdata} for r in sorted(retirement.records)],
            "since": retirement.since.isoformat(),
            "next_probe_at": retirement.next_probe_at.isoformat() if retirement.next_probe_at else None,
            "streaks": [{"point": p.key, "count": s.count, "first_at": s.first_at.isoformat()}
                        for p, s in sorted(retirement.streaks.items())],
        } for retirement in state.retirements],
    }
    return data


def _load_retirement(data: dict[str, object] | None) -> Retirement | None:
    if not data:
        return None
    records = frozenset(TlsaRecord.from_text(r["name"], r["rdata"]) for r in data["records"])  # type: ignore[attr-defined]
    streaks = {ProbePoint.from_key(s["point"]): Streak(int(s["count"]), datetime.fromisoformat(s["first_at"]))
               for s in data.get("streaks", ())}  # type: ignore[attr-defined]
    next_probe = data.get("next_probe_at")
    return Retirement(records, datetime.fromisoformat(str(data["since"])), streaks,
                      datetime.fromisoformat(str(next_probe)) if next_probe else None, str(data.get("key", "")))
