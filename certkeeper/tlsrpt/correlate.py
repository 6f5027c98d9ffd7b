"""What senders reported, set against what certkeeper did.  Pure: reports, history and names in; findings out.

Failures are grouped by receiving MX and result type.  For each group the certificates whose names cover that MX
(an exact name or a ``*.`` wildcard) are looked up, and their history (installs, rollbacks, failed renewals, as
the store records them) in the report's window, and the day before it, since an install at 23:50 explains failures
reported from 00:00; and the other things certkeeper did to them (TLSA records published for DANE).  The most
likely explanation depends on the result type: an expired certificate is most likely one that was not replaced
(a rollback, a failed renewal); ``tlsa-invalid`` and the other DANE results most likely a TLSA change; a
certificate that does not match its name or chain most likely a new one (an install); an ``sts-*`` result most
likely a change of the MTA-STS policy of the reported policy domain (a new policy published, which is kept per
domain rather than per certificate).  Nothing found says so in those words.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from certkeeper.tlsrpt.report import CERTIFICATE_RESULTS, TlsReport
from certkeeper.values import frozen

LOOKBACK = timedelta(days=1)
NOTHING_EXPLAINS = "nothing certkeeper did explains this"
# Which of certkeeper's actions explains which failure best (higher first).
_EXPIRED_LIKE = {"rollback": 4, "failure": 3, "install": 2, "dane-publish": 1, "mta-sts-policy": 1}
_DANE_LIKE = {"dane-publish": 4, "install": 3, "rollback": 2, "failure": 1}
_NEW_CERTIFICATE_LIKE = {"install": 4, "rollback": 3, "failure": 2, "mta-sts-policy": 2, "dane-publish": 1}
_STS_LIKE = {"mta-sts-policy": 5, "install": 4, "rollback": 3, "failure": 2}
_DANE_RESULTS = frozenset({"tlsa-invalid", "dnssec-invalid", "dane-required"})
MTA_STS_POLICY = "mta-sts-policy"  # the history kind of an MtaStsPolicyPublished; its name is the policy domain
_KINDS = {"success": "install", "rollback": "rollback", "failure": "failure"}


@frozen
class CertkeeperAction:
    """One entry of certkeeper's history: an ``install``, a ``rollback``, a ``failure`` or a ``dane-publish`` of a
    certificate, or an ``mta-sts-policy`` published for a policy domain (``certificate`` empty)."""

    at: datetime
    certificate: str
    kind: str
    version: str = ""
    detail: str = ""
    policy_domain: str = ""

    def describe(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        if self.kind == MTA_STS_POLICY:
            return f"MTA-STS policy of {self.policy_domain!r}: published at {_when(self.at)}{detail}"
        what = {"install": "installed version", "rollback": "rolled back version",
                "failure": "failed to renew", "dane-publish": "published TLSA records"}.get(self.kind, self.kind)
        version = f" {self.version}" if self.version and self.kind in ("install", "rollback") else ""
        return f"certificate {self.certificate!r}: {what}{version} at {_when(self.at)}{detail}"

    def concerns(self, certificates: Sequence[str], policy_domains: Sequence[str]) -> bool:
        if self.kind == MTA_STS_POLICY:
            return self.policy_domain in policy_domains
        return self.certificate in certificates


def actions_from_history(renewals: Iterable[tuple[str, datetime, str, str, str]],
                         others: Iterable[tuple[str, datetime, str, str]] = ()) -> list[CertkeeperAction]:
    """``(name, at, result, version, detail)`` rows of the renewal history (dry runs are not actions), and
    ``(name, at, kind, detail)`` rows of the other history (``dane-publish`` of a certificate, ``mta-sts-policy``
    of a policy domain)."""
    actions = [CertkeeperAction(at, name, _KINDS[result], version, detail)
               for name, at, result, version, detail in renewals if result in _KINDS]
    return actions + [CertkeeperAction(at, "", kind, "", detail, policy_domain=name) if kind == MTA_STS_POLICY
                      else CertkeeperAction(at, name, kind, "", detail) for name, at, kind, detail in others]


@frozen
class FailureGroup:
    """Sessions that failed one way against one receiving MX, over every report considered."""

    receiving_mx: str
    result_type: str
    sessions: int
    organizations: tuple[str, ...]
    start: datetime
    end: datetime
    policy_domains: tuple[str, ...]
    report_ids: tuple[str, ...]


@frozen
class Correlation:
    group: FailureGroup
    certificates: tuple[str, ...]
    explanation: CertkeeperAction | None

    @property
    def explained_by(self) -> str:
        if self.explanation is not None:
            return self.explanation.describe()
        if not self.certificates:
            return f"{NOTHING_EXPLAINS} (no managed certificate names {self.group.receiving_mx})"
        return f"{NOTHING_EXPLAINS} (no install, rollback, failed renewal or TLSA change of " \
               f"{', '.join(repr(c) for c in self.certificates)}, nor MTA-STS policy change of " \
               f"{', '.join(repr(d) for d in self.group.policy_domains)}, from {_when(self.group.start - LOOKBACK)} on)"


def group_failures(reports: Iterable[TlsReport], results: frozenset[str] = CERTIFICATE_RESULTS) -> list[FailureGroup]:
    sessions: dict[tuple[str, str], int] = defaultdict(int)
    organizations: dict[tuple[str, str], set[str]] = defaultdict(set)
    domains: dict[tuple[str, str], set[str]] = defaultdict(set)
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    windows: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for report in reports:
        for policy in report.policies:
            for failure in policy.failures:
                if failure.result_type not in results or failure.failed_session_count == 0:
                    continue
                key = (failure.receiving_mx_hostname or policy.policy_domain, failure.result_type)
                sessions[key] += failure.failed_session_count
                organizations[key].add(report.organization_name)
                domains[key].add(policy.policy_domain)
                ids[key].add(report.report_id)
                start, end = windows.get(key, (report.start, report.end))
                windows[key] = (min(start, report.start), max(end, report.end))
    return [FailureGroup(mx, result, sessions[(mx, result)], tuple(sorted(organizations[(mx, result)])),
                         *windows[(mx, result)], tuple(sorted(domains[(mx, result)])),
                         tuple(sorted(ids[(mx, result)])))
            for mx, result in sorted(sessions)]


def certificates_for(mx: str, certificates: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The certificates whose names cover host ``mx``."""
    mx = mx.lower().rstrip(".")
    return tuple(sorted(name for name, domains in certificates.items()
                        if any(_covers(domain.lower(), mx) for domain in domains)))


def _covers(name: str, host: str) -> bool:
    if name.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == name[2:]
    return name == host


def explain(group: FailureGroup, certificates: Sequence[str],
            actions: Iterable[CertkeeperAction]) -> CertkeeperAction | None:
    """The action of ``certificates`` (or of the group's policy domains) that most likely explains ``group``."""
    weights = _EXPIRED_LIKE if group.result_type == "certificate-expired" else \
        _DANE_LIKE if group.result_type in _DANE_RESULTS else \
        _STS_LIKE if group.result_type.startswith("sts-") else _NEW_CERTIFICATE_LIKE
    candidates = [a for a in actions if a.concerns(certificates, group.policy_domains)
                  and group.start - LOOKBACK <= a.at <= group.end and weights.get(a.kind, 0) > 0]
    if not candidates:
        return None

    def likelihood(action: CertkeeperAction) -> tuple[int, int, float]:
        before = action.at <= group.start  # an action before the first failure can cause all of them
        closeness = -abs((group.start - action.at).total_seconds())
        return weights.get(action.kind, 0), int(before), closeness

    return max(candidates, key=likelihood)


def correlate(reports: Iterable[TlsReport], certificates: Mapping[str, Sequence[str]],
              actions: Sequence[CertkeeperAction], *, threshold: int) -> list[Correlation]:
    """The failure groups of at least ``threshold`` sessions, each with its most likely explanation."""
    found = []
    for group in group_failures(reports):
        if group.sessions < threshold:
            continue
        names = certificates_for(group.receiving_mx, certificates)
        found.append(Correlation(group, names, explain(group, names, actions)))
    return found


def _when(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
