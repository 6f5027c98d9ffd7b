"""``check --dane``: does what an SMTP server presents match its TLSA records, as a DANE sender would judge it?

RFC 7672 section 2.2: a sending MTA looks up ``_<port>._tcp.<MX host>`` TLSA, uses the records only when its
resolver validated them with DNSSEC, and then requires the presented chain to match one usable record.  Many
senders send no SNI on port 25 (RFC 7672 asks it of DANE senders only), so a server that presents another
certificate without SNI breaks for them: SMTP targets are probed both ways.

The TLSA lookup is :func:`certkeeper.dane.publish.lookup_tlsa`; the matching is
:func:`certkeeper.dane.records.match_presented`;
this module joins them to probe results as findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from certkeeper.dane.publish import TlsaAnswer, lookup_tlsa
from certkeeper.dane.records import Presented, match_presented, record_names
from certkeeper.errors import TlsaDnsError
from certkeeper.probe.engine import probe_sync
from certkeeper.probe.judge import problem_message
from certkeeper.probe.result import Finding, ProbeOptions, ProbeResult, worst_status

TLSA_INVALID = "tlsa-invalid"  # RFC 8460 section 4.3.2: no TLSA record matches the presented chain
TLSA_VALID = "tlsa-valid"
TLSA_MISSING = "tlsa-missing"
TLSA_LOOKUP_FAILED = "tlsa-lookup-failed"
DNSSEC_NOT_VALIDATED = "dnssec-not-validated"


def check_dane(results: Sequence[ProbeResult], options: ProbeOptions, *, now: datetime,
                     resolver: str | None, concurrency: int = 50) -> list[ProbeResult]:
    """``results`` with DANE findings added; SMTP (STARTTLS) targets are probed once more without SNI."""
    smtp = [r for r in results if r.target.protocol == "smtp"]
    without_sni = probe_sync([r.target for r in smtp], replace(options, sni=False), now=now,
                                   concurrency=concurrency)
    unsent = dict(zip([id(r) for r in smtp], without_sni, strict=True))
    answers: dict[str, TlsaAnswer | str] = {}
    judged = []
    for result in results:
        host = options.servername or result.target.host
        findings = list(result.findings)
        if result.target.is_ip_literal and not options.servername:
            findings.append(Finding(TLSA_MISSING, "WARNING", f"no host name to look up TLSA records for "
                                                             f"{result.target.address}: give --servername"))
        else:
            [name] = record_names([host], [result.target.port])
            if name not in answers:
                try:
                    answers[name] = lookup_tlsa(name, resolver)
                except TlsaDnsError as exc:
                    answers[name] = str(exc)
            findings += tlsa_findings(answers[name], name, result, "")
            other = unsent.get(id(result))
            if other is not None:
                if other.certificate is None:
                    findings += [Finding(f.code, f.severity, f"[no SNI] {f.message}") for f in other.findings
                                 if f.severity != "INFO"]
                else:
                    findings += [f for f in tlsa_findings(answers[name], name, other, "[no SNI] ")
                                 if f.code == TLSA_INVALID]
        judged.append(replace(result, findings=tuple(findings), status=worst_status([f.severity for f in findings]),
                              message=problem_message(findings, result.certificate)))
    return judged


def tlsa_findings(answer: TlsaAnswer | str, name: str, result: ProbeResult, prefix: str) -> list[Finding]:
    """The findings of one presented chain against one TLSA answer (or the error of looking it up)."""
    if isinstance(answer, str):
        return [Finding(TLSA_LOOKUP_FAILED, "WARNING", f"{prefix}{answer}")]
    if not answer.records:
        return [Finding(TLSA_MISSING, "WARNING", f"{prefix}no TLSA records at {name} ({answer.rcode} from "
                                                 f"{answer.resolver})")]
    findings = []
    if not answer.authenticated:
        findings.append(Finding(DNSSEC_NOT_VALIDATED, "WARNING",
                                f"{prefix}the TLSA answer for {name} from {answer.resolver} is not DNSSEC-validated "
                                f"(AD bit clear): sending MTAs ignore it (RFC 7672 section 2.2)"))
    if result.certificate is None or not result.chain:
        return findings
    leaf, *above = [Presented(s.spki_sha256, s.fingerprint_sha256) for s in result.chain]
    match = match_presented(answer.records, leaf, above)
    validated = "DNSSEC-validated" if answer.authenticated else "not DNSSEC-validated"
    if match.matched:
        first = match.matched[0]
        findings.append(Finding(TLSA_VALID, "INFO", f"{prefix}the presented certificate matches TLSA {first.rdata[:24]}"
                                                    f"... at {name} ({validated})"))
    elif match.unchecked and len(match.unchecked) == len(answer.records):
        findings.append(Finding(TLSA_LOOKUP_FAILED, "WARNING", f"{prefix}the TLSA records at {name} use matching "
                                                               f"types certkeeper does not check (only SHA-256)"))
    else:
        published = ", ".join(r.rdata[:24] + "..." for r in sorted(answer.records))
        findings.append(Finding(TLSA_INVALID, "CRITICAL",
                                f"{prefix}no TLSA record at {name} matches the presented certificate (SPKI sha256 "
                                f"{leaf.spki_sha256[:16]}...; published: {published}); DANE senders defer mail"))
    return findings
