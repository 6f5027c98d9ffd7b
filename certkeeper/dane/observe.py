"""DANE in every pass: does what a managed endpoint presents match its published TLSA records?

:mod:`certkeeper.renewal.observe` probes the endpoints; for certificates with ``dane`` configured, endpoints on one of
``dane.ports`` are also judged the way a DANE-validating sending MTA judges them (RFC 7672 section 2.2): look up
``_<port>._tcp.<MX host>`` TLSA and require the presented chain to match one record.  A mismatch is RFC 8460's
``tlsa-invalid``, and DANE senders defer mail to that server until it is fixed.

Many senders send no SNI on port 25 (RFC 7672 requires it of DANE senders only), so an SMTP (STARTTLS)
endpoint on a DANE port is probed once more without SNI; a server presenting another certificate then is judged
on that one too.

The TLSA records are asked of the certificate's DNS server (:func:`certkeeper.dane.publish.dns_settings`, where the
rollover publishes them), or of the system resolver when there is none.  Whether the answer was DNSSEC-validated
(the AD bit) is recorded as the resolver said it; a primary that is not a validating resolver says "no".

Pure judgement (:func:`judge_tlsa`, :func:`tlsa_events`) with the lookups and the extra probe around it
(:func:`observe_dane`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certkeeper.config import CertificateConfig, IssuerConfig
from certkeeper.dane.records import DANE_EE, Presented, TlsaRecord, match_presented, record_names
from certkeeper.events import Event, TlsaMatchRecovered, TlsaMismatchObserved
from certkeeper.targets import Target

# RFC 8460 section 4.3.2 result types where one fits (as ``certkeeper check --dane`` reports them).
TLSA_VALID = "tlsa-valid"
TLSA_INVALID = "tlsa-invalid"
TLSA_MISSING = "tlsa-missing"
TLSA_LOOKUP_FAILED = "tlsa-lookup-failed"
NOT_CHECKED = "not-checked"

WITH_SNI = "with SNI"
WITHOUT_SNI = "without SNI"


@dataclass(frozen=True)
class DaneWatch:
    """What to look up for one endpoint: its TLSA names, where to ask, and whether to probe without SNI too."""

    names: tuple[str, ...]
    resolver: str | None
    without_sni: bool


def dane_watch_for(certificate: CertificateConfig, target: Target, issuer: IssuerConfig | None) -> DaneWatch | None:
    """The DANE look of a managed endpoint; None when the certificate has no ``dane`` or the port is not one
    of ``dane.ports``.  The TLSA base domain is the host connected to (RFC 7672 section 2.2.3); an endpoint
    written as an address stands for each of the rollover's hosts (``dane.hosts``, default the domains)."""
    dane = certificate.dane
    if dane is None or target.port not in dane.ports:
        return None
    from certkeeper.dane.publish import dns_settings  # dnspython only for certificates with DANE

    hosts = (dane.hosts or certificate.domains) if target.is_ip_literal else (target.host,)
    names = tuple(record_names(hosts, [target.port]))
    if not names:
        return None
    settings = dns_settings(dane, issuer)
    return DaneWatch(names, settings.server if settings else None, without_sni=target.protocol == "smtp")


@dataclass(frozen=True)
class PresentedChain:
    """A presented leaf and the CA certificates sent above it; ``above`` is None when the probe kept only the
    leaf (the second key type of a dual-certificate server), so DANE-TA records cannot be judged for it."""

    leaf: Presented
    above: tuple[Presented, ...] | None


@dataclass(frozen=True)
class ServedView:
    """What the handshakes of one kind presented: one chain per key type."""

    view: str  # WITH_SNI or WITHOUT_SNI
    chains: tuple[PresentedChain, ...]


@dataclass(frozen=True)
class LookupResult:
    """One TLSA name's answer, or the error of asking for it."""

    name: str
    records: frozenset[TlsaRecord] = frozenset()
    authenticated: bool = False
    resolver: str = ""
    error: str = ""


@dataclass(frozen=True)
class Mismatch:
    """A presented leaf that no record at ``name`` matches, and on which handshakes it was presented."""

    name: str
    spki_sha256: str
    views: tuple[str, ...]
    published: tuple[str, ...]  # the RDATA at ``name``


@dataclass(frozen=True)
class DaneOutcome:
    """The DANE verdict on one endpoint, as stored in its ``details["dane"]``."""

    status: str
    message: str
    lookups: tuple[LookupResult, ...] = ()
    views: tuple[ServedView, ...] = ()
    mismatches: tuple[Mismatch, ...] = ()

    @property
    def dnssec_validated(self) -> bool:
        answered = [lookup for lookup in self.lookups if lookup.records]
        return bool(answered) and all(lookup.authenticated for lookup in answered)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "dnssec_validated": self.dnssec_validated,
            "lookups": [{"name": lookup.name, "records": sorted(r.rdata for r in lookup.records),
                         "authenticated": lookup.authenticated, "resolver": lookup.resolver,
                         "error": lookup.error} for lookup in self.lookups],
            "served": [{"view": view.view, "spki_sha256": [c.leaf.spki_sha256 for c in view.chains]}
                       for view in self.views],
            "mismatches": [{"name": m.name, "spki_sha256": m.spki_sha256, "views": list(m.views),
                            "published": list(m.published)} for m in self.mismatches],
        }


def judge_tlsa(lookups: Sequence[LookupResult], views: Sequence[ServedView]) -> DaneOutcome:
    """Pure: the verdict of every presented leaf against every TLSA name's records.

    ``tlsa-invalid`` when a name has records and a leaf matches none of them (DANE-EE against the leaf, DANE-TA
    against the CA certificates sent above it: :func:`certkeeper.dane.records.match_presented`); otherwise
    ``tlsa-lookup-failed``, ``tlsa-missing`` (no records: senders fall back to opportunistic TLS) or
    ``tlsa-valid``.  Records of matching types the probe cannot check (not SHA-256) are never a mismatch.
    """
    if not any(view.chains for view in views):
        return DaneOutcome(NOT_CHECKED, "no certificate was presented", tuple(lookups), tuple(views))
    found: dict[tuple[str, str], Mismatch] = {}
    for lookup in lookups:
        published = tuple(sorted(r.rdata for r in lookup.records))
        for view in views:
            for chain in view.chains:
                records = [r for r in lookup.records if chain.above is not None or r.usage == DANE_EE]
                match = match_presented(records, chain.leaf, chain.above or ())
                if match.matched or len(match.unchecked) == len(records):
                    continue
                key = (lookup.name, chain.leaf.spki_sha256)
                before = found.get(key)
                found[key] = Mismatch(lookup.name, chain.leaf.spki_sha256,
                                      (*before.views, view.view) if before else (view.view,), published)
    mismatches = tuple(found.values())
    if mismatches:
        first = mismatches[0]
        message = (f"no TLSA record at {first.name} matches the presented certificate (SPKI sha256 "
                   f"{first.spki_sha256}, {' and '.join(first.views)}); DANE senders defer mail")
        return DaneOutcome(TLSA_INVALID, message, tuple(lookups), tuple(views), mismatches)
    failed = [lookup for lookup in lookups if lookup.error]
    if failed:
        return DaneOutcome(TLSA_LOOKUP_FAILED, failed[0].error, tuple(lookups), tuple(views))
    empty = [lookup for lookup in lookups if not lookup.records]
    if empty:
        return DaneOutcome(TLSA_MISSING, f"no TLSA records at {empty[0].name} (from {empty[0].resolver})",
                           tuple(lookups), tuple(views))
    validated = "DNSSEC-validated" if all(lookup.authenticated for lookup in lookups) else "not DNSSEC-validated"
    return DaneOutcome(TLSA_VALID, f"the presented certificate matches the TLSA records at "
                                   f"{', '.join(lookup.name for lookup in lookups)} ({validated})",
                       tuple(lookups), tuple(views))


def tlsa_events(owner: str, endpoint: str, outcome: DaneOutcome | None, previous: Mapping[str, Any] | None,
                now: datetime) -> list[Event]:
    """Pure: the events of one endpoint's verdict, given the previous one stored (``details["dane"]``).

    A mismatch is reported on every pass it lasts (the alerts de-duplicate); a match after anything but a match
    is a recovery, since a lookup failure or a closed port in between says nothing about the records.
    """
    if outcome is None:
        return []
    if outcome.mismatches:
        return [TlsaMismatchObserved(now, owner, endpoint, m.name, m.spki_sha256, m.published,
                                     ", ".join(m.views), outcome.dnssec_validated) for m in outcome.mismatches]
    before = previous.get("status") if previous else None
    if outcome.status == TLSA_VALID and before not in (None, TLSA_VALID):
        return [TlsaMatchRecovered(now, owner, endpoint, outcome.message)]
    return []
