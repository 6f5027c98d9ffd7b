"""Typed events, named in the past tense.  The lifecycle publishes; logging, alerts and metrics subscribe."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from certkeeper.values import fields, frozen


@frozen
class Event:
    """Something that happened, at ``at`` (UTC); subclasses are named in the past tense and carry no key material."""

    at: datetime

    def describe(self) -> str:
        """One log line: the event's name and its fields, never key material (events carry none)."""
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "at"]
        return f"{type(self).__name__} " + " ".join(parts)


@frozen
class CertificateIssued(Event):
    """The issuer returned a certificate for one key type of ``name``; not yet gated or installed."""

    name: str
    key_type: str
    issuer: str
    serial: str
    not_after: datetime


@frozen
class CertificateInstalled(Event):
    """``version`` of ``name`` became ``current`` (the flip); its reload may still be owed."""

    name: str
    version: str


@frozen
class RenewalFailed(Event):
    """Renewing ``name`` failed (or was rolled back) with ``error``; it is tried again at ``next_attempt``."""

    name: str
    error: str
    next_attempt: datetime | None


@frozen
class ReloadHookFailed(Event):
    """A reload hook of ``name`` failed or timed out; ``error`` is its redacted output or the reason."""

    name: str
    hook: str
    error: str


@frozen
class CertificateVerified(Event):
    """Every probe point of ``name`` served ``version`` after the reload."""

    name: str
    version: str
    endpoints: tuple[str, ...]


@frozen
class RolledBack(Event):
    """``name`` went back from ``from_version`` to ``to_version``, for ``reason``."""

    name: str
    from_version: str
    to_version: str
    reason: str


@frozen
class ServedCertificateStale(Event):
    """An endpoint of ``name`` serves another certificate than the installed one."""

    name: str
    endpoint: str
    served_fingerprint: str
    expected_fingerprint: str


@frozen
class EndpointFailed(Event):
    """A probe of an endpoint (managed or ``[[watch]]``) failed: ``status`` and ``message`` say how."""

    owner: str
    endpoint: str
    status: str
    message: str


@frozen
class EndpointRecovered(Event):
    """An endpoint that had failed is served well again."""

    owner: str
    endpoint: str
    message: str


@frozen
class ConfigReloadRejected(Event):
    """The daemon kept its configuration: the new one at ``path`` has ``error``."""

    path: str
    error: str


@frozen
class AlertMailSent(Event):
    """A digest of alerts was handed to ``relay`` (host:port): ``route`` says which way (``relay ...``,
    ``fallback ...``, or the opt-in unverified one), ``verified`` whether the certificate of the host that took it
    verified."""

    relay: str
    route: str
    verified: bool


@frozen
class MetricsEndpointFailed(Event):
    """The daemon could not serve ``metrics_listen`` (a busy port); it keeps renewing without it."""

    listen: str
    error: str


@frozen
class TlsaRecordsPublished(Event):
    """DANE (RFC 7672): TLSA records of a certificate were added or removed on the primary."""

    name: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@frozen
class TlsaUpdateFailed(Event):
    """DANE: TLSA records could not be published, or are not answered by every authoritative server."""

    name: str
    error: str


@frozen
class MtaStsPolicyPublished(Event):
    """MTA-STS (RFC 8461): a new policy text was published for a domain, announced by a new TXT ``id``."""

    domain: str
    policy_id: str
    mx: tuple[str, ...]
    reason: str


@frozen
class TlsaPropagationLagging(Event):
    """DANE: published TLSA records are not answered yet by every authoritative server of the zone, or not
    returned DNSSEC-validated (AD) by the validating resolver; the two-TTL wait starts only when they are."""

    name: str
    servers: tuple[str, ...]  # "ns2.example.org. [2001:db8::53]:53", "resolver 127.0.0.1:53"
    reason: str  # each lagging server with why: its serial and the records it misses, or no AD


@frozen
class TlsaRecordsRetiring(Event):
    """DANE: records of a key no longer wanted stay published until every address of every MX host has
    presented the new key over the dwell time (``dane.retire_after``)."""

    name: str
    records: tuple[str, ...]
    reason: str


@frozen
class MtaStsPublishFailed(Event):
    """MTA-STS: the policy file or the TXT records of a domain could not be written."""

    domain: str
    error: str


@frozen
class RenewalWaitingForTlsa(Event):
    """DANE: a due renewal waits until the next key's TLSA records have been visible for two TTLs."""

    name: str
    phase: str
    reason: str
    until: datetime | None


@frozen
class PersistRecordExpiring(Event):
    """dns-persist-01: a record that still validates ends at its persistUntil sooner than persist_warning."""

    name: str
    record_name: str
    persist_until: datetime


@frozen
class UnsafeKeyRollover(Event):
    """DANE: the key changed before its TLSA records were ready, because expiry came too close."""

    name: str
    reason: str


@frozen
class TlsaMismatchObserved(Event):
    """DANE: an endpoint presented a certificate that no published TLSA record matches (RFC 8460
    ``tlsa-invalid``); DANE-validating senders defer mail to it (RFC 7672 section 2.2)."""

    name: str
    endpoint: str
    tlsa_name: str
    served_spki_sha256: str
    published: tuple[str, ...]
    handshakes: str  # "with SNI", "without SNI" or both
    dnssec_validated: bool


@frozen
class TlsaMatchRecovered(Event):
    """DANE: an endpoint that presented a certificate matching no TLSA record matches them again."""

    name: str
    endpoint: str
    message: str


@frozen
class TlsReportImported(Event):
    """TLS-RPT (RFC 8460): a sender's report was stored (``duplicate``: one with its report-id was already)."""

    report_id: str
    organization: str
    source: str
    failed_sessions: int
    duplicate: bool = False


@frozen
class TlsReportRefused(Event):
    """TLS-RPT: a report (or a whole mail) was not imported: where it came from and why."""

    source: str
    problem: str


@frozen
class TlsFailuresReported(Event):
    """TLS-RPT: senders reported certificate-related failures to one MX above the alert threshold."""

    receiving_mx: str
    result_type: str
    sessions: int
    organizations: tuple[str, ...]
    start: datetime
    end: datetime
    explained_by: str
    policy_domains: tuple[str, ...] = ()
    report_ids: tuple[str, ...] = ()


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out.  A subscriber that raises is logged and does not stop the others."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                logging.getLogger("certkeeper.events").exception("subscriber failed on %s", type(event).__name__)


_WARNINGS = (RenewalFailed, ReloadHookFailed, RolledBack, ServedCertificateStale, EndpointFailed, ConfigReloadRejected,
             MetricsEndpointFailed, TlsaUpdateFailed, UnsafeKeyRollover, TlsaMismatchObserved, TlsReportRefused,
             TlsFailuresReported, TlsaPropagationLagging)
_log = logging.getLogger("certkeeper")


def log_event(event: Event) -> None:
    """The journald-friendly subscriber: one line per event, worded only when its level is logged (a ``renew``
    logs WARNING and up: the line of each of its thousand installs would be built for nothing)."""
    level = logging.WARNING if isinstance(event, _WARNINGS) else logging.INFO
    if _log.isEnabledFor(level):
        _log.log(level, "%s", event.describe())
