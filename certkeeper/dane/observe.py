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

The verdict is the one TLSA judge's, :func:`certkeeper.dane.judge.judge_tlsa`, which ``check --dane`` uses too;
this module says what to look up for an endpoint (:func:`dane_watch_for`) and which events a verdict owes
(:func:`tlsa_events`, pure).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certkeeper.config import CertificateConfig, IssuerConfig
from certkeeper.dane.records import record_names
from certkeeper.events import Event, TlsaMatchRecovered, TlsaMismatchObserved
from certkeeper.targets import Target
from certkeeper.values import frozen

if TYPE_CHECKING:  # the judge brings the probe and dnspython: a pass without DANE endpoints loads neither
    from certkeeper.dane.judge import DaneOutcome


@frozen
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


def tlsa_events(owner: str, endpoint: str, outcome: DaneOutcome | None, previous: Mapping[str, Any] | None,
                now: datetime) -> list[Event]:
    """Pure: the events of one endpoint's verdict, given the previous one stored (``details["dane"]``).

    A mismatch is reported on every pass it lasts (the alerts de-duplicate); a match after anything but a match
    is a recovery, since a lookup failure or a closed port in between says nothing about the records.
    """
    if outcome is None:
        return []
    from certkeeper.dane.judge import TLSA_VALID

    if outcome.mismatches:
        return [TlsaMismatchObserved(now, owner, endpoint, m.name, m.spki_sha256, m.published,
                                     ", ".join(m.views), outcome.dnssec_validated) for m in outcome.mismatches]
    before = previous.get("status") if previous else None
    if outcome.status == TLSA_VALID and before not in (None, TLSA_VALID):
        return [TlsaMatchRecovered(now, owner, endpoint, outcome.message)]
    return []
