"""Looking at endpoints: probe what managed and watched endpoints serve, remember it, say what changed.

Used by every pass (``renew`` and the daemon's periodic probes).  A managed endpoint serving something other
than ``current`` is stale; an endpoint that stops answering TLS or starts serving an invalid certificate is
failed; one that comes back is recovered.  Each of those becomes a typed event; the store keeps the last
observation of every endpoint for ``status``, metrics and the next comparison.  Endpoints of certificates with
``dane`` are also judged against their TLSA records (:mod:`certkeeper.dane.observe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper.events import EndpointFailed, EndpointRecovered, Event, ServedCertificateStale
from certkeeper.store import EndpointRecord, Store
from certkeeper.targets import Target
from certkeeper.values import frozen, replace

if TYPE_CHECKING:
    from certkeeper.dane.judge import DaneOutcome, LookupResult
    from certkeeper.dane.observe import DaneWatch
    from certkeeper.probe import ProbeResult


@frozen
class Watched:
    """One endpoint to look at, and what it should serve when certkeeper manages its certificate."""

    owner: str
    target: Target
    expected: frozenset[str] | None = None
    dual: bool = False
    ca_file: Path | None = None
    servername: str | None = None
    issuer_roots: tuple[Path, ...] = ()  # managed: the issuer's roots (issuers.base.root_files), trusted with ca_file
    crl_files: tuple[Path, ...] = ()  # managed internal-CA certificates: the CA's CRL (issuers.base.crl_files)
    dane: DaneWatch | None = None  # TLSA records to judge the served certificate against (certkeeper.dane.observe)


@frozen
class Observation:
    watched: Watched
    result: ProbeResult
    stale: bool
    dane: DaneOutcome | None = None


def observe(items: Sequence[Watched], *, now: datetime, timeout: float = 10.0,
            concurrency: int = 50) -> list[Observation]:
    """Probe every item, grouped by the options they share, so contexts and trust are built once a group."""
    # The probe (pyOpenSSL, asyncio) is imported only when there is something to look at.
    from certkeeper.probe import ProbeOptions, probe_sync

    groups: dict[tuple[bool, Path | None, tuple[Path, ...], tuple[Path, ...], str | None, frozenset[str] | None],
                 list[Watched]] = {}
    for item in items:
        key = (item.dual, item.ca_file, item.issuer_roots, item.crl_files, item.servername, item.expected)
        groups.setdefault(key, []).append(item)
    observations: dict[int, Observation] = {}
    for (dual, ca_file, issuer_roots, crl_files, servername, expected), members in groups.items():
        options = ProbeOptions(timeout=timeout, ca_file=ca_file, issuer_roots=issuer_roots, crl_files=crl_files,
                               servername=servername, key_type="all" if dual else None,
                               expected_fingerprints=expected)
        results = probe_sync([m.target for m in members], options, now=now, concurrency=concurrency)
        for member, result in zip(members, results, strict=True):
            observations[id(member)] = Observation(member, result, _is_stale(member, result))
    ordered = [observations[id(item)] for item in items]
    if any(item.dane is not None for item in items):
        ordered = observe_dane(ordered, now=now, timeout=timeout, concurrency=concurrency)
    return ordered


def _is_stale(item: Watched, result: ProbeResult) -> bool:
    if item.expected is None:
        return False
    served = {s.fingerprint_sha256 for s in result.served or ((result.certificate,) if result.certificate else ())}
    return bool(served) and not item.expected <= served


def record(store: Store, observations: Sequence[Observation], *, now: datetime) -> list[Event]:
    """Remember each observation and return the events its change from the previous one means."""
    previous = {(r.owner, r.endpoint): r for r in store.endpoints()}
    events: list[Event] = []
    for observation in observations:
        item, result = observation.watched, observation.result
        before = previous.get((item.owner, item.target.text))
        leaf = result.certificate
        store.put_endpoint(EndpointRecord(
            owner=item.owner, endpoint=item.target.text, at=now, status=result.status, message=result.message,
            fingerprint=leaf.fingerprint_sha256 if leaf else "", not_after=leaf.not_after if leaf else None,
            stale=observation.stale, details=_details(observation),
        ))
        if observation.dane is not None:
            from certkeeper.dane.observe import tlsa_events

            events += tlsa_events(item.owner, item.target.text, observation.dane,
                                  before.details.get("dane") if before else None, now)
        if observation.stale:
            served = ",".join(sorted({s.fingerprint_sha256 for s in result.served} or
                                     ({leaf.fingerprint_sha256} if leaf else set())))
            events.append(ServedCertificateStale(now, item.owner, item.target.text, served,
                                                 ",".join(sorted(item.expected or ()))))
        failing = result.status in ("CRITICAL", "UNKNOWN") and not observation.stale
        was_failing = before is not None and before.status in ("CRITICAL", "UNKNOWN") and not before.stale
        if failing and not was_failing:
            events.append(EndpointFailed(now, item.owner, item.target.text, result.status, result.message))
        elif was_failing and not failing:
            events.append(EndpointRecovered(now, item.owner, item.target.text, result.message))
    return events


def _details(observation: Observation) -> dict[str, Any]:
    """The probe's JSON, with the DANE verdict under ``dane`` when there is one."""
    from certkeeper.probe import result_to_json

    details = result_to_json(observation.result)
    if observation.dane is not None:
        details["dane"] = observation.dane.to_json()
    return details


# -- DANE: a probe without SNI, TLSA lookups, the verdict of the one TLSA judge (certkeeper.dane.judge) ----


def observe_dane(observations: Sequence[Observation], *, now: datetime, timeout: float,
                 concurrency: int) -> list[Observation]:
    """``observations`` with a DANE verdict on those whose :class:`Watched` has a :class:`DaneWatch`."""
    from certkeeper.dane.judge import WITH_SNI, WITHOUT_SNI, judge_tlsa, look_up, served_view
    from certkeeper.probe import ProbeOptions, probe_sync

    watched = [o for o in observations if o.watched.dane is not None]
    if not watched:
        return list(observations)
    groups: dict[tuple[bool, Path | None, tuple[Path, ...], str | None], list[Observation]] = {}
    for observation in watched:
        item = observation.watched
        if item.dane is not None and item.dane.without_sni:
            groups.setdefault((item.dual, item.ca_file, item.issuer_roots, item.servername), []).append(observation)
    without_sni: dict[int, ProbeResult] = {}
    for (dual, ca_file, issuer_roots, servername), members in groups.items():
        options = ProbeOptions(timeout=timeout, ca_file=ca_file, issuer_roots=issuer_roots, servername=servername,
                               sni=False, key_type="all" if dual else None)
        results = probe_sync([o.watched.target for o in members], options, now=now, concurrency=concurrency)
        without_sni.update((id(o), r) for o, r in zip(members, results, strict=True))
    answers: dict[tuple[str, str | None], LookupResult] = {}
    judged: dict[int, DaneOutcome] = {}
    for observation in watched:
        watch = observation.watched.dane
        assert watch is not None
        for name in watch.names:
            if (name, watch.resolver) not in answers:
                answers[(name, watch.resolver)] = look_up(name, watch.resolver, timeout)
        views = [served_view(WITH_SNI, observation.result)]
        if id(observation) in without_sni:
            views.append(served_view(WITHOUT_SNI, without_sni[id(observation)]))
        judged[id(observation)] = judge_tlsa([answers[(n, watch.resolver)] for n in watch.names], views)
    return [replace(o, dane=judged.get(id(o))) for o in observations]
