"""``certkeeper doctor``: the mail daemons' configuration, their files and what they serve -> findings with fixes.

Pure: the shell (``certkeeper.cli.doctor``) reads the daemons' effective configuration
(:mod:`certkeeper.mailserver.config`),
the files (:func:`certkeeper.mailserver.tlsfiles.read_file`), certkeeper's installed versions and the probe results, and
hands them in as :class:`Inputs` with ``now`` and the trust anchors.  Nothing here opens a file or a socket, so
every rule is tested with hand-written configurations.

Each finding carries the exact command or snippet that fixes it, because the technician running doctor is in
the middle of an outage: ``postconf -c DIR -P 'submissions/inet/smtpd_tls_wrappermode=yes'``, not "enable
implicit TLS".  The daemon rules live in :mod:`certkeeper.mailserver.rules`; this module joins them with the file
checks, certkeeper's managed versions and the served certificates, and renders the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from certkeeper import pki
from certkeeper.mailserver.config import (
    DovecotConfig,
    Listener,
    PostfixConfig,
    TlsFiles,
    dovecot_listeners,
    dovecot_tls_files,
    postfix_listeners,
    postfix_tls_files,
)
from certkeeper.mailserver.exim import EximConfig, exim_listeners
from certkeeper.mailserver.fixes import Fixer, ManagedCertificate, fixer_for
from certkeeper.mailserver.rules import (
    Diagnosis,
    Severity,
    dovecot_rules,
    exim_rules,
    hostnames_for,
    postfix_rules,
    sni_entries,
    sni_map_rules,
    sni_maps,
)
from certkeeper.mailserver.tlsfiles import (
    FileFacts,
    Pair,
    describe_leaf,
    judge_pair,
    pair_from_files,
    pairs_from_chain_files,
)
from certkeeper.mtasts.check import MtaStsReport
from certkeeper.probe.result import ProbeResult
from certkeeper.values import field, frozen

# Findings the file checks already make when the served certificate is the one on disk.
_FILE_LEVEL_CODES = {"certificate-host-mismatch", "certificate-expired", "certificate-expiring",
                     "certificate-not-yet-valid", "certificate-not-trusted", "self-signed"}
_MANAGED_PATH = re.compile(r"/certs/(?P<name>[^/]+)/(?:current|versions/(?P<version>[^/]+))/")




@frozen
class Inputs:
    postfix: PostfixConfig | None = None
    dovecot: DovecotConfig | None = None
    exim: EximConfig | None = None
    failures: tuple[tuple[str, str], ...] = ()  # (daemon, why its configuration could not be read)
    files: Mapping[Path, FileFacts] = field(default_factory=dict)
    managed: tuple[ManagedCertificate, ...] = ()
    served: Mapping[str, ProbeResult] = field(default_factory=dict)  # listener key -> result
    probed: bool = False


@frozen
class Section:
    title: str
    facts: tuple[str, ...]


@frozen
class Report:
    sections: tuple[Section, ...]
    diagnoses: tuple[Diagnosis, ...]

    @property
    def problems(self) -> int:
        return sum(1 for d in self.diagnoses if d.severity == "problem")

    @property
    def warnings(self) -> int:
        return sum(1 for d in self.diagnoses if d.severity == "warning")

    @property
    def verdict(self) -> str:
        if not self.problems and not self.warnings:
            return "doctor: healthy"
        parts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in
                 ((self.problems, "problem"), (self.warnings, "warning")) if n]
        return "doctor: " + ", ".join(parts)

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 warnings only, 2 problems: the order monitoring plugins use."""
        return 2 if self.problems else 1 if self.warnings else 0


def listener_key(listener: Listener) -> str:
    return f"{listener.daemon}:{listener.service}"


def listeners(inputs: Inputs) -> list[Listener]:
    found: list[Listener] = []
    if inputs.postfix is not None:
        found += postfix_listeners(inputs.postfix)
    if inputs.dovecot is not None:
        found += dovecot_listeners(inputs.dovecot)
    if inputs.exim is not None:
        found += exim_listeners(inputs.exim)
    return found


def _tls_sources(inputs: Inputs) -> list[tuple[str, TlsFiles, Sequence[str]]]:
    """Every distinct (section, files, names to cover) the daemons read, each judged once."""
    sources: list[tuple[str, TlsFiles, Sequence[str]]] = []
    seen: set[tuple[str, TlsFiles]] = set()
    everyone = listeners(inputs)
    if inputs.postfix is not None:  # main.cf's files, judged even when no listener uses them (yet)
        everyone.insert(0, Listener("postfix", "main.cf", "", 0, "smtp", "smtp", inputs.postfix.effective, {},
                                    postfix_tls_files(inputs.postfix.effective, "main.cf")))
    for listener in everyone:
        for tls in listener.tls:
            where = _section_of(inputs, listener, tls)
            if (where, tls) not in seen:
                seen.add((where, tls))
                sources.append((where, tls, hostnames_for(listener)))
    if inputs.dovecot is not None:
        for tls in dovecot_tls_files(inputs.dovecot):
            if tls.server_name is not None:
                sources.append((_daemon_title("dovecot", inputs), tls, [tls.server_name]))
    if inputs.postfix is not None:
        for _, source in sni_maps(inputs.postfix.effective):
            for name, files in sni_entries(inputs.files.get(source)):
                sources.append((_daemon_title("postfix", inputs),
                                TlsFiles("tls_server_sni_maps", files, "chain", str(source), name), [name]))
    return sources


def files_needed(inputs: Inputs) -> set[Path]:
    """The files to read before :func:`diagnose`; call again after reading (SNI map sources name more)."""
    needed = {path for _, tls, _ in _tls_sources(inputs) for path in tls.files}
    if inputs.postfix is not None:
        for database, source in sni_maps(inputs.postfix.effective):
            needed |= {source} | ({database} if database else set())
        parameter = inputs.postfix.effective.get("smtpd_tls_dh1024_param_file", "")
        if parameter.startswith("/"):
            needed.add(Path(parameter))
    if inputs.exim is not None and inputs.exim.settings.get("exim_path", "").startswith("/"):
        needed.add(Path(inputs.exim.settings["exim_path"]))  # what the daemon re-executes on SIGHUP
    return needed


def _daemon_title(daemon: str, inputs: Inputs) -> str:
    if daemon == "postfix" and inputs.postfix is not None:
        return f"Postfix ({inputs.postfix.config_dir})"
    if daemon == "dovecot" and inputs.dovecot is not None:
        return f"Dovecot ({inputs.dovecot.config_file})"
    if daemon == "exim" and inputs.exim is not None and inputs.exim.config_file is not None:
        return f"Exim ({inputs.exim.config_file})"
    return daemon.capitalize()


def _listener_title(listener: Listener) -> str:
    mode = "implicit TLS" if listener.protocol in {"smtps", "imaps", "pop3s", "tls"} else "STARTTLS"
    address = f"{listener.host}:{listener.port}"
    service = "" if listener.service == address else f", {listener.service}"
    return f"{listener.daemon.capitalize()} {listener.role} on {address} ({mode}{service})"


def _section_of(inputs: Inputs, listener: Listener, tls: TlsFiles) -> str:
    return _daemon_title(listener.daemon, inputs) if tls.scope in {"main.cf", "exim"} or \
        tls.scope.startswith("/") else _listener_title(listener)


def _pairs(tls: TlsFiles, files: Mapping[Path, FileFacts]) -> tuple[list[Pair], list[Any]]:
    facts = [files.get(path) or FileFacts(path, exists=False, error="not read") for path in tls.files]
    if tls.layout == "chain":
        return pairs_from_chain_files(facts)
    return pair_from_files(facts[0], facts[1])


def pair_count(listener: Listener, inputs: Inputs) -> int:
    """How many key pairs a listener serves (two: probe for both key types)."""
    return sum(len(_pairs(tls, inputs.files)[0]) for tls in listener.tls)


def diagnose(inputs: Inputs, *, roots: Sequence[x509.Certificate], now: datetime,
             warning_days: float = 21, critical_days: float = 7) -> Report:
    """The whole judgement: daemon settings, each certificate source, managed versions, what is served."""
    facts: dict[str, list[str]] = {}
    found: list[Diagnosis] = []
    for daemon, reason in inputs.failures:
        found.append(Diagnosis(daemon.capitalize(), "configuration-unreadable", "problem", reason,
                               f"run it by hand to see the error: {reason.split(':', 1)[0]}"))
    for daemon in ("postfix", "dovecot", "exim"):
        if getattr(inputs, daemon) is not None:
            facts[_daemon_title(daemon, inputs)] = []
    all_listeners = listeners(inputs)
    for listener in all_listeners:
        facts.setdefault(_listener_title(listener), [])
    if inputs.postfix is not None:
        fixer = fixer_for(inputs.postfix)
        found += postfix_rules(inputs.postfix, [x for x in all_listeners if x.daemon == "postfix"],
                               _daemon_title("postfix", inputs), _listener_title, inputs.files)
        found += sni_map_rules(inputs.postfix, inputs.files, _daemon_title("postfix", inputs))
    if inputs.dovecot is not None:
        found += dovecot_rules(inputs.dovecot, [x for x in all_listeners if x.daemon == "dovecot"],
                               _daemon_title("dovecot", inputs), _listener_title)
    if inputs.exim is not None:
        found += exim_rules(inputs.exim, [x for x in all_listeners if x.daemon == "exim"],
                            _daemon_title("exim", inputs), _listener_title, inputs.files)
    leaves: dict[tuple[str, TlsFiles], list[str]] = {}
    for where, tls, names in _tls_sources(inputs):
        daemon = "dovecot" if tls.setting.startswith("ssl_") else "exim" if tls.scope == "exim" else "postfix"
        fixer = fixer_for(inputs.postfix if daemon == "postfix" else inputs.dovecot if daemon == "dovecot"
                          else inputs.exim)
        pairs, issues = _pairs(tls, inputs.files)
        label = f"{tls.setting}" + (f" for {tls.server_name}" if tls.server_name else "")
        facts.setdefault(where, []).append(f"{label}: {', '.join(str(p) for p in tls.files)}")
        for issue in issues:
            found.append(Diagnosis(where, issue.code, issue.severity, issue.message, fixer.for_issue(issue, tls)))
        for pair in pairs:
            facts[where].append(f"  {describe_leaf(pair, now)}")
            leaves.setdefault((where, tls), []).append(pki.fingerprint(pair.leaf) if pair.leaf else "")
            for issue in judge_pair(pair, hostnames=names, roots=roots, now=now, warning_days=warning_days,
                                    critical_days=critical_days):
                found.append(Diagnosis(where, issue.code, issue.severity, issue.message, fixer.for_issue(issue, tls)))
            found += _managed_findings(where, tls, pair, inputs.managed, fixer, facts[where])
    for listener in all_listeners:
        expected = {fp for tls in listener.tls for (w, t), fps in leaves.items() if t == tls for fp in fps}
        found += _served_findings(listener, inputs, expected, facts.setdefault(_listener_title(listener), []))
    order = list(facts)
    for diagnosis in found:
        if diagnosis.where not in facts:
            facts[diagnosis.where] = []
            order.append(diagnosis.where)
    return Report(tuple(Section(title, tuple(facts[title])) for title in order), tuple(found))


def _managed_findings(where: str, tls: TlsFiles, pair: Pair, managed: Sequence[ManagedCertificate], fixer: Fixer,
                      facts: list[str]) -> list[Diagnosis]:
    """Managed (inside ``current``), pinned to a version, or a stale copy of a managed certificate."""
    paths = [str(p) for p in tls.files]
    by_name = {m.name: m for m in managed}
    for path in paths:
        match = _MANAGED_PATH.search(path)
        if match is None:
            continue
        name, version = match.group("name"), match.group("version")
        certificate = by_name.get(name)
        if version is None:
            facts.append(f"  managed by certkeeper: {name}" + (f" (version {certificate.current_id})"
                                                               if certificate else ""))
            return _hook_findings(where, certificate, fixer) if certificate else []
        current = path.replace(f"/versions/{version}/", "/current/")
        old = certificate is not None and version != certificate.current_id
        code = "pinned-old-version" if old else "pinned-version"
        severity: Severity = "problem" if old else "warning"
        return [Diagnosis(where, code, severity, f"{path} names version {version} of {name} instead of its current "
                          f"link; after the next renewal it will be served no more",
                          fixer.set_files(tls, [p.replace(f"/versions/{version}/", "/current/") for p in paths])
                          or f"use {current}")]
    leaf = pair.leaf
    if leaf is None:
        return []
    names = set(pki.subject_alternative_names(leaf))
    fingerprint = pki.fingerprint(leaf)
    for certificate in managed:
        if not names or names != set(certificate.domains):
            continue
        if fingerprint in certificate.current_fingerprints:
            facts.append(f"  a copy of certkeeper's current {certificate.name} (kept up to date only by copy_to)")
            return []
        old = certificate.versions.get(fingerprint)
        return [Diagnosis(where, "stale-copy", "problem", f"{pair.cert_file.path} holds a certificate for "
                          f"{certificate.name}'s names ({', '.join(sorted(names))}, sha256 {fingerprint[:16]}...)"
                          + (f" from its old version {old}" if old else "") + " that is not certkeeper's current one; "
                          "it is a copy nobody renews", fixer.set_managed(tls, certificate))]
    return []


def _hook_findings(where: str, certificate: ManagedCertificate, fixer: Fixer) -> list[Diagnosis]:
    if fixer.daemon in {"postfix", "dovecot", "exim"} and not any(fixer.daemon in hook for hook in certificate.reload):
        return [Diagnosis(where, "reload-hook-missing", "warning", f"certkeeper does not reload {fixer.daemon} "
                          f"after renewing {certificate.name}: the daemon keeps serving the old certificate",
                          f"in [certificates.{certificate.name}] of certkeeper.toml: {fixer.hook_line()}")]
    return []


def _served_findings(listener: Listener, inputs: Inputs, expected: set[str], facts: list[str]) -> list[Diagnosis]:
    """Compare what the listener serves with what its files hold: stale reload, wrong file, missing chain."""
    where = _listener_title(listener)
    result = inputs.served.get(listener_key(listener))
    if result is None:
        if inputs.probed:
            facts.append("not probed")
        return []
    fixer = fixer_for(inputs.postfix if listener.daemon == "postfix" else inputs.dovecot
                      if listener.daemon == "dovecot" else inputs.exim)
    found: list[Diagnosis] = []
    if not result.served:
        worst = next((f for f in result.findings if f.severity in {"CRITICAL", "UNKNOWN"}), None)
        message = worst.message if worst else result.message
        return [Diagnosis(where, worst.code if worst else "probe-failed", "problem",
                          f"{listener.target.text}: {message}", fixer.unreachable())]
    served = {leaf.fingerprint_sha256: leaf for leaf in result.served}
    facts.append("serves " + "; ".join(f"'{s.subject}' sha256 {fp[:16]}... ({s.key_type})"
                                       for fp, s in served.items()) + f" over {result.tls_version}")
    stale = {fp: s for fp, s in served.items() if expected and fp not in expected}
    for fingerprint, summary in stale.items():
        known = [f"{m.name} version {m.versions[fingerprint]}" for m in inputs.managed if fingerprint in m.versions]
        found.append(Diagnosis(where, "served-certificate-stale", "problem",
                               f"serves '{summary.subject}' (serial {summary.serial}, sha256 {fingerprint[:16]}..."
                               + (f", certkeeper's {known[0]}" if known else "") + "), not the certificate in its "
                               "files: the daemon has not been reloaded since the files changed, or reads others",
                               fixer.reload(inputs.managed)))
    for finding in result.findings:
        # The file checks already named these, unless the daemon names no files (Exim makes up its own).
        if finding.severity in {"INFO", "OK"} or (finding.code in _FILE_LEVEL_CODES and expected and not stale):
            continue
        if finding.code == "chain-incomplete":
            found.append(Diagnosis(where, "served-chain-incomplete", "problem", f"serves no intermediate "
                                   f"certificate: {finding.message}", fixer.reload(inputs.managed)))
        elif finding.code != "served-certificate-stale":
            fix = f"serve a certificate clients verify, e.g. certkeeper's: certkeeper setup {listener.daemon} " \
                  "--certificate NAME" if finding.code in _FILE_LEVEL_CODES and not expected else fixer.unreachable()
            found.append(Diagnosis(where, finding.code, "warning" if finding.severity == "WARNING" else "problem",
                                   finding.message, fix))
    return found


# -- MTA-STS (certkeeper doctor --mta-sts DOMAIN, and every configured [mta_sts.<domain>]) ------------------------

def _mta_sts_fix(code: str, domain: str) -> str:
    return {
        "sts-policy-invalid": f'exactly one TXT record _mta-sts.{domain} "v=STSv1; id=<1-32 letters and digits>" and '
                              f"a policy certkeeper renders: [mta_sts.\"{domain}\"] with dns_server and tsig_key_file "
                              "publishes both",
        "sts-policy-fetch-error": f"serve https://mta-sts.{domain}/.well-known/mta-sts.txt as text/plain with status "
                                  f'200: [mta_sts."{domain}"] webroot = "/var/www/mta-sts" behind a web server, or '
                                  'serve = "0.0.0.0:443" with certificate = "<a certificate for '
                                  f'mta-sts.{domain}>"',
        "sts-webpki-invalid": f'a certificate from a public CA for mta-sts.{domain}: [certificates.mta-sts] domains = '
                              f'["mta-sts.{domain}"], then point the web server at its current/ files',
        "certificate-host-mismatch": f'add the MX host to [mta_sts."{domain}"] mx (certkeeper widens the policy '
                                     "first), or give the MX a certificate for its host name",
        "starttls-not-supported": "postconf -e smtpd_tls_security_level=may "
                                  "smtpd_tls_chain_files=/var/lib/certkeeper/certs/<name>/current/combined.pem; "
                                  "postfix reload",
    }.get(code, f"certkeeper check --mta-sts {domain} -v")


def mta_sts_section(report: MtaStsReport) -> tuple[Section, tuple[Diagnosis, ...]]:
    """What ``check --mta-sts`` found for one domain, as a doctor section with a fix for each finding."""
    title = f"MTA-STS {report.domain}"
    policy = report.policy
    facts = [f"TXT _mta-sts.{report.domain}: {', '.join(report.txt_records) or 'none'}",
             f"policy {report.policy_url or '-'}: " + (f"mode {policy.mode}, max_age {policy.max_age}, mx "
                                                        f"{', '.join(policy.mx)}" if policy else "not usable")]
    facts += [f"MX {m.host} (preference {m.preference}): " + (f"matches {m.pattern}" if m.pattern else "no pattern")
              + (", delivers" if m.matches else ", refused by enforcing senders") for m in report.mx]
    findings = [*report.findings, *(f for m in report.mx for f in m.findings)]
    severity: dict[str, Severity] = {"CRITICAL": "problem", "UNKNOWN": "problem", "WARNING": "warning"}
    diagnoses = tuple(Diagnosis(title, f.code, severity[f.severity], f.message, _mta_sts_fix(f.code, report.domain))
                      for f in findings if f.severity in severity)
    return Section(title, tuple(facts)), diagnoses


def with_mta_sts(report: Report, checks: Sequence[MtaStsReport]) -> Report:
    sections, diagnoses = list(report.sections), list(report.diagnoses)
    for check in checks:
        section, found = mta_sts_section(check)
        sections.append(section)
        diagnoses += found
    return Report(tuple(sections), tuple(diagnoses))


def render_text(report: Report) -> str:
    lines: list[str] = []
    for section in report.sections:
        lines.append(section.title)
        lines += [f"  {fact}" for fact in section.facts]
        for diagnosis in (d for d in report.diagnoses if d.where == section.title):
            lines.append(f"  {diagnosis.severity.upper()} {diagnosis.code}: {diagnosis.message}")
            lines += [f"      fix: {line}" for line in diagnosis.fix.splitlines() if line]
        lines.append("")
    lines.append(report.verdict)
    return "\n".join(lines) + "\n"


def report_to_json(report: Report) -> dict[str, Any]:
    return {
        "verdict": report.verdict,
        "healthy": report.exit_code == 0,
        "problems": report.problems,
        "warnings": report.warnings,
        "sections": [{"title": s.title, "facts": list(s.facts)} for s in report.sections],
        "findings": [{"where": d.where, "code": d.code, "severity": d.severity, "message": d.message, "fix": d.fix}
                     for d in report.diagnoses],
    }


__all__ = ["Inputs", "ManagedCertificate", "Report", "diagnose", "files_needed", "listener_key", "listeners",
           "pair_count", "postfix_tls_files", "render_text", "report_to_json"]
