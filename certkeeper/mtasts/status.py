"""What ``certkeeper status`` and the metrics say about each MTA-STS domain (pure).

"Every MX matches" is judged from what certkeeper knows without the network: each MX-facing name of each MX
certificate matches a pattern of the published policy, and the installed certificate covers it.  What the MX
hosts really serve is ``certkeeper check --mta-sts``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from certkeeper.config import CertificateConfig, Config, MtaStsConfig
from certkeeper.errors import CertkeeperError
from certkeeper.mtasts.guard import mx_certificates, mx_names
from certkeeper.mtasts.policy import name_fits_patterns, policy_id, render_policy
from certkeeper.mtasts.publish import PublishState
from certkeeper.pki import names_cover
from certkeeper.values import frozen


@frozen
class DomainStatus:
    domain: str
    policy_id: str | None  # None: nothing published yet
    mode: str | None
    mx: tuple[str, ...]
    every_mx_matches: bool
    unmatched: tuple[str, ...]  # MX-facing names a sender enforcing the policy would refuse
    published_since: datetime | None = None
    txt_id: str | None = None  # what DNS was last told (None: never, or no RFC 2136 settings)

    @property
    def txt_in_step(self) -> bool:
        return self.txt_id is not None and self.txt_id == self.policy_id


def domain_status(mta: MtaStsConfig, certificates: Mapping[str, CertificateConfig],
                  installed_names: Mapping[str, Sequence[str]], state: PublishState) -> DomainStatus:
    """``installed_names``: the DNS names of each certificate's installed version (absent: none installed)."""
    publication = state.publication
    if publication is None:
        return DomainStatus(mta.domain, None, None, (), False, ())
    policy = publication.policy
    unmatched: list[str] = []
    for certificate in mx_certificates(mta, certificates):
        names = installed_names.get(certificate.name)
        for name in mx_names(certificate, names):
            fits = policy.mode == "none" or name_fits_patterns(name, policy.mx)
            if not fits or names is None or names_cover(list(names), [name]):
                unmatched.append(name)
    return DomainStatus(mta.domain, policy_id(render_policy(policy)), policy.mode, policy.mx, not unmatched,
                        tuple(dict.fromkeys(unmatched)), publication.since, state.txt_id)


def status_lines(statuses: Sequence[DomainStatus]) -> list[str]:
    """The ``MTA-STS`` block of ``certkeeper status``."""
    lines = []
    for s in statuses:
        if s.policy_id is None:
            lines.append(f"{s.domain}: no policy published yet (the next pass publishes it)")
            continue
        match = "every MX matches" if s.every_mx_matches else f"MX not matching: {', '.join(s.unmatched)}"
        dns = "TXT in step" if s.txt_in_step else "TXT not published by certkeeper" if s.txt_id is None else \
            f"TXT still announces {s.txt_id}"
        lines.append(f"{s.domain}: policy id {s.policy_id}, mode {s.mode}, mx {', '.join(s.mx) or '-'}; {match}; "
                     f"{dns}")
    return lines


def domain_statuses(config: Config) -> list[DomainStatus]:
    """Every configured domain's status from the state and the installed versions (reads files, contacts
    nothing); a domain whose state cannot be read shows as nothing published."""
    from certkeeper.mtasts.publish import load_state
    from certkeeper.store.versions import CertificateHome

    installed: dict[str, Sequence[str]] = {}
    for name in config.certificates:
        try:
            current = CertificateHome(config.settings.state_dir, name).current()
        except (CertkeeperError, OSError):
            current = None
        if current is not None:
            installed[name] = current.domains
    statuses = []
    for mta in config.mta_sts.values():
        try:
            state = load_state(config.settings.state_dir, mta.domain)
        except CertkeeperError:
            state = PublishState()
        statuses.append(domain_status(mta, config.certificates, installed, state))
    return statuses
