"""``certkeeper check --mta-sts DOMAIN``: what a sender that honours MTA-STS sees for a domain, step by step.

1. the ``_mta-sts.<domain>`` TXT record (exactly one ``v=STSv1`` record with an ``id``);
2. the policy over HTTPS from ``mta-sts.<domain>``, its certificate verified for that name;
3. the policy's syntax (every problem a finding, a body over 64 KiB refused);
4. the domain's MX hosts, each against the policy's ``mx`` patterns (RFC 8461 section 4.1);
5. each MX address on port 25 with STARTTLS, its certificate judged for the MX host name (section 4.2).

Findings carry the RFC 8460 result words senders put in their TLS reports.  MX problems are CRITICAL under
``mode: enforce`` (senders refuse to deliver), WARNING under ``testing`` (they deliver and report), INFO under
``none``.  The judgement (:func:`judge_mx`, :func:`summarize`) is pure; :func:`check_domain` does the IO.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper.mtasts.fetch import fetch_policy, policy_host
from certkeeper.mtasts.policy import (
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    Policy,
    PolicyFinding,
    TxtRecord,
    matching_pattern,
    parse_policy,
    parse_txt_records,
    policy_id,
)
from certkeeper.mtasts.resolve import LookupFailed, Resolver
from certkeeper.probe import Prober, result_to_json
from certkeeper.probe.report import plugin_text
from certkeeper.probe.result import (
    CERTIFICATE_HOST_MISMATCH,
    CONNECTION_FAILED,
    Finding,
    ProbeOptions,
    ProbeResult,
    worst_status,
)
from certkeeper.targets import Target
from certkeeper.values import field, frozen, replace

if TYPE_CHECKING:
    from certkeeper.probe.result import Severity, Status

SMTP_PORT = 25
VALIDATION_FAILURE = "validation-failure"


@frozen
class MxReport:
    """One MX host: its preference, the pattern it matched (None: none), each address's probe, the findings."""

    host: str
    preference: int
    pattern: str | None
    probes: tuple[ProbeResult, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def matches(self) -> bool:
        """A sender enforcing the policy would deliver here: pattern matched, every address served a valid chain."""
        return self.pattern is not None and bool(self.probes) and not any(
            f.severity in ("CRITICAL", "UNKNOWN") or f.code == CERTIFICATE_HOST_MISMATCH
            for p in self.probes for f in p.findings)


@frozen
class MtaStsReport:
    domain: str
    status: Status
    message: str
    txt_records: tuple[str, ...] = ()
    txt: TxtRecord | None = None
    policy_url: str = ""
    policy_address: str | None = None
    policy_text: str | None = None
    policy: Policy | None = None
    mx: tuple[MxReport, ...] = ()
    findings: tuple[Finding, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[self.status]

    @property
    def every_mx_matches(self) -> bool:
        return bool(self.mx) and all(m.matches for m in self.mx)


_MX_SEVERITY: dict[str, Severity] = {"enforce": "CRITICAL", "testing": "WARNING", "none": "INFO"}


def _mx_severity(policy: Policy) -> Severity:
    return _MX_SEVERITY[policy.mode]


def _policy_finding(finding: PolicyFinding) -> Finding:
    return Finding(finding.code, "CRITICAL", str(finding))


def judge_mx(host: str, preference: int, policy: Policy, probes: Sequence[ProbeResult]) -> MxReport:
    """One MX host against the policy: the section 4.1 pattern match, then what each address served."""
    severity = _mx_severity(policy)
    pattern = matching_pattern(host, policy.mx)
    findings: list[Finding] = []
    if pattern is None:
        findings.append(Finding(CERTIFICATE_HOST_MISMATCH, severity,
                                f"MX host {host} matches none of the policy's mx patterns "
                                f"({', '.join(policy.mx) or 'none'})"))
    if not probes:
        findings.append(Finding(CONNECTION_FAILED, severity, f"MX host {host} has no A or AAAA record"))
    for probe in probes:
        where = f"{host} ({probe.address}:{probe.target.port})"
        for finding in probe.findings:
            if finding.severity == "INFO":
                continue
            # The probe's own word is kept (RFC 8460 where one fits); its weight follows the policy's mode,
            # except expiry warnings, which stay what they are.
            weight: Severity = finding.severity if finding.severity == "WARNING" else severity
            findings.append(Finding(finding.code, weight, f"{where}: {finding.message}"))
    return MxReport(host, preference, pattern, tuple(probes), tuple(findings))


def summarize(report: MtaStsReport) -> MtaStsReport:
    """Status and message from the findings (pure)."""
    findings = list(report.findings) + [f for m in report.mx for f in m.findings]
    status = worst_status([f.severity for f in findings])
    problems = [f for f in findings if f.severity != "INFO"]
    if problems:
        worst = max(problems, key=lambda f: ("INFO", "WARNING", "CRITICAL", "UNKNOWN").index(f.severity))
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"{worst.code}: {worst.message}{more}"
    elif report.policy is not None:
        matched = ", ".join(f"{m.host} ({m.pattern})" for m in report.mx)
        message = (f"policy id {report.txt.id if report.txt else '?'}, mode {report.policy.mode}, max_age "
                   f"{report.policy.max_age}; {len(report.mx)} MX, all match: {matched}")
    else:
        message = "no policy"
    return replace(report, status=status, message=message)


def check_domain(domain: str, *, resolver: Resolver, ca_file: Path | str | None, timeout: float, now: datetime,
                 warning_days: float = 21, critical_days: float = 7) -> MtaStsReport:
    """Every step of the module docstring against the live DNS and servers; findings, never exceptions."""
    domain = domain.rstrip(".").lower()
    findings: list[Finding] = []
    try:
        texts = resolver.txt(f"_mta-sts.{domain}")
    except LookupFailed as exc:
        return summarize(MtaStsReport(domain, "OK", "", findings=(Finding(STS_POLICY_FETCH_ERROR, "CRITICAL",
                                                                          str(exc)),)))
    txt, txt_findings = parse_txt_records(texts)
    findings += [Finding(f.code, "CRITICAL", f"_mta-sts.{domain} TXT: {f.message}") for f in txt_findings]
    report = MtaStsReport(domain, "OK", "", txt_records=tuple(texts), txt=txt)
    try:
        addresses = resolver.addresses(policy_host(domain))
    except LookupFailed as exc:
        return summarize(replace(report, findings=(*findings, Finding(STS_POLICY_FETCH_ERROR, "CRITICAL",
                                                                        str(exc)))))
    fetched = fetch_policy(domain, addresses, ca_file=ca_file, timeout=timeout)
    if fetched.finding is not None:
        findings.append(_policy_finding(fetched.finding))
    policy: Policy | None = None
    text: str | None = None
    if fetched.body is not None:
        parsed = parse_policy(fetched.body)
        findings += [_policy_finding(f) for f in parsed.findings]
        policy = parsed.policy if fetched.finding is None and not parsed.findings else None
        text = fetched.body[:4096].decode("utf-8", "replace")
        if parsed.policy is not None and txt is not None and fetched.finding is None:
            derived = policy_id(fetched.body.decode("utf-8", "replace"))
            if txt.id != derived:
                findings.append(Finding("sts-id", "INFO", f"the TXT id {txt.id} is not the one certkeeper derives "
                                                         f"from this policy ({derived}); fine if not published by "
                                                         "certkeeper"))
    report = replace(report, policy_url=fetched.url, policy_address=fetched.address, policy_text=text,
                     policy=policy)
    if policy is None or txt is None:
        return summarize(replace(report, findings=tuple(findings)))
    try:
        exchanges = resolver.mx(domain)
        hosts = [(preference, host, resolver.addresses(host)) for preference, host in exchanges if host]
    except LookupFailed as exc:
        findings.append(Finding(VALIDATION_FAILURE, _mx_severity(policy), str(exc)))
        return summarize(replace(report, findings=tuple(findings)))
    if not hosts:
        findings.append(Finding(VALIDATION_FAILURE, _mx_severity(policy), f"{domain} has no MX records"))
    options = ProbeOptions(timeout=timeout, ca_file=ca_file, warning_days=warning_days, critical_days=critical_days)
    probed = asyncio.run(_probe_all(hosts, options, now))
    mx = tuple(judge_mx(host, preference, policy, probed[host]) for preference, host, _ in hosts)
    return summarize(replace(report, mx=mx, findings=tuple(findings)))


async def _probe_all(hosts: Sequence[tuple[int, str, list[str]]], options: ProbeOptions,
                     now: datetime) -> dict[str, list[ProbeResult]]:
    prober = Prober(options, now=now)
    jobs = [(host, address) for _, host, addresses in hosts for address in addresses]
    results = await asyncio.gather(*(prober.probe(Target(f"smtp://{host}:{SMTP_PORT}", host, SMTP_PORT, "smtp"),
                                                  address=address) for host, address in jobs))
    by_host: dict[str, list[ProbeResult]] = {host: [] for _, host, _ in hosts}
    for (host, _), result in zip(jobs, results, strict=True):
        by_host[host].append(result)
    return by_host


# -- output, as ``check`` prints it ---------------------------------------------------------------------------


def nagios_line(report: MtaStsReport) -> str:
    message = plugin_text(report.message)  # a policy server chose some of the words
    return f"CERTKEEPER {report.status} - {report.domain}, mta-sts, {message}"


def report_to_json(report: MtaStsReport) -> dict[str, Any]:
    policy = report.policy
    return {
        "domain": report.domain,
        "protocol": "mta-sts",
        "status": report.status,
        "message": report.message,
        "txt": {"name": f"_mta-sts.{report.domain}", "records": list(report.txt_records),
                "id": report.txt.id if report.txt else None},
        "policy": {"url": report.policy_url, "address": report.policy_address, "text": report.policy_text,
                   "valid": policy is not None, "mode": policy.mode if policy else None,
                   "max_age": policy.max_age if policy else None, "mx": list(policy.mx) if policy else []},
        "mx": [{"host": m.host, "preference": m.preference, "pattern": m.pattern, "matches": m.matches,
                "findings": [_finding(f) for f in m.findings],
                "probes": [result_to_json(p) for p in m.probes]} for m in report.mx],
        "every_mx_matches": report.every_mx_matches,
        "findings": [_finding(f) for f in report.findings],
    }


def _finding(finding: Finding) -> dict[str, str]:
    return {"code": finding.code, "severity": finding.severity, "message": finding.message}


__all__ = ["STS_POLICY_INVALID", "MtaStsReport", "MxReport", "check_domain", "judge_mx", "nagios_line",
           "report_to_json", "summarize"]
