"""The one TLSA judge: does what a server presents match its TLSA records, as a DANE sender would judge it?

RFC 7672 section 2.2: a sending MTA looks up ``_<port>._tcp.<MX host>`` TLSA, uses the records only when its
resolver validated them with DNSSEC, and then requires the presented chain to match one usable record.  Many
senders send no SNI on port 25 (RFC 7672 asks it of DANE senders only), so a server that presents another
certificate without SNI breaks for them: SMTP targets are judged both ways.

Two callers, one verdict (:func:`judge_tlsa`, pure): the daemon's observation of managed endpoints
(:mod:`certkeeper.renewal.observe`, events by :mod:`certkeeper.dane.observe`) and ``certkeeper check --dane``
(:func:`check_dane`, which turns the verdict into probe findings).  The result codes are RFC 8460's where one fits
(section 4.3.2), defined here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from certkeeper.dane.publish import lookup_tlsa
from certkeeper.dane.records import DANE_EE, Presented, TlsaRecord, match_presented, record_names
from certkeeper.errors import TlsaDnsError
from certkeeper.probe.engine import probe_sync
from certkeeper.probe.judge import problem_message
from certkeeper.probe.result import Finding, ProbeOptions, ProbeResult, worst_status
from certkeeper.values import frozen, replace

# RFC 8460 section 4.3.2 result types where one fits; the others name what certkeeper could not judge.
TLSA_VALID = "tlsa-valid"
TLSA_INVALID = "tlsa-invalid"  # no TLSA record matches the presented chain: DANE senders defer mail
TLSA_MISSING = "tlsa-missing"
TLSA_LOOKUP_FAILED = "tlsa-lookup-failed"
DNSSEC_NOT_VALIDATED = "dnssec-not-validated"
NOT_CHECKED = "not-checked"

WITH_SNI = "with SNI"
WITHOUT_SNI = "without SNI"


@frozen
class PresentedChain:
    """A presented leaf and the CA certificates sent above it; ``above`` is None when the probe kept only the
    leaf (the second key type of a dual-certificate server), so DANE-TA records cannot be judged for it."""

    leaf: Presented
    above: tuple[Presented, ...] | None


@frozen
class ServedView:
    """What the handshakes of one kind presented: one chain per key type."""

    view: str  # WITH_SNI or WITHOUT_SNI
    chains: tuple[PresentedChain, ...]


@frozen
class LookupResult:
    """One TLSA name's answer, or the error of asking for it."""

    name: str
    records: frozenset[TlsaRecord] = frozenset()
    authenticated: bool = False
    resolver: str = ""
    error: str = ""
    rcode: str = "NOERROR"


@frozen
class Mismatch:
    """A presented leaf that no record at ``name`` matches, and on which handshakes it was presented."""

    name: str
    spki_sha256: str
    views: tuple[str, ...]
    published: tuple[str, ...]  # the RDATA at ``name``


@frozen
class DaneOutcome:
    """The DANE verdict on one endpoint, as stored in its ``details["dane"]``."""

    status: str
    message: str
    lookups: tuple[LookupResult, ...] = ()
    views: tuple[ServedView, ...] = ()
    mismatches: tuple[Mismatch, ...] = ()
    unchecked: tuple[TlsaRecord, ...] = ()  # records of a matching type the probe cannot check (not SHA-256)

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
            "unchecked": [{"name": r.name, "rdata": r.rdata} for r in self.unchecked],
        }


def judge_tlsa(lookups: Sequence[LookupResult], views: Sequence[ServedView]) -> DaneOutcome:
    """Pure: the verdict of every presented leaf against every TLSA name's records.

    ``tlsa-invalid`` when a name has records and a leaf matches none of them (DANE-EE against the leaf, DANE-TA
    against the CA certificates sent above it: :func:`certkeeper.dane.records.match_presented`); otherwise
    ``tlsa-lookup-failed``, ``tlsa-missing`` (no records: senders fall back to opportunistic TLS) or
    ``tlsa-valid``.  Records of matching types the probe cannot check (not SHA-256) are never a mismatch: they
    are listed in :attr:`DaneOutcome.unchecked`, for a warning (:func:`outcome_findings`).
    """
    outcome = _judge(lookups, views)
    unchecked = sorted({r for lookup in lookups for r in match_presented(lookup.records, _NOBODY, ()).unchecked})
    return replace(outcome, unchecked=tuple(unchecked)) if unchecked else outcome


_NOBODY = Presented("", "")


def _judge(lookups: Sequence[LookupResult], views: Sequence[ServedView]) -> DaneOutcome:
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
        return DaneOutcome(TLSA_MISSING, f"no TLSA records at {empty[0].name} ({empty[0].rcode} from "
                                         f"{empty[0].resolver})",
                           tuple(lookups), tuple(views))
    validated = "DNSSEC-validated" if all(lookup.authenticated for lookup in lookups) else "not DNSSEC-validated"
    return DaneOutcome(TLSA_VALID, f"the presented certificate matches the TLSA records at "
                                   f"{', '.join(lookup.name for lookup in lookups)} ({validated})",
                       tuple(lookups), tuple(views))


def served_view(view: str, result: ProbeResult) -> ServedView:
    """What one probe presented: each leaf (one per key type), with the CA certificates above it for the first
    handshake's leaf, the only one whose whole chain the probe keeps."""
    leaves = result.served or ((result.certificate,) if result.certificate else ())
    above = tuple(Presented(s.spki_sha256, s.fingerprint_sha256) for s in result.chain[1:])
    return ServedView(view, tuple(
        PresentedChain(Presented(s.spki_sha256, s.fingerprint_sha256), above if s == result.certificate else None)
        for s in leaves))


def look_up(name: str, resolver: str | None, timeout: float = 5.0) -> LookupResult:
    """The TLSA records at ``name`` from ``resolver`` (default the system's), or the error of asking."""
    try:
        answer = lookup_tlsa(name, resolver, timeout=timeout)
    except TlsaDnsError as exc:
        return LookupResult(name, error=str(exc), resolver=resolver or "")
    return LookupResult(answer.name, answer.records, answer.authenticated, answer.resolver, rcode=answer.rcode)


# -- check --dane: the verdict as probe findings --------------------------------------------------------------


def check_dane(results: Sequence[ProbeResult], options: ProbeOptions, *, now: datetime,
               resolver: str | None, concurrency: int = 50) -> list[ProbeResult]:
    """``results`` with DANE findings added; SMTP (STARTTLS) targets are probed once more without SNI."""
    smtp = [r for r in results if r.target.protocol == "smtp"]
    without_sni = probe_sync([r.target for r in smtp], replace(options, sni=False), now=now,
                             concurrency=concurrency)
    unsent = dict(zip([id(r) for r in smtp], without_sni, strict=True))
    lookups: dict[str, LookupResult] = {}
    judged = []
    for result in results:
        host = options.servername or result.target.host
        findings = list(result.findings)
        if result.target.is_ip_literal and not options.servername:
            findings.append(Finding(TLSA_MISSING, "WARNING", f"no host name to look up TLSA records for "
                                                             f"{result.target.address}: give --servername"))
        else:
            [name] = record_names([host], [result.target.port])
            if name not in lookups:
                lookups[name] = look_up(name, resolver, options.timeout)
            views = [served_view(WITH_SNI, result)]
            other = unsent.get(id(result))
            if other is not None and other.certificate is None:
                findings += [Finding(f.code, f.severity, f"[no SNI] {f.message}") for f in other.findings
                             if f.severity != "INFO"]
            elif other is not None:
                views.append(served_view(WITHOUT_SNI, other))
            findings += outcome_findings(judge_tlsa([lookups[name]], views))
        judged.append(replace(result, findings=tuple(findings), status=worst_status([f.severity for f in findings]),
                              message=problem_message(findings, result.certificate)))
    return judged


def outcome_findings(outcome: DaneOutcome) -> list[Finding]:
    """Pure: the findings of one verdict; a mismatch once per kind of handshake (``[no SNI]`` for the second)."""
    findings: list[Finding] = []
    for lookup in outcome.lookups:
        if lookup.records and not lookup.authenticated and not lookup.error:
            findings.append(Finding(DNSSEC_NOT_VALIDATED, "WARNING",
                                    f"the TLSA answer for {lookup.name} from {lookup.resolver} is not "
                                    f"DNSSEC-validated (AD bit clear): sending MTAs ignore it (RFC 7672 section 2.2)"))
    names = dict.fromkeys(r.name for r in outcome.unchecked)
    for name in names:
        here = [r for r in outcome.unchecked if r.name == name]
        kinds = ", ".join(sorted({f"{r.usage} {r.selector} {r.matching_type}" for r in here}))
        findings.append(Finding(NOT_CHECKED, "WARNING",
                                f"{len(here)} TLSA record(s) at {name} ({kinds}) use a matching type certkeeper "
                                f"cannot check (only SHA-256, matching type 1): unchecked, neither a match nor a "
                                f"mismatch"))
    if outcome.status == TLSA_INVALID:
        for mismatch in outcome.mismatches:
            published = ", ".join(r[:24] + "..." for r in mismatch.published)
            for view in mismatch.views:
                prefix = "[no SNI] " if view == WITHOUT_SNI else ""
                findings.append(Finding(TLSA_INVALID, "CRITICAL",
                                        f"{prefix}no TLSA record at {mismatch.name} matches the presented certificate "
                                        f"(SPKI sha256 {mismatch.spki_sha256[:16]}...; published: {published}); "
                                        f"DANE senders defer mail"))
    elif outcome.status == TLSA_VALID:
        findings.append(Finding(TLSA_VALID, "INFO", outcome.message))
    elif outcome.status in (TLSA_MISSING, TLSA_LOOKUP_FAILED):
        findings.append(Finding(outcome.status, "WARNING", outcome.message))
    return findings
