"""One pass over the managed certificates: observe, decide, lock, re-check, issue, install, reload, verify,
roll back.  The daemon and ``certkeeper renew`` both run :meth:`Renewer.run`.

A pass goes in phases, so that a daemon serving five renewed certificates is reloaded once:

1. observe: what is installed (version folders) and what endpoints serve (stale detection);
2. decide (:func:`certkeeper.renewal.policy.decide_renewal`) once per certificate, with one ``now`` for the pass;
   take each due certificate's lock, re-read what another certkeeper may have changed meanwhile (the state row
   and the ``current`` link) and decide again only if it did;
3. issue concurrently, gate each pair (:func:`certkeeper.store.versions.check_pairs`), write version folders;
4. flip ``current`` for every staged certificate, then run each distinct reload hook once;
5. verify every endpoint; reload once more where the old certificate is still served; roll back what still
   fails, reload, and verify that the previous certificate is served again;
6. record the outcome (state, history, events) and prune old versions; each outcome carries ``next_check``,
   when to look at the certificate again (the daemon schedules its next pass from it).

The pass reads the clock once for its decisions (``now``), and once more after issuing, for what it records
and decides about the new certificates (a CA may make them valid only from the moment of issue); events use
the same two readings.  Two checks watch real time instead: the install gate and the wait for an endpoint to
serve the new certificate.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from certkeeper import pki
from certkeeper.config import CaIssuerConfig, CertificateConfig, Config
from certkeeper.config.resolve import resolve_hook
from certkeeper.errors import (
    CaUnavailable,
    CertkeeperError,
    ConfigError,
    FleetStoreDown,
    HookFailed,
    InputError,
    InstallRefused,
    IssuanceError,
    LockBusy,
    OrderWaiting,
    VerificationFailed,
    VersionWriteFailed,
)
from certkeeper.events import (
    CertificateInstalled,
    CertificateIssued,
    CertificateVerified,
    EventBus,
    PersistRecordExpiring,
    ReloadHookFailed,
    RenewalFailed,
    RolledBack,
)
from certkeeper.issuers.base import Issuer, IssueRequest, LeftoverRemover, RenewalInfoSource, crl_files, root_files
from certkeeper.issuers.journal import certificates_pending, has_pending
from certkeeper.model import KeyType
from certkeeper.renewal.policy import (
    Decision,
    History,
    Installed,
    Result,
    Wanted,
    caught_up,
    decide_again,
    decide_renewal,
    fleet_may_catch_up,
    next_check_with_reload,
    wait_for_budget,
)
from certkeeper.store import CertState, EndpointRecord, RenewalRecord, Store
from certkeeper.store.versions import (
    CertificateHome,
    InstalledPair,
    KeyPair,
    KnownVersions,
    Ownership,
    VerifiedFiles,
    Version,
    check_pairs,
)
from certkeeper.values import field, frozen, mutable, replace

if TYPE_CHECKING:
    from cryptography import x509

    from certkeeper.config import IssuerConfig
    from certkeeper.dane.observe import DaneWatch
    from certkeeper.dane.rollover import DaneRollover
    from certkeeper.renewal.hooks import HookContext
    from certkeeper.renewal.observe import Watched
    from certkeeper.renewal.verify import Verification
    from certkeeper.store.fleet import Fleet
    from certkeeper.targets import Target

log = logging.getLogger("certkeeper.renewal.lifecycle")

IssuerSource = Callable[[str], Issuer]


@frozen
class Outcome:
    """What a pass did with one certificate.  ``failed`` outcomes make ``certkeeper renew`` exit non-zero."""

    name: str
    result: Result
    detail: str = ""
    version: str = ""
    next_check: datetime | None = None  # when to look at it again (set by Renewer.run)

    @property
    def failed(self) -> bool:
        return self.result.failed


@frozen
class _Seen:
    """What is installed, read once: the ``current`` link as written, its version, and the decision's facts."""

    link: str | None
    version: Version | None
    installed: Installed | None


@mutable
class _Work:
    """A certificate going through the pass."""

    config: CertificateConfig
    home: CertificateHome
    previous: Version | None
    new: Version | None = None
    state: CertState | None = None  # the state row as last read or written in this pass
    seen: _Seen | None = None  # what was installed when the pass decided
    installed: Installed | None = None  # the facts of what is current now (after a flip: the new version)
    decision: Decision | None = None
    hook_error: str = ""
    outcome: Outcome | None = None
    reload_only: bool = False
    unrecorded: bool = False  # a reload only of a version whose install was never recorded (_install_unrecorded)
    events: list[object] = field(default_factory=list)
    dane: DaneRollover | None = None  # DANE (RFC 7672): the key comes from the TLSA rollover
    next_keys: dict[str, pki.PrivateKey] = field(default_factory=dict)
    flipped: bool = False  # ``current`` was replaced by ``new`` (or that failed: ``flip_error``)
    owed_by_pass: bool = False  # the reload owed was recorded by this pass before issuing (the row had none)
    flip_error: VersionWriteFailed | None = None


class Renewer:
    def __init__(self, config: Config, store: Store, issuer_for: IssuerSource, bus: EventBus,
                 clock: Callable[[], datetime] = pki.now_utc, fleet: Fleet | None = None) -> None:
        self.config = config
        self.store = store
        self.issuer_for = issuer_for
        self.bus = bus
        self.clock = clock
        self.settings = config.settings
        self.fleet = fleet  # fleet integration: shared certificates through PostgreSQL (certkeeper.store.fleet)
        # Installed files hashed once, then only stat-ed while unchanged (a daemon keeps it between passes).
        self.verified = VerifiedFiles(self.settings.state_dir / "verified-files.json")
        self.known_versions = KnownVersions()  # each version.json parsed once while it is unchanged
        self.chains = pki.ChainVerifier()  # the install gate verifies each intermediate's path to its root once
        # Certificate folders seen without leftovers of an interrupted install, by identity: stat-ed, not listed.
        self.clean_folders = VerifiedFiles(self.settings.state_dir / "clean-folders.json")
        # The moment the order budget named to a certificate told to wait (OrderWaiting): not asked again before
        # then (certkeeper.store.budget).  Kept for the process's life: a restarted daemon asks once more.
        self._budget_waits: dict[str, datetime] = {}
        self._homes: dict[tuple[str, str | None], CertificateHome] = {}
        self._wants: dict[str, tuple[CertificateConfig, Wanted]] = {}
        # The last decision from each certificate's facts, wish and history, and when it was made: while those
        # are the same, the next pass finds the same decision (decide_again) without deciding again.
        self._decisions: dict[str, tuple[Installed | None, Wanted, History, datetime, Decision]] = {}

    # -- public ------------------------------------------------------------------------------------------------

    def home(self, certificate: CertificateConfig) -> CertificateHome:
        key = (certificate.name, certificate.group)
        home = self._homes.get(key)
        if home is None:  # built once per certificate and process (a daemon's pass asks for 1,000 every wake)
            home = self._homes[key] = CertificateHome(self.settings.state_dir, certificate.name,
                                                      Ownership(certificate.group))
        return home

    def select(self, names: Sequence[str] | None) -> list[CertificateConfig]:
        if not names:
            return list(self.config.certificates.values())
        return self.config.named(names)

    def decide(self, certificate: CertificateConfig, now: datetime) -> Decision:
        """The decision for ``certificate`` at ``now`` from what is installed and stored (``certkeeper status``)."""
        home = self.home(certificate)
        state = self.store.get_state(certificate.name) or CertState(certificate.name)
        return self._decide(certificate, home, self._look(certificate, home), state, now)

    def _decide(self, certificate: CertificateConfig, home: CertificateHome, seen: _Seen, state: CertState,
                now: datetime) -> Decision:
        history = _history(state, inputs_changed=self._inputs_changed(certificate, state))
        wanted = self._wanted(certificate)
        known = self._decisions.get(certificate.name)
        decision = None
        if known is not None and known[0] == seen.installed and known[1] is wanted and known[2] == history:
            decision = decide_again(known[4], known[3], seen.installed, now=now,
                                    check_interval=self.settings.check_interval)
        if decision is None:
            decision = decide_renewal(seen.installed, wanted, history, now=now,
                                      check_interval=self.settings.check_interval)
            self._decisions[certificate.name] = (seen.installed, wanted, history, now, decision)
        decision = wait_for_budget(decision, self._budget_waits.get(certificate.name), name=certificate.name, now=now)
        # Fleet integration: another node stored a newer certificate; install it (nothing is ordered).
        if self.fleet is not None and fleet_may_catch_up(decision, history, name=certificate.name, now=now):
            newer = self.fleet.catch_up(certificate, home, now)
            if newer is not None:
                return caught_up(decision, version=newer.version, ordered_by=newer.ordered_by, now=now)
        return decision

    def _inputs_changed(self, certificate: CertificateConfig, state: CertState) -> bool:
        """Whether what the last failed attempt was made with changed since: then the backoff is over (issue
        21.9).  Computed only after failures."""
        if state.failures == 0 or state.last_attempt_at is None or not state.failed_inputs:
            return False
        return state.failed_inputs != self._inputs(certificate)

    def _inputs(self, certificate: CertificateConfig) -> str:
        """A digest of what an attempt for ``certificate`` is made with: its ``[certificates.NAME]`` table and its
        issuer's table as parsed (file names, not secrets), and for an internal CA the files in ``ca_dir``
        (``ca init`` creates them).  Editing another table, or touching the file, changes nothing."""
        issuer = self.config.issuers.get(certificate.issuer)
        parts = [repr(certificate), repr(issuer)]
        if isinstance(issuer, CaIssuerConfig):
            with contextlib.suppress(OSError):
                parts += sorted(f"{entry.name} {entry.stat().st_size} {entry.stat().st_mtime_ns}"
                                for entry in issuer.ca_dir.iterdir())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def _wanted(self, certificate: CertificateConfig) -> Wanted:
        known = self._wants.get(certificate.name)
        if known is not None and known[0] is certificate:  # the same table as parsed: what it asks is the same
            return known[1]
        wanted = Wanted(certificate.name, certificate.domains, tuple(k.value for k in certificate.key_types),
                        certificate.renew_before or self.settings.renew_before)
        self._wants[certificate.name] = (certificate, wanted)
        return wanted

    def _look(self, certificate: CertificateConfig, home: CertificateHome) -> _Seen:
        """What is installed; an unreadable install is reported and counts as nothing installed."""
        link = home.link_text()  # as written (read once): what the re-check under the lock compares with
        if link is None:
            return _Seen(link, None, None)
        try:
            # An unreadable link (``<strerror>``) is read again by current(), which says what is wrong.
            version = home.current(self.known_versions) if link.startswith("<") else \
                home.linked_version(link, self.known_versions)
            if version is None:  # removed since (current() read it again)
                return _Seen(link, None, None)
            matches = all(_pair_matches(home, version, p, self.verified) for p in version.pairs)
        except CertkeeperError as exc:
            log.warning("%s: the installed version cannot be read (%s); treating it as missing",
                        certificate.name, exc)
            return _Seen(link, None, None)
        return _Seen(link, version, _facts(version, key_matches=matches))

    def watched(self, certificates: Sequence[CertificateConfig]) -> list[Watched]:
        """Every managed endpoint, with the fingerprints ``current`` says it should serve."""
        items = []
        for certificate in certificates:
            if not certificate.endpoints:
                continue
            from certkeeper.renewal.observe import Watched  # imported only when there are endpoints to probe

            current = self.home(certificate).readable_current()
            # Judged against what the certificate chains to: the issuer's roots (internal CA, trust_roots) and
            # the certificate's ca_file; the system store only when neither is there (a public ACME CA).
            issuer = self.config.issuers.get(certificate.issuer)
            issuer_roots, crls = root_files(issuer), crl_files(issuer)
            for target in certificate.endpoints:
                # An endpoint written as an address (smtp://192.0.2.1:25) says where to connect; clients ask for
                # the certificate's name there, so judge (SNI and name check) against that, not the address.
                names = [d for d in certificate.domains if not d.startswith("*.")]
                servername = names[0] if target.is_ip_literal and names else None
                items.append(Watched(certificate.name, target, current.fingerprints if current else None,
                                     dual=len(certificate.key_types) > 1, servername=servername,
                                     ca_file=certificate.ca_file, issuer_roots=issuer_roots, crl_files=crls,
                                     dane=_dane_watch(certificate, target, issuer)))
        return items

    def run(self, names: Sequence[str] | None = None, *, force: bool = False, dry_run: bool = False,
            stale: frozenset[str] = frozenset()) -> list[Outcome]:
        """One pass.  ``stale`` names certificates an observation found served stale: they get a reload."""
        certificates = self.select(names)
        now = self.clock()
        works: dict[str, _Work] = {}
        outcomes: dict[str, Outcome] = {}
        with contextlib.ExitStack() as locks:
            pending = certificates_pending(self.settings.state_dir)
            # Every state row in one query (re-read under the lock before anything is done about a due one).
            stored = {state.name: state for state in self.store.states()} if len(certificates) > 1 else {}
            for certificate in certificates:
                taken = self._take_on(certificate, locks, now, force=force, dry_run=dry_run,
                                      stale=certificate.name in stale and not dry_run, pending=pending,
                                      stored=stored.get(certificate.name))
                if isinstance(taken, Outcome):
                    outcomes[certificate.name] = taken
                else:
                    works[certificate.name] = taken
            to_issue = [w for w in works.values() if not w.reload_only]
            if not dry_run:
                self._owe_reloads(to_issue)
            self._issue_all(to_issue, dry_run=dry_run, now=now)
            # What follows concerns certificates issued since the pass began (a CA may make them valid only
            # from the moment of issue): it is recorded and decided at one second reading, when the work is done.
            done = self.clock() if to_issue else now
            if not dry_run:
                self._install_reload_verify([w for w in works.values() if w.outcome is None], done)
                self._forgive_unflipped(to_issue)
        for work in works.values():
            assert work.outcome is not None
            outcomes[work.config.name] = replace(work.outcome, next_check=self._closing_check(work, done))
        for certificate in certificates:  # retiring TLSA records want their next probe (certkeeper.dane.retire)
            look = self._dane_next_look(certificate) if certificate.dane is not None else None
            outcome = outcomes[certificate.name]
            if look is not None and outcome.next_check is not None:
                soonest = max(look, done + timedelta(seconds=1))
                outcomes[certificate.name] = replace(outcome, next_check=min(outcome.next_check, soonest))
        if self.fleet is not None and not dry_run:  # fleet integration: every node's state per certificate
            from certkeeper.store.fleet import PassResult

            self.fleet.record_pass([PassResult(c.name, self.home(c).readable_current(), outcomes[c.name].result.value,
                                               outcomes[c.name].detail) for c in certificates])
        if not dry_run:
            self.verified.save(prune=not names)
            self.clean_folders.save(prune=not names)
        if not names:
            self.known_versions.forget_untouched()
        return [outcomes[c.name] for c in certificates]

    def _take_on(self, certificate: CertificateConfig, locks: contextlib.ExitStack, now: datetime, *, force: bool,
                 dry_run: bool, stale: bool, pending: frozenset[str], stored: CertState | None) -> _Work | Outcome:
        """Decide about one certificate; a due one is locked, re-checked and handed back as work to do.
        ``stored``: its state row as read at the start of the pass (None: read it now)."""
        name = certificate.name
        home = self.home(certificate)
        state = stored or self.store.get_state(name) or CertState(name)
        state = self._refresh_renewal_info(certificate, home, state, now)
        seen = self._look(certificate, home)
        decision = self._decide(certificate, home, seen, state, now)
        needs_reload = state.reload_pending or stale
        if not (force or decision.due or needs_reload):
            self._clean_up_idle(certificate, home, pending)
            self._remember_decision(name, decision, known=state)
            self._keep_tlsa_in_step(certificate, dry_run=dry_run, now=now)
            return _waiting_out(name, seen, state, decision, budget=self._budget_waits.get(name, now) > now)
        try:
            locks.enter_context(self.store.lock(name, self.settings.lock_timeout.total_seconds()))
        except LockBusy as exc:
            return Outcome(name, Result.BUSY, str(exc), next_check=self._next_check(name, decision, state, now))
        except CertkeeperError as exc:  # its lock cannot be taken (a symbolic link, a folder in the way): this
            # certificate fails, with the path and the fix; the others go on.  Nothing was tried: no backoff.
            next_check = self._next_check(name, decision, state, now)
            self.bus.publish(RenewalFailed(now, name, str(exc), next_check))
            return Outcome(name, Result.FAILED, str(exc), next_check=next_check)
        self._clean_up(certificate, home)
        # Lock, then re-check: another certkeeper may have renewed it while we waited.  Only the state row and
        # the current link can have changed; decide again only if one did.
        fresh = self.store.get_state(name) or CertState(name)
        if fresh != state or home.link_text() != seen.link:
            state, seen = fresh, self._look(certificate, home)
            decision = self._decide(certificate, home, seen, state, now)
        work = _Work(certificate, home, seen.version, state=state, seen=seen, installed=seen.installed,
                     decision=decision)
        if force or decision.due:
            waiting = self._dane_gate(work, dry_run=dry_run, now=now)
            if waiting is not None:
                return replace(waiting, next_check=self._next_check(name, decision, state, now))
            return work
        if needs_reload:
            work.reload_only = True
            work.new = work.previous
            work.unrecorded = _install_unrecorded(state, work.new)
            return work
        return Outcome(name, Result.NOT_DUE, decision.reason, next_check=self._next_check(name, decision, state, now))

    def _clean_up(self, certificate: CertificateConfig, home: CertificateHome) -> None:
        """What an interrupted run left: ``.incoming-*`` folders (they hold a private key) and dns-01 values.

        Only the lock holder may: an .incoming folder or a published value may be another process's work.
        """
        for leftover in home.recover():
            log.warning("%s: removed %s left by an interrupted install", certificate.name, leftover)
        if not has_pending(self.settings.state_dir, certificate.name):
            return
        try:
            issuer = self.issuer_for(certificate.issuer)
            if isinstance(issuer, LeftoverRemover):
                for name in issuer.remove_leftovers(certificate.name):
                    log.warning("%s: removed the dns-01 values an interrupted order left at %s", certificate.name,
                                name)
        except CertkeeperError as exc:  # tried again by the next run; the order itself may still succeed
            log.warning("%s: %s", certificate.name, exc)

    def _clean_up_idle(self, certificate: CertificateConfig, home: CertificateHome, pending: frozenset[str]) -> None:
        """Clean up for a certificate with nothing due, too: under its lock, and only when something was left
        (``pending``: the certificates with dns-01 values left, listed once at the start of the pass)."""
        if not (certificate.name in pending or home.has_leftovers(self.clean_folders)):
            return
        try:
            with self.store.lock(certificate.name, self.settings.lock_timeout.total_seconds()):
                self._clean_up(certificate, home)
        except LockBusy:
            log.info("%s: leftovers stay for the lock holder to clean up", certificate.name)
        except CertkeeperError as exc:  # its lock cannot be taken: the leftovers wait, the pass goes on
            log.warning("%s: leftovers stay: %s", certificate.name, exc)

    def _next_check(self, name: str, decision: Decision, state: CertState, now: datetime) -> datetime:
        return next_check_with_reload(decision, _history(state), name=name, reload_owed=state.reload_pending,
                                      now=now)

    def _closing_check(self, work: _Work, now: datetime) -> datetime:
        """When to look again after the pass worked on ``work``: decided afresh (a pure call, nothing read) where
        the pass changed what is installed or stored."""
        assert work.outcome is not None and work.decision is not None and work.state is not None
        decision = work.decision
        if work.outcome.result not in {Result.BUSY, Result.DRY_RUN, Result.WAITING}:
            decision = decide_renewal(work.installed, self._wanted(work.config), _history(work.state), now=now,
                                      check_interval=self.settings.check_interval)
        name = work.config.name
        decision = wait_for_budget(decision, self._budget_waits.get(name), name=name, now=now)
        return self._next_check(name, decision, work.state, now)

    def rollback(self, name: str, to: str | None = None) -> Outcome:
        """Flip ``current`` back (to the previous version, or ``to``), reload and verify."""
        certificate = self.select([name])[0]
        home = self.home(certificate)
        with self.store.lock(name, self.settings.lock_timeout.total_seconds()):
            current, damaged = home.current_or_problem()
            versions = home.versions()  # the readable ones
            if to is not None:
                target = home.version(to)
            else:
                if current is not None:
                    older = [v for v in versions if v.id < current.id]
                else:  # what current names cannot be read (what rollback is for): the newest that can
                    named = (home.link_text() or "").rpartition("/")[2] if damaged else ""
                    older = [v for v in versions if damaged and v.id != named]
                if not older:
                    msg = (
                        f"certificate {name!r} has no version older than the current one "
                                          f"({current.id if current else 'none installed'}) to roll back to"
                    )
                    raise CertkeeperError(msg)
                target = older[-1]
            now = self.clock()
            work = _Work(certificate, home, current, target)
            home.activate(target)
            self._reload([work], now)
            result = self._verify([work])[name]
            if not result.ok:
                detail = "; ".join(s.describe() for s in result.wrong(target.fingerprints))
                raise VerificationFailed(name, target.id, f"rolled back to {target.id}", f"not served: {detail}")
            self.bus.publish(RolledBack(now, name, current.id if current else "", target.id, "by request"))
            self.store.add_renewal(RenewalRecord(name, now, "rollback", target.id, "", "by request"))
            return Outcome(name, Result.ROLLED_BACK, f"now serving {target.id}", target.id)

    def test_hooks(self, name: str) -> Outcome:
        """Run the reload hooks against the current certificate and verify every endpoint, renewing nothing."""
        certificate = self.select([name])[0]
        home = self.home(certificate)
        current = home.current()
        if current is None:
            msg = f"certificate {name!r} has never been installed; run `certkeeper renew {name}`"
            raise CertkeeperError(msg)
        with self.store.lock(name, self.settings.lock_timeout.total_seconds()):
            work = _Work(certificate, home, current, current)
            self._reload([work], self.clock())
            if work.hook_error:
                msg = f"certificate {name!r}: {work.hook_error}"
                raise CertkeeperError(msg)
            result = self._verify([work])[name]
        if not result.ok:
            detail = "; ".join(s.describe() for s in result.wrong(current.fingerprints))
            raise VerificationFailed(name, current.id, "hooks ran", detail)
        now = self.clock()
        self._record_verification(certificate, current, result, now)
        self._update_state(name, reload_pending=False)  # reloaded and verified: nothing owed any more
        return Outcome(name, Result.VERIFIED, f"{len(result.seen)} probe points serve {current.id}", current.id)

    # -- phases ------------------------------------------------------------------------------------------------

    def _issue_all(self, works: Sequence[_Work], *, dry_run: bool, now: datetime) -> None:
        if not works:
            return
        from concurrent.futures import ThreadPoolExecutor  # a pass with nothing to issue starts no thread

        # Joined when the block ends, not waited on one future at a time: each wait that ends wakes this thread,
        # which takes the GIL from the issuing threads (1,000 times in a pass of 1,000 certificates).
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="issue") as pool:
            futures = [pool.submit(self._issue, work, dry_run=dry_run, now=now) for work in works]
        for future in futures:
            future.result()  # _issue fails its certificate on any error; what escapes it is a bug, raised here

    def _issue(self, work: _Work, *, dry_run: bool, now: datetime) -> None:
        certificate = work.config
        self._budget_waits.pop(certificate.name, None)
        try:
            # Before ordering: a copy_to folder others can change fails the certificate with nothing installed.
            work.home.check_copy_targets(certificate.copy_to)
            issuer = self.issuer_for(certificate.issuer)
            roots = list(issuer.trust_anchors()) or _system_roots()

            def order() -> list[KeyPair]:
                pairs = []
                for key_type in certificate.key_types:
                    key, replaces = self._key_for(work, key_type.value, issuer.name)
                    issued = issuer.issue(IssueRequest(certificate.name, certificate.domains, key, key_type,
                                                       replaces=replaces, dry_run=dry_run))
                    pairs.append(KeyPair(key_type, key, issued.certificate, issued.chain, issued.signed_here))
                    self.bus.publish(CertificateIssued(now, certificate.name, key_type.value, issuer.name,
                                                       pki.serial_hex(issued.certificate),
                                                       pki.not_after(issued.certificate)))
                    for record_name, until in issued.persist_records_expiring:
                        self.bus.publish(PersistRecordExpiring(self.clock(), certificate.name, record_name, until))
                # Checked at the moment of the check, not the pass's now: a CA may issue with notBefore = the
                # moment of issue (Pebble does), which is after the pass began.
                check_pairs(certificate.name, pairs, certificate.domains, roots, now=self.clock(),
                            chains=self.chains)
                self._check_mta_sts(certificate, pairs)
                return pairs

            if self.fleet is not None and not dry_run:  # fleet integration: one node orders, the others install
                pairs = self.fleet.obtain(certificate, work.previous, order)
                check_pairs(certificate.name, pairs, certificate.domains, roots, now=self.clock(),
                            chains=self.chains)
                self._check_mta_sts(certificate, pairs)
            elif not dry_run:  # the order budget of a single host (certkeeper.store.budget)
                from certkeeper.store.budget import obtain_within_budget  # only when something is ordered

                pairs = obtain_within_budget(self.store, self.config.issuers.get(certificate.issuer), certificate,
                                             work.previous, order, now)
            else:
                pairs = order()
            if dry_run:
                serials = ", ".join(pki.serial_hex(p.certificate) for p in pairs)
                work.outcome = Outcome(certificate.name, Result.DRY_RUN,
                                       f"issued and checked {serials}; not installed")
                self.store.add_renewal(RenewalRecord(certificate.name, now, "dry-run", "", serials))
                return
            work.new = work.home.write_version(pairs, issuer=issuer.name, domains=certificate.domains, now=now)
        except OrderWaiting as exc:  # the order budget is spent: not a failure; not asked again before exc.go_at
            self._budget_waits[certificate.name] = exc.go_at
            work.outcome = Outcome(certificate.name, Result.WAITING, str(exc))
        except (LockBusy, FleetStoreDown) as exc:  # fleet integration: another node orders, or the fleet store
            work.outcome = Outcome(certificate.name, Result.BUSY, str(exc))  # is down: not a failure; look again
        except CertkeeperError as exc:
            self._fail(work, str(exc), now)
        except Exception as exc:  # a bug or an unexpected library error: fail this certificate, not the pass
            log.exception("%s: unexpected error while issuing", certificate.name)
            self._fail(work, f"unexpected error: {exc!r}", now)
        if work.new is not None and work.outcome is None:
            self._flip_early(work)

    def _owe_reloads(self, works: Sequence[_Work]) -> None:
        """Record the reload each of ``works`` will owe once flipped, all in one commit before any is issued.

        A flip is followed by a reload, and a pass killed in between must still reload: the reload owed is on
        record before the flip, which each issuing thread makes as soon as its version is written
        (:meth:`_flip_early`).  Recorded for the whole pass at once rather than by each thread before its flip (a
        commit per certificate, serialised on the store, was a tenth of a pass of 1,000 new certificates): a pass
        killed before some flip leaves those certificates a reload of what they serve, made by the next pass, and
        a certificate that ends the pass unflipped gets its row back (:meth:`_forgive_unflipped`).
        """
        owing = [w for w in works if not (w.state and w.state.reload_pending)]
        if not owing:
            return
        owed = self._update_states({w.config.name: {"reload_pending": True} for w in owing})
        for work in owing:
            work.state, work.owed_by_pass = owed[work.config.name], True

    def _forgive_unflipped(self, works: Sequence[_Work]) -> None:
        """The reload :meth:`_owe_reloads` recorded for a certificate that was not flipped after all (its order
        failed or waits, its hook could not run): nothing new is current, nothing is owed."""
        unflipped = [w for w in works if w.owed_by_pass and not w.flipped]
        if not unflipped:
            return
        rows = self._update_states({w.config.name: {"reload_pending": False} for w in unflipped})
        for work in unflipped:
            work.state = rows[work.config.name]

    def _flip_early(self, work: _Work) -> None:
        """Phase 4's flip, on the issuing thread as soon as the version is written, so that its fsync overlaps the
        other certificates' work (the reload owed was recorded before issuing: :meth:`_owe_reloads`).  A
        certificate whose hook cannot run is left unflipped, for phase 4 to fail."""
        if self._unrunnable_hook(work):
            return
        work.flip_error, work.flipped = self._flip(work), True

    def _check_mta_sts(self, certificate: CertificateConfig, pairs: Sequence[KeyPair]) -> None:
        """The MTA-STS guard, part of the install gate: a pair whose MX-facing names a sender enforcing the
        published policy would refuse is not installed (:mod:`certkeeper.mtasts.guard`); the old one stays."""
        if not self.config.mta_sts:
            return
        from certkeeper.mtasts.guard import guard_certificate, mx_certificates
        from certkeeper.mtasts.publish import load_state

        for mta in self.config.mta_sts.values():
            if certificate.name not in {c.name for c in mx_certificates(mta, self.config.certificates)}:
                continue
            state = load_state(self.settings.state_dir, mta.domain)
            published = state.publication.policy if state.publication else None
            for pair in pairs:
                names = pki.subject_alternative_names(pair.certificate)
                refusal = guard_certificate(certificate, names, mta.domain, published, state.policy_id or "")
                if refusal is not None:
                    raise InstallRefused(certificate.name, f"the {pair.key_type.value} certificate: {refusal}")

    def _key_for(self, work: _Work, key_type: str, issuer: str) -> tuple[pki.PrivateKey, x509.Certificate | None]:
        """A fresh key, or the installed one with ``reuse_key``; and the certificate being replaced (ARI)."""
        previous = work.previous
        pair = next((p for p in previous.pairs if p.key_type == key_type), None) if previous else None
        replaces = self._replaces(work, pair, issuer)
        if key_type in work.next_keys:  # DANE: the key whose TLSA records have been visible for two TTLs
            return work.next_keys[key_type], replaces
        if work.config.reuse_key and pair is not None:
            return work.home.load_pair_key(pair), replaces
        return pki.generate_key(KeyType(key_type)), replaces

    def _replaces(self, work: _Work, pair: InstalledPair | None, issuer: str) -> x509.Certificate | None:
        """The installed certificate, for ARI's ``replaces`` (RFC 9773 section 5): only one this issuer issued and
        that can be read.  A problem with it never blocks the renewal: the order goes without ``replaces``."""
        if pair is None or work.previous is None:
            return None
        if work.previous.issuer != issuer:
            log.info("%s: ordering without replaces: the installed certificate came from issuer %r, not %r",
                     work.config.name, work.previous.issuer, issuer)
            return None
        try:
            return work.home.load_pair_certificate(pair)
        except CertkeeperError as exc:
            log.warning("%s: ordering without replaces: %s", work.config.name, exc)
            return None

    def _install_reload_verify(self, works: list[_Work], now: datetime) -> None:
        for work in works:  # a hook that cannot run would leave the flip unreloaded: nothing is flipped for it
            problem = "" if work.flipped else self._unrunnable_hook(work)  # a flipped one was checked before
            if problem:
                self._fail(work, problem, now)
        works = [w for w in works if w.outcome is None]
        if not works:
            return
        # The reload is owed from before the flip until a verified reload: a crash or a failed hook in between
        # leaves it recorded, and the next pass reloads (and verifies) without renewing.  One commit for all those
        # not flipped on their issuing thread (which recorded it there, before the flip).
        owed = self._update_states({w.config.name: {"reload_pending": True} for w in works if not w.flipped})
        for work in works:
            work.state = owed.get(work.config.name, work.state)
        for work in works:  # not flipped on its issuing thread: its hook could not run then, and can now
            if not work.flipped and not work.reload_only and work.new is not None:
                work.flip_error, work.flipped = self._flip(work), True
        for work in works:
            assert work.new is not None
            if work.flipped:  # else a reload only
                if work.flip_error is not None:  # a full disk: the old pair stays current, the reload owed
                    self._fail(work, str(work.flip_error), now, reload_pending=True)
                    continue
                work.installed = _facts(work.new, key_matches=True)  # check_pairs held it before it was written
            if work.config.copy_to:  # a reload only copies again: the copy may be what a pass could not make
                try:
                    work.home.copy_to(work.new, work.config.copy_to)
                except (CertkeeperError, OSError) as exc:  # checked before ordering; a full disk, a race since
                    self._fail(work, f"{work.new.id} is installed but not copied ({_os_error(exc)}); the copy "
                               "and the reload are retried", now, reload_pending=True)
                    continue
            if work.flipped:
                self.bus.publish(CertificateInstalled(now, work.config.name, work.new.id))
        works = [w for w in works if w.outcome is None]
        self._reload(works, now)
        results = self._verify(works)
        wrong = [w for w in works if not results[w.config.name].ok]
        if wrong:
            log.warning("not served yet after reload: %s; reloading once more",
                        ", ".join(w.config.name for w in wrong))
            self._reload(wrong, now)
            results.update(self._verify(wrong))
        renewed = [w for w in works if self._conclude(w, results[w.config.name], now)]
        self._record_renewed(renewed, now)
        for work in works:  # a reload only keeps the TLSA records in step too, under the lock this pass holds:
            # retirement judges each key type by what every address serves, so one key type lagging (the reload
            # owed) does not hold back another's
            rollover = self._tlsa_out_of_step(work.config) if work.reload_only else None
            if rollover is not None:
                rollover.synchronise(now)

    @staticmethod
    def _flip(work: _Work) -> VersionWriteFailed | None:
        """Make the new version current; the failure that left the old one current, if any."""
        assert work.new is not None
        try:
            work.home.activate(work.new)
        except VersionWriteFailed as exc:
            return exc
        return None

    def _record_verification(self, certificate: CertificateConfig, version: Version, result: Verification,
                             now: datetime) -> None:
        """A verification is an observation: each endpoint's record says what it served just now, so ``status``
        does not show the previous certificate as stale until the next probe (issue 21.10)."""
        if not certificate.endpoints:  # nothing was looked at: no record to read or write
            return
        known = {(r.owner, r.endpoint): r for r in self.store.endpoints() if r.owner == certificate.name}
        first = version.pairs[0]
        for target in certificate.endpoints:
            seen = [s for s in result.seen if s.point.target.text == target.text]
            if not seen:
                continue
            looked = next((s for s in seen if s.point.sni), seen[0])
            before = known.get((certificate.name, target.text))
            fingerprint = first.fingerprint if first.fingerprint in looked.fingerprints else \
                next(iter(sorted(looked.fingerprints)), "")
            self.store.put_endpoint(EndpointRecord(
                owner=certificate.name, endpoint=target.text, at=now, status=looked.status, message=looked.message,
                fingerprint=fingerprint, not_after=first.not_after, stale=False,
                details=before.details if before else {}))

    def _unrunnable_hook(self, work: _Work) -> str:
        for key, references in (("reload", work.config.reload), ("deploy_hooks", work.config.deploy_hooks)):
            for reference in references:
                try:
                    resolve_hook(reference, self.settings.hooks_dir, self.config.path,
                                 f"certificates.{work.config.name}.{key}")
                except ConfigError as exc:
                    return str(exc)
        return ""

    def _conclude(self, work: _Work, result: Verification, now: datetime) -> bool:
        """The outcome of a certificate after its verification; True for a renewal that is left for
        :meth:`_record_renewed` to record (the pass's renewals in one commit)."""
        name = work.config.name
        assert work.new is not None
        if result.ok:
            self.bus.publish(CertificateVerified(now, name, work.new.id,
                                                 tuple(s.point.describe() for s in result.seen)))
            if work.hook_error:
                self._fail(work, work.hook_error, now, reload_pending=True)
                return False
            if work.reload_only:
                work.outcome = Outcome(name, Result.RELOADED, f"endpoints now serve {work.new.id}", work.new.id)
                if not work.unrecorded:
                    work.state = self._update_state(name, reload_pending=False)
                    return False
                log.info("%s: recording the renewal to %s, which the pass that installed it could not record",
                         name, work.new.id)
                return True  # the renewal's success, as that pass would have recorded it
            work.outcome = Outcome(name, Result.RENEWED, f"installed and verified {work.new.id}", work.new.id)
            self._record_verification(work.config, work.new, result, now)
            if work.dane is not None:  # served now: a new next key; current + next in DNS, the old key's removed
                work.dane.after_install(now)
            return True
        seen = "; ".join(s.describe() for s in result.wrong(work.new.fingerprints))
        if work.reload_only or work.previous is None or work.previous.id == work.new.id:
            self._fail(work, f"{work.new.id} is not served: {seen}", now, reload_pending=True)
            return False
        self._roll_back(work, seen, now)
        return False

    def _record_renewed(self, works: Sequence[_Work], now: datetime) -> None:
        """Each renewal's history row and state (nothing owed, no failures) in one commit, after every file of
        it is durable and it was verified; then the versions beyond ``keep_versions`` go."""
        if not works:
            return
        renewals = []
        for work in works:
            assert work.new is not None
            renewals.append(RenewalRecord(work.config.name, now, "success", work.new.id,
                                          ",".join(p.serial for p in work.new.pairs)))
        success = {"last_attempt_at": now, "last_success_at": now, "failures": 0, "last_error": "",
                   "reload_pending": False, "ari_start": None, "ari_end": None, "ari_retry_after": None}
        states = self._update_states({w.config.name: success for w in works}, renewals)
        for work in works:
            work.state = states[work.config.name]
            for removed in work.home.prune(self.settings.keep_versions):
                log.info("%s: removed old version %s", work.config.name, removed)

    def _roll_back(self, work: _Work, seen: str, now: datetime) -> None:
        name = work.config.name
        assert work.new is not None and work.previous is not None
        failed_version = work.new
        work.home.activate(work.previous)
        work.new = work.previous
        work.installed = work.seen.installed if work.seen else None
        self._reload([work], now)
        restored = self._verify([work])[name]
        after = "the previous certificate is served again" if restored.ok else \
            "and the previous certificate is NOT served either: " + \
            "; ".join(s.describe() for s in restored.wrong(work.previous.fingerprints))
        reason = f"{failed_version.id} was not served after two reloads ({seen}); rolled back to " \
                 f"{work.previous.id}, {after}"
        self.bus.publish(RolledBack(now, name, failed_version.id, work.previous.id, reason))
        self.store.add_renewal(RenewalRecord(name, now, "rollback", failed_version.id, "", reason))
        # The previous certificate served again: nothing owed; otherwise its reload is retried next pass.
        retry_at = self._bump_failures(work, reason, now, reload_pending=not restored.ok)
        work.outcome = Outcome(name, Result.ROLLED_BACK, reason, work.previous.id)
        self.bus.publish(RenewalFailed(now, name, reason, retry_at))

    def _reload(self, works: Iterable[_Work], now: datetime) -> None:
        """Run each distinct hook (program + environment) once for all the certificates it serves."""
        works = list(works)
        if not any(work.config.reload or work.config.deploy_hooks for work in works):
            return  # no hook to run: nor any to import (hooks brings the process runner)
        groups: dict[tuple[Path, tuple[tuple[str, str], ...]], list[_Work]] = defaultdict(list)
        for work in works:
            for reference in work.config.reload:
                path = resolve_hook(reference, self.settings.hooks_dir, self.config.path,
                                    f"certificates.{work.config.name}.reload")
                groups[(path, tuple(sorted(work.config.hook_env.items())))].append(work)
        from certkeeper.renewal.hooks import HookContext  # only when something is reloaded (and run_hook below)

        for (hook, env), members in groups.items():
            first = members[0]
            assert first.new is not None
            context = HookContext(
                name=first.config.name, domains=first.config.domains, version=first.new.id,
                cert_dir=first.home.current_link / _subdir(first.new), names=tuple(m.config.name for m in members),
                extra_env=dict(env),
            )
            self._run_hook(hook, context, members, now)
        for work in works:  # certbot-style deploy hooks: once per certificate and key type, as certbot runs them
            assert work.new is not None
            for reference in work.config.deploy_hooks:
                hook = resolve_hook(reference, self.settings.hooks_dir, self.config.path,
                                    f"certificates.{work.config.name}.deploy_hooks")
                for pair in work.new.pairs:
                    lineage = work.home.current_link / pair.directory.relative_to(work.new.path)
                    context = HookContext(name=work.config.name, domains=work.config.domains, version=work.new.id,
                                          cert_dir=lineage, extra_env=dict(work.config.hook_env))
                    self._run_hook(hook, context, [work], now)
        for work in works:  # what the hooks left of the files: one that removes or rewrites them fails it, and
            if (work.config.reload or work.config.deploy_hooks) and not work.hook_error:  # nothing usable is
                work.hook_error = self._files_after_hooks(work)  # installed: retried within minutes, not weeks
                if work.hook_error:
                    work.installed = None

    def _files_after_hooks(self, work: _Work) -> str:
        """Why the installed files are not as installed any more ("" when they are), once the hooks ran; a key
        they made readable by others is given its mode back (:meth:`CertificateHome.changed_files`).  Their
        hashes are recorded, so the next pass with nothing due does not read them again."""
        assert work.new is not None
        for pair in work.new.pairs:
            changed = work.home.changed_files(pair, self.verified)
            if changed:
                state = "differs from what was installed" if os.path.lexists(changed[0]) else "was removed"
                return (f"after the hooks ran, {changed[0]} {state}; the next pass installs a new pair (a hook must "
                        "only read the files)")
        return ""

    def _run_hook(self, hook: Path, context: HookContext, members: Sequence[_Work], now: datetime) -> None:
        from certkeeper.renewal.hooks import run_hook

        try:
            run_hook(hook, context, timeout=self.settings.hook_timeout.total_seconds())
        except HookFailed as exc:
            for member in members:
                member.hook_error = str(exc)
                self.bus.publish(ReloadHookFailed(now, member.config.name, str(hook), str(exc)))

    def _verify(self, works: Sequence[_Work]) -> dict[str, Verification]:
        # Imported here: a pass with nothing to verify (cron, nothing due, no endpoints) never loads the probe.
        from certkeeper.renewal.verify import Verification

        if not any(w.config.endpoints for w in works):  # nothing to look at: no event loop, no asyncio
            return {w.config.name: Verification(True, ()) for w in works}
        import asyncio

        from certkeeper.renewal.verify import probe_points, wait_until_served

        async def all_of() -> list[Verification]:
            return list(await asyncio.gather(*(
                wait_until_served(
                    probe_points(w.config.endpoints), w.new.fingerprints if w.new else frozenset(),
                    dual=len(w.config.key_types) > 1,
                    deadline=(w.config.verify_timeout or self.settings.verify_timeout).total_seconds(),
                    clock=self.clock,
                )
                for w in works
            )))

        return {w.config.name: v for w, v in zip(works, asyncio.run(all_of()), strict=True)}

    # -- DANE (RFC 7672): certkeeper.dane.rollover ---------------------------------------------------------------

    def _dane_for(self, certificate: CertificateConfig, home: CertificateHome) -> DaneRollover | None:
        if certificate.dane is None:
            return None
        from certkeeper.dane.rollover import DaneRollover
        from certkeeper.mailserver.config import server_process_lifetime

        return DaneRollover(certificate, home, self.config.issuers.get(certificate.issuer), self.bus.publish,
                            self.clock,
                            process_lifetime=lambda: server_process_lifetime(certificate.reload, certificate.hook_env),
                            store=self.store)

    def _dane_next_look(self, certificate: CertificateConfig) -> datetime | None:
        rollover = self._dane_for(certificate, self.home(certificate))
        return rollover.next_look() if rollover is not None else None

    def _dane_gate(self, work: _Work, *, dry_run: bool, now: datetime) -> Outcome | None:
        """A "waiting" outcome while the next key's TLSA records are not ready and the served certificate is
        safe; otherwise None, with the key to certify in ``work.next_keys``."""
        work.dane = None if dry_run else self._dane_for(work.config, work.home)
        if work.dane is None:
            return None
        try:
            gate = work.dane.gate(work.previous, now)
            if not gate.proceed:
                self._update_state(work.config.name, next_check_at=gate.retry_at, next_reason=gate.reason)
                return Outcome(work.config.name, Result.WAITING,
                               f"waiting for TLSA records to be visible: {gate.reason}")
            work.next_keys = work.dane.keys_for_renewal()
        except (CertkeeperError, OSError) as exc:  # an unreadable next key: fail this certificate, not the pass
            self._fail(work, f"DANE key rollover: {exc}", now)
            return work.outcome
        return None

    def _keep_tlsa_in_step(self, certificate: CertificateConfig, *, dry_run: bool, now: datetime) -> None:
        """Retry a TLSA publication or cleanup that failed, and retire the old key's records once every address
        serves the new key, without waiting for the next renewal (a certificate not due: its lock is taken)."""
        rollover = None if dry_run else self._tlsa_out_of_step(certificate)
        if rollover is None:
            return
        try:
            with self.store.lock(certificate.name, self.settings.lock_timeout.total_seconds()):
                rollover.synchronise(now)
        except LockBusy:
            log.info("%s: TLSA records left for the next pass: another certkeeper holds the lock", certificate.name)
        except CertkeeperError as exc:  # its lock cannot be taken: the records wait, the pass goes on
            log.warning("%s: TLSA records left for the next pass: %s", certificate.name, exc)

    def _tlsa_out_of_step(self, certificate: CertificateConfig) -> DaneRollover | None:
        """The certificate's DANE rollover when its TLSA records want a step (a retry, a retirement), else None."""
        rollover = self._dane_for(certificate, self.home(certificate)) if certificate.dane is not None else None
        return rollover if rollover is not None and rollover.out_of_step() else None

    # -- observation and bookkeeping ---------------------------------------------------------------------------

    def _refresh_renewal_info(self, certificate: CertificateConfig, home: CertificateHome, state: CertState,
                              now: datetime) -> CertState:
        """Ask the CA for its renewal window (ARI) when the last answer's Retry-After has passed; the state after."""
        if state.ari_retry_after is not None and now < state.ari_retry_after:
            return state
        if self.config.issuers[certificate.issuer].type != "acme":  # only ACME CAs publish windows (RFC 9773):
            return state  # building another issuer here would only cost time (the internal CA's imports, keys)
        current = home.readable_current()  # nothing usable installed: nothing to ask about (the pass reports it)
        if current is None or current.issuer != certificate.issuer:  # a CA has no window for another CA's
            return state
        try:
            issuer = self.issuer_for(certificate.issuer)
            if not isinstance(issuer, RenewalInfoSource):
                return state
            window = issuer.renewal_window(home.load_pair_certificate(current.pairs[0]), now)
        except CertkeeperError as exc:
            # The CA refused (it does not know this certificate): skip ARI for it until the next certificate.
            # Unreachable or busy (CaUnavailable), or anything else: ask again next pass.
            refused = isinstance(exc, IssuanceError) and not isinstance(exc, CaUnavailable)
            log.warning("%s: no renewal information from the CA: %s%s", certificate.name, exc,
                        "; not asking again for this certificate" if refused else "")
            return self._update_state(certificate.name, known=state, ari_retry_after=current.not_after) \
                if refused else state
        if window is None:
            return state
        return self._update_state(certificate.name, ari_start=window.start, ari_end=window.end,
                                  ari_retry_after=window.retry_after)

    def _fail(self, work: _Work, error: str, now: datetime, *, reload_pending: bool | None = None) -> None:
        name = work.config.name
        retry_at = self._bump_failures(work, error, now, reload_pending=reload_pending)
        self.store.add_renewal(RenewalRecord(name, now, "failure", work.new.id if work.new else "", "", error))
        work.outcome = Outcome(name, Result.FAILED, error)
        self.bus.publish(RenewalFailed(now, name, error, retry_at))

    def _bump_failures(self, work: _Work, error: str, now: datetime, *, reload_pending: bool | None = None) -> datetime:
        """Count a failure; returns when it will be retried.  ``reload_pending`` None keeps what is recorded."""
        name = work.config.name
        state = self.store.get_state(name) or CertState(name)
        state = replace(state, failures=state.failures + 1, last_attempt_at=now, last_error=error,
                        reload_pending=state.reload_pending if reload_pending is None else reload_pending,
                        failed_inputs=self._inputs(work.config))
        self.store.put_state(state)
        decision = decide_renewal(work.installed, self._wanted(work.config), _history(state), now=now,
                                  check_interval=self.settings.check_interval)
        work.state = self._remember_decision(name, decision)
        return decision.renew_at

    def _remember_decision(self, name: str, decision: Decision, *, known: CertState | None = None) -> CertState:
        return self._update_state(name, known=known, next_check_at=decision.renew_at, next_reason=decision.reason)

    def _update_states(self, changes: Mapping[str, Mapping[str, object]],
                       renewals: Sequence[RenewalRecord] = ()) -> dict[str, CertState]:
        """:meth:`_update_state` for several certificates (each row read again before it is written), with
        ``renewals``, in one transaction; the rows after."""
        after: dict[str, CertState] = {}
        changed = []
        read: Callable[[str], CertState | None] = self.store.get_state
        if len(changes) > 1 and len(changes) * 4 >= len(self.config.certificates):
            # Most of the rows: all in one query (a row of it costs a quarter of a query for one row)
            rows = {state.name: state for state in self.store.states()}
            read = rows.get
        for name, fields in changes.items():
            state = read(name) or CertState(name)
            after[name] = replace(state, **fields)
            if after[name] != state:
                changed.append(after[name])
        if changed or renewals:
            self.store.put_states(changed, renewals)
        return after

    def _update_state(self, name: str, *, known: CertState | None = None, **changes: object) -> CertState:
        """Change some fields of the stored row.  Read again before writing (another process may have changed
        other fields), but not when the row as ``known`` in this pass already holds the changes."""
        if known is not None and all(getattr(known, field) == value for field, value in changes.items()):
            return known  # the row as known holds the changes already (what replace() and == would find)
        state = self.store.get_state(name) or CertState(name)
        changed = replace(state, **changes)
        if changed != state:  # a pass with nothing due writes nothing: no commit, no fsync per certificate
            self.store.put_state(changed)
        return changed


def _dane_watch(certificate: CertificateConfig, target: Target, issuer: IssuerConfig | None) -> DaneWatch | None:
    if certificate.dane is None:
        return None
    # The DANE judge brings dnspython and the prober: only for certificates with DANE (a third of `renew`'s start).
    from certkeeper.dane.observe import dane_watch_for

    return dane_watch_for(certificate, target, issuer)


def _waiting_out(name: str, seen: _Seen, state: CertState, decision: Decision, *, budget: bool) -> Outcome:
    """Nothing to do now: not due; waiting for the order budget (``budget``); or, with nothing usable installed,
    a failure waiting out its backoff (still a failure: ``renew`` exits non-zero while nothing is installed)."""
    if budget:
        return Outcome(name, Result.WAITING, decision.reason, next_check=decision.next_check)
    if seen.installed is None:
        return Outcome(name, Result.FAILED, f"{decision.reason}; last error: {state.last_error or 'unknown'}",
                       next_check=decision.next_check)
    return Outcome(name, Result.NOT_DUE, decision.reason, next_check=decision.next_check)


def _os_error(exc: Exception) -> str:
    """An OSError as "path: reason" (its repr names the errno); anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _history(state: CertState, *, inputs_changed: bool = False) -> History:
    return History(state.failures, state.last_attempt_at, state.ari_start, state.ari_end, inputs_changed)


def _install_unrecorded(state: CertState, version: Version | None) -> bool:
    """Whether ``version`` is owed a reload because the pass that installed it stopped between the flip and the
    record of its success (killed, or its state store locked past ``busy_timeout``): the reload owed is written
    before the flip, and a recorded success is never older than the version it installed."""
    if version is None or not state.reload_pending:
        return False
    return state.last_success_at is None or state.last_success_at < version.created_at


def _facts(version: Version, *, key_matches: bool) -> Installed:
    first = version.pairs[0]
    return Installed(first.fingerprint, version.not_before, version.not_after, version.domains,
                     tuple(p.key_type for p in version.pairs), key_matches)


def _pair_matches(home: CertificateHome, version: Version, pair: InstalledPair, verified: VerifiedFiles) -> bool:
    """Whether the pair's key matches its certificate.

    The install gate (:func:`certkeeper.store.versions.check_pairs`) checked that before ``version.json`` was written
    last into the folder, with each file's size and SHA-256: files unchanged since are trusted, so a pass with
    nothing due loads no keys (an RSA key costs milliseconds); a changed, missing or truncated one raises
    :class:`InputError` naming it.  Versions written before the hashes were recorded fall back to mtimes: anything
    changed afterwards is loaded and compared.
    """
    if pair.files:  # sizes and hashes recorded at install: any change to any file a daemon reads is seen
        changed = home.changed_files(pair, verified)
        if changed:
            raise InputError(changed[0], "changed since it was installed (size or SHA-256 differs from version.json)")
        return True
    try:
        written = (version.path / "version.json").stat().st_mtime_ns
        if all(path.stat().st_mtime_ns <= written for path in (pair.privkey, pair.fullchain)):
            return True
    except OSError:
        pass  # loading below says what is wrong, in words
    return pki.key_matches(home.load_pair_key(pair), home.load_pair_certificate(pair))


def _subdir(version: Version) -> str:
    first = version.pairs[0].directory
    return "" if first == version.path else first.name


@functools.cache
def _system_roots() -> list[x509.Certificate]:
    """The system trust store, for issuers whose roots are public (loaded once per process)."""
    from certkeeper.probe import load_trust_anchors

    return load_trust_anchors(None)[0]
