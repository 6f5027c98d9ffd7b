"""The DANE key rollover of one certificate, on disk and in DNS: the shell around :mod:`certkeeper.dane.records`.

Files, beside the version folders of :class:`~certkeeper.store.versions.CertificateHome`::

    certs/<name>/next/<key-type>.key     the key the next renewal will use (0600, written whole by rename)
    certs/<name>/next/dane.json          the records published and since when each is visible everywhere

The lifecycle calls three things: :meth:`DaneRollover.gate` when a renewal is due (publish, confirm, then
go / wait / go unsafely), :meth:`DaneRollover.keys_for_renewal` for the key to certify, and
:meth:`DaneRollover.after_install` once the new certificate is served (a new next key; current + next published,
the old key's records removed: RFC 7671 section 8.1).  :meth:`DaneRollover.synchronise` also runs on passes
with nothing due, so a failed cleanup is retried without waiting for the next renewal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cryptography import x509

from certkeeper import pki
from certkeeper.config import AcmeIssuerConfig, CertificateConfig, IssuerConfig
from certkeeper.dane import records as dane
from certkeeper.dane.publish import TlsaPublisher, dns_settings
from certkeeper.dane.records import EndEntity, Gate, RolloverState, RolloverStep, TlsaParameters, TlsaRecord
from certkeeper.errors import CertkeeperError, InputError, TlsaDnsError
from certkeeper.events import (
    Event,
    RenewalWaitingForTlsa,
    TlsaRecordsPublished,
    TlsaUpdateFailed,
    UnsafeKeyRollover,
)
from certkeeper.model import KeyType
from certkeeper.store.atomic import make_dirs, write_atomic
from certkeeper.store.versions import CertificateHome, Version

log = logging.getLogger("certkeeper.dane.records")

DEFAULT_DNS_TIMEOUT = 120.0


@dataclass(frozen=True)
class RecordSets:
    """The records of one moment: ``desired`` to publish, ``needed`` by the next certificate, ``current`` matched
    by the certificate installed now."""

    desired: frozenset[TlsaRecord]
    needed: frozenset[TlsaRecord]
    current: frozenset[TlsaRecord]


class DaneRollover:
    def __init__(self, certificate: CertificateConfig, home: CertificateHome, issuer: IssuerConfig | None,
                 publish_event: Callable[[Event], None], clock: Callable[[], datetime]) -> None:
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

    @property
    def uses_next_key(self) -> bool:
        """A fresh key per renewal under a DANE-EE record: the next key must be in DNS before it is served.
        With ``reuse_key`` (or DANE-TA records only) a renewal changes no record (RFC 7671 section 8.1)."""
        return not self.certificate.reuse_key and any(p.usage == dane.DANE_EE for p in self.parameters)

    # -- what the lifecycle calls ------------------------------------------------------------------------------

    def gate(self, previous: Version | None, now: datetime) -> Gate:
        """Bring DNS one step further, then decide whether the due renewal may change the key now."""
        step = self.synchronise(now)
        gate = dane.gate_renewal(step, now=self.clock(), not_after=previous.not_after if previous else None,
                                 unsafe_rollover_days=self.config.unsafe_rollover_days)
        if gate.unsafe:
            self.publish_event(UnsafeKeyRollover(self.clock(), self.certificate.name, gate.reason))
        elif not gate.proceed:
            self.publish_event(RenewalWaitingForTlsa(self.clock(), self.certificate.name, step.phase, gate.reason,
                                                     gate.retry_at))
        return gate

    def keys_for_renewal(self) -> dict[str, pki.PrivateKey]:
        """The next keys by key type, for the renewal to certify; empty when renewals keep the key."""
        if not self.uses_next_key:
            return {}
        return {key_type.value: self._next_key(key_type) for key_type in self.certificate.key_types}

    def after_install(self, now: datetime) -> RolloverStep:
        """The new certificate is served: make new next keys, publish current + next, remove the old key's."""
        return self.synchronise(now)

    def synchronise(self, now: datetime) -> RolloverStep:  # noqa: ARG002 - one signature for every step
        """Publish what is missing or stale, confirm it on every authoritative server, record since when.

        Failures become :class:`TlsaUpdateFailed` events (and the returned step still says what is owed);
        nothing raises into the pass.
        """
        try:
            records = self.record_sets()
        except CertkeeperError as exc:
            return self._failed(None, str(exc), "unpublished")
        state = self.load_state()
        step = self.decide(state, records)
        if step.action not in ("publish", "confirm"):
            return step
        settings = dns_settings(self.config, self.issuer)
        if settings is None:
            return self._failed(state, "no DNS server to update: set dane.dns_server and dane.tsig_key_file (or "
                                       "the issuer's), or publish the records by hand with "
                                       f"`certkeeper dane show {self.certificate.name}`", step.phase)
        try:
            publisher = TlsaPublisher(settings, ttl=self.config.ttl, timeout=self._dns_timeout())
            if step.action == "publish":
                publisher.publish(step.add, step.remove)
                state = RolloverState(records.desired, {r: t for r, t in state.visible_since.items()
                                                        if r in records.desired})
                self.save_state(state)
                self.publish_event(TlsaRecordsPublished(self.clock(), self.certificate.name,
                                                        tuple(r.rdata for r in sorted(step.add)),
                                                        tuple(r.rdata for r in sorted(step.remove))))
            unseen = {r for r in records.desired if r not in state.visible_since}
            seen = publisher.wait_visible(unseen) if unseen else set()
        except TlsaDnsError as exc:
            return self._failed(state, str(exc), step.phase)
        state = replace(state, visible_since={**state.visible_since, **dict.fromkeys(seen, self.clock())},
                        last_error="")
        self.save_state(state)
        if seen != unseen:
            missing = sorted(unseen - seen)
            return self._failed(state, f"{len(missing)} TLSA record(s) not answered by every authoritative server "
                                       f"of {settings.zone or 'the zone'} after {self._dns_timeout():g} s, e.g. "
                                       f"{missing[0].name} {missing[0].rdata}; check zone transfers",
                                "next-published")
        return self.decide(state, records)

    def out_of_step(self) -> bool:
        """Whether DNS owes something (a record to add, remove or confirm): cheap, files only."""
        try:
            step = self.decide(self.load_state(), self.record_sets(create=False))
        except CertkeeperError:
            return True
        return step.action in ("publish", "confirm")

    # -- records ------------------------------------------------------------------------------------------------

    def record_sets(self, *, create: bool = True) -> RecordSets:
        """Desired, needed and current records from the installed version, the next keys and the issuing CAs."""
        current_version = self.home.current()
        current_entities: list[EndEntity] = []
        chain: list[x509.Certificate] = []
        for pair in current_version.pairs if current_version else ():
            certificate = self.home.load_pair_certificate(pair)
            current_entities.append(EndEntity(dane.certificate_spki_der(certificate),
                                              dane.certificate_der(certificate)))
            chain += self._chain(pair.directory / "chain.pem")
        cas = dane.issuing_cas(chain + self._issuer_intermediates())
        next_entities = []
        if self.uses_next_key:
            for key_type in self.certificate.key_types:
                key = self._next_key(key_type) if create else self._load_next_key(key_type)
                if key is not None:
                    next_entities.append(EndEntity(pki.public_key_der(key)))
        current = dane.records_for(self.parameters, self.names, end_entities=current_entities, issuing_cas=cas)
        upcoming = dane.records_for(self.parameters, self.names, end_entities=next_entities, issuing_cas=cas)
        needed = upcoming if self.uses_next_key else current
        return RecordSets(current | upcoming, needed, current)

    def decide(self, state: RolloverState, records: RecordSets) -> RolloverStep:
        return dane.decide_rollover(state, desired=records.desired, needed=records.needed, current=records.current,
                                    now=self.clock(), ttl=self.config.ttl)

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
        try:
            data = json.loads(self.state_file.read_text())
            published = frozenset(TlsaRecord.from_text(r["name"], r["rdata"]) for r in data["published"])
            visible = {TlsaRecord.from_text(r["name"], r["rdata"]): datetime.fromisoformat(r["since"])
                       for r in data["visible_since"]}
            return RolloverState(published, visible, str(data.get("last_error", "")))
        except FileNotFoundError:
            return RolloverState()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable state costs a republication and two TTLs of waiting, never a premature key change.
            log.warning("%s: unreadable %s (%s); starting the rollover over", self.certificate.name,
                        self.state_file, exc)
            return RolloverState()

    def save_state(self, state: RolloverState) -> None:
        data = {
            "published": [{"name": r.name, "rdata": r.rdata} for r in sorted(state.published)],
            "visible_since": [{"name": r.name, "rdata": r.rdata, "since": t.isoformat()}
                              for r, t in sorted(state.visible_since.items())],
            "last_error": state.last_error,
        }
        make_dirs(self.next_dir, mode=0o700)
        write_atomic(self.state_file, json.dumps(data, indent=2).encode(), mode=0o600)
