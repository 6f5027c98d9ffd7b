"""Which certificates face senders as a domain's MX hosts, the policy the configuration wants, and the guard.

The guard (RFC 8461 section 4.1): a sender enforcing the published policy delivers to an MX host only when the
host matches one of the policy's ``mx`` patterns and the certificate it presents is valid for that host.  So a
renewed certificate whose MX-facing names fall outside the published patterns would break delivery the moment
it is served; it is refused before install, and the old one keeps being served.

Pure: configuration values and the published policy in, a reason (or None) out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from certkeeper.config import CertificateConfig, MtaStsConfig
from certkeeper.mtasts.policy import Policy, name_fits_patterns
from certkeeper.pki import names_cover
from certkeeper.values import frozen

SMTP_PORT = 25


def mx_certificates(mta: MtaStsConfig, certificates: Mapping[str, CertificateConfig]) -> list[CertificateConfig]:
    """The certificates serving ``mta.domain``'s MX hosts: ``mta.certificates``, else every certificate with an
    ``smtp://`` endpoint on port 25 (what senders connect to)."""
    if mta.certificates:
        return [certificates[name] for name in mta.certificates if name in certificates]
    return [c for c in certificates.values() if any(t.protocol == "smtp" and t.port == SMTP_PORT
                                                     for t in c.endpoints)]


def mx_names(certificate: CertificateConfig, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The names a certificate faces senders with: the hosts of its port-25 endpoints (written as names), else
    ``names`` (the new certificate's DNS names) or its configured domains."""
    hosts = tuple(dict.fromkeys(t.host.lower() for t in certificate.endpoints
                                if t.protocol == "smtp" and t.port == SMTP_PORT and not t.is_ip_literal))
    return hosts or tuple(n.lower() for n in (names if names is not None else certificate.domains)
                          if not _is_address(n))


def wanted_policy(mta: MtaStsConfig, certificates: Mapping[str, CertificateConfig]) -> Policy:
    """The policy the configuration asks for: ``mx`` as given, else the MX certificates' MX-facing names."""
    patterns = mta.mx or tuple(dict.fromkeys(n for c in mx_certificates(mta, certificates) for n in mx_names(c)))
    if mta.mode == "none":
        patterns = ()
    return Policy(mta.mode, mta.max_age, patterns)


@frozen
class GuardRefusal:
    """Why a new certificate may not be installed: the name, the domain and the published patterns."""

    domain: str
    name: str
    patterns: tuple[str, ...]
    policy_id: str
    covered: bool  # False: the certificate does not even cover the MX host name

    def __str__(self) -> str:
        if not self.covered:
            return (f"it does not cover the MX host {self.name} of {self.domain}, which senders enforcing its "
                    f"MTA-STS policy (id {self.policy_id}) check")
        return (f"{self.name} matches none of the mx patterns ({', '.join(self.patterns) or 'none'}) of the "
                f"published MTA-STS policy of {self.domain} (id {self.policy_id}); senders enforcing it would refuse "
                f"to deliver. Add the name to [mta_sts.\"{self.domain}\"] mx (certkeeper widens the policy first) "
                "or change the certificate back")


def guard_certificate(certificate: CertificateConfig, new_names: Sequence[str], domain: str,
                      published: Policy | None, published_id: str) -> GuardRefusal | None:
    """The first MX-facing name of a new certificate a sender of ``domain`` would refuse, or None."""
    if published is None or published.mode == "none":
        return None
    for name in mx_names(certificate, new_names):
        if names_cover(list(new_names), [name]):
            return GuardRefusal(domain, name, published.mx, published_id, covered=False)
        if not name_fits_patterns(name, published.mx):
            return GuardRefusal(domain, name, published.mx, published_id, covered=True)
    return None


def _is_address(name: str) -> bool:
    return name.replace(".", "").isdigit() or ":" in name
