"""Which alert each event owes: one table, pure, owning every alert key and severity.

:func:`alert_for` maps a typed event to an :class:`AlertAction`: the alert to queue (under a de-duplication key
the store remembers across restarts), the key prefixes to forget (a recovery re-arms what it ends), and the
alert owed only when forgetting ended something (``recovered``: "fine again" mails for problems that were
reported, never for ones that were not).  The :class:`~certkeeper.alerts.notifier.Notifier` is the shell that
applies it to the store.  Expiry alerts come from observations, not events:
:func:`certkeeper.alerts.rules.expiry_alert`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from certkeeper.alerts.rules import (
    Severity,
    endpoint_failed_key,
    endpoint_prefix,
    hook_prefix,
    renewal_failed_key,
    renewal_prefix,
    stale_prefix,
)
from certkeeper.events import (
    AlertMailSent,
    CertificateInstalled,
    CertificateIssued,
    CertificateVerified,
    ConfigReloadRejected,
    EndpointFailed,
    EndpointRecovered,
    Event,
    MetricsEndpointFailed,
    MtaStsPolicyPublished,
    MtaStsPublishFailed,
    PersistRecordExpiring,
    ReloadHookFailed,
    RenewalFailed,
    RolledBack,
    ServedCertificateStale,
    TlsaMatchRecovered,
    TlsaMismatchObserved,
    TlsaPropagationLagging,
    TlsaRecordsPublished,
    TlsaUpdateFailed,
    TlsFailuresReported,
    UnsafeKeyRollover,
)
from certkeeper.values import frozen


@frozen
class Alert:
    """One alert mail's content: ``subject`` without prefix and severity; ``facts`` as (label, value) rows."""

    key: str
    severity: Severity
    subject: str
    summary: str
    facts: tuple[tuple[str, str], ...] = ()
    tried: str = ""
    next_step: str = ""


@frozen
class AlertAction:
    """What an event does to the alert queue: forget these key prefixes, then queue ``recovered`` if that ended
    something and ``recovered`` is set, else ``alert``."""

    alert: Alert | None = None
    forget: tuple[str, ...] = ()
    recovered: Alert | None = None


NOTHING = AlertAction()


def alert_for(event: Event, *, issued: CertificateIssued | None = None, notify_success: bool = False) -> AlertAction:
    """The alert ``event`` owes.  ``issued``: the issuance event of an installed certificate (its serial and
    expiry go into the mail); ``notify_success``: ``[alerts] notify_success``."""
    if isinstance(event, CertificateInstalled):
        return _installed(event, issued, notify_success)
    rule = RULES.get(type(event))
    return rule(event) if rule is not None else NOTHING


def tlsa_mismatch_prefix(name: str, endpoint: str) -> str:
    return f"tlsa-mismatch:{name}:{endpoint}:"


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _renewal_failed(event: RenewalFailed) -> AlertAction:
    nxt = (f"certkeeper retries on its own at {when(event.next_attempt)}" if event.next_attempt
           else "certkeeper does not retry on its own")
    return AlertAction(Alert(
        renewal_failed_key(event.name, event.error), Severity.WARNING, f"renewal of {event.name} failed",
        f"Renewing {event.name} failed: {event.error}",
        (("certificate", event.name), ("error", event.error), ("next", nxt)),
        "requested a new certificate from the issuer; the installed one is unchanged",
        f"certkeeper renew {event.name} --force -v"))


def _hook_failed(event: ReloadHookFailed) -> AlertAction:
    return AlertAction(Alert(
        f"{hook_prefix(event.name)}{event.hook}:{_short(event.error)}", Severity.WARNING,
        f"reload hook {event.hook} failed for {event.name}", f"The reload hook {event.hook} failed: {event.error}",
        (("certificate", event.name), ("hook", event.hook), ("error", event.error)),
        "installed the new certificate and ran the reload hook", f"certkeeper hooks test {event.name}"))


def _rolled_back(event: RolledBack) -> AlertAction:
    return AlertAction(Alert(
        f"rollback:{event.name}:{event.from_version}", Severity.CRITICAL,
        f"{event.name} rolled back to {event.to_version}", f"certkeeper rolled {event.name} back: {event.reason}",
        (("certificate", event.name), ("from version", event.from_version), ("to version", event.to_version),
         ("reason", event.reason)),
        "installed the new version, reloaded, verified from outside, and restored the previous version because "
        "the check failed", f"certkeeper hooks test {event.name}"))


def _stale(event: ServedCertificateStale) -> AlertAction:
    return AlertAction(Alert(
        f"{stale_prefix(event.name)}{event.endpoint}:{event.served_fingerprint}", Severity.WARNING,
        f"{event.endpoint} serves an old certificate",
        f"{event.endpoint} still serves an old certificate of {event.name}; the daemon was not reloaded or reads "
        f"another file.",
        (("certificate", event.name), ("endpoint", event.endpoint), ("served", event.served_fingerprint),
         ("installed", event.expected_fingerprint)),
        "installed the new certificate and ran the reload hooks", f"certkeeper hooks test {event.name}"))


def _endpoint_failed(event: EndpointFailed) -> AlertAction:
    return AlertAction(Alert(
        endpoint_failed_key(event.owner, event.endpoint, event.status, event.message),
        Severity.CRITICAL if event.status.upper() in ("CRITICAL", "UNKNOWN") else Severity.WARNING,
        f"{event.endpoint} {event.message.split(':', 1)[0]}", f"{event.endpoint}: {event.message}",
        (("owner", event.owner), ("endpoint", event.endpoint), ("status", event.status),
         ("finding", event.message)),
        "probed the endpoint (TLS handshake, chain, name)", f"certkeeper check {event.endpoint}"))


def _endpoint_recovered(event: EndpointRecovered) -> AlertAction:
    return AlertAction(forget=(endpoint_prefix(event.owner, event.endpoint),), recovered=Alert(
        f"endpoint:{event.owner}:{event.endpoint}:recovered:{_stamp(event.at)}", Severity.INFO,
        f"{event.endpoint} is fine again", f"{event.endpoint}: {event.message}",
        (("owner", event.owner), ("endpoint", event.endpoint), ("now", event.message)),
        "probed the endpoint again", "nothing"))


def _verified(event: CertificateVerified) -> AlertAction:
    return AlertAction(forget=(stale_prefix(event.name), hook_prefix(event.name)))


def _installed(event: CertificateInstalled, issued: CertificateIssued | None, notify_success: bool) -> AlertAction:
    facts: tuple[tuple[str, str], ...] = (("certificate", event.name), ("version", event.version))
    if issued is not None:
        facts += (("issuer", issued.issuer), ("serial", issued.serial), ("not after", when(issued.not_after)))
    recovered = Alert(f"renewal:{event.name}:recovered:{event.version}", Severity.INFO,
                      f"{event.name} renewed after failures",
                      f"{event.name} was renewed and installed after earlier failures.", facts,
                      "renewed and installed", "nothing")
    success = Alert(f"renewal:{event.name}:installed:{event.version}", Severity.INFO, f"{event.name} renewed",
                    f"{event.name} was renewed and installed.", facts, "renewed and installed", "nothing")
    return AlertAction(success if notify_success else None, forget=(renewal_prefix(event.name),),
                       recovered=recovered)


def _tlsa_update_failed(event: TlsaUpdateFailed) -> AlertAction:
    return AlertAction(Alert(
        f"tlsa:{event.name}:{_short(event.error)}", Severity.WARNING, f"TLSA records of {event.name} not published",
        f"The DANE key rollover of {event.name} is blocked: {event.error}",
        (("certificate", event.name), ("error", event.error)),
        "published the TLSA records with an RFC 2136 update and asked every authoritative server; the key is not "
        "changed until they are visible, while the served certificate is safe",
        f"certkeeper dane show {event.name}"))


def _tlsa_lagging(event: TlsaPropagationLagging) -> AlertAction:
    servers = ", ".join(event.servers)
    return AlertAction(Alert(
        f"tlsa:{event.name}:lagging:{_short(servers)}", Severity.WARNING,
        f"TLSA records of {event.name} not visible on {servers}",
        f"The DANE key rollover of {event.name} waits: {event.reason}",
        (("certificate", event.name), ("lagging", servers), ("why", event.reason)),
        "asked every authoritative server of the zone (each address, SOA serial and TLSA RRset) and the validating "
        "resolver (AD bit); the two-TTL wait starts only when all of them answer the records",
        f"check zone transfers (NOTIFY, allow-transfer) to the lagging server, or the primary's signing; "
        f"certkeeper dane show {event.name}"))


def _tlsa_published(event: TlsaRecordsPublished) -> AlertAction:
    return AlertAction(forget=(f"tlsa:{event.name}:",))


def _mta_sts_failed(event: MtaStsPublishFailed) -> AlertAction:
    return AlertAction(Alert(
        f"mta-sts:{event.domain}:{_short(event.error)}", Severity.WARNING,
        f"MTA-STS policy of {event.domain} not published", f"Publishing the MTA-STS policy of {event.domain} "
        f"failed: {event.error}",
        (("domain", event.domain), ("error", event.error)),
        "wrote the policy file, then replaced the _mta-sts TXT record with an RFC 2136 update; senders keep using "
        "the policy they have cached",
        f"certkeeper check --mta-sts {event.domain} -v"))


def _mta_sts_published(event: MtaStsPolicyPublished) -> AlertAction:
    return AlertAction(forget=(f"mta-sts:{event.domain}:",))


def _unsafe_rollover(event: UnsafeKeyRollover) -> AlertAction:
    return AlertAction(Alert(
        f"tlsa-unsafe:{event.name}:{_short(event.reason)}", Severity.CRITICAL,
        f"{event.name} changed its key before its TLSA records were ready", f"{event.name}: {event.reason}",
        (("certificate", event.name), ("reason", event.reason)),
        "waited for the TLSA records of the next key until expiry came within unsafe_rollover_days",
        f"certkeeper dane show {event.name}; publish those records now"))


def _persist_expiring(event: PersistRecordExpiring) -> AlertAction:
    until = event.persist_until.strftime("%Y-%m-%d %H:%M UTC")
    return AlertAction(Alert(
        f"persist:{event.name}:{event.record_name}:{int(event.persist_until.timestamp())}", Severity.WARNING,
        f"the dns-persist-01 record of {event.name} ends {until}",
        f"The TXT record {event.record_name} stops validating at its persistUntil, {until}; after that, renewals "
        f"of {event.name} fail.",
        (("certificate", event.name), ("record", event.record_name), ("persistUntil", until)),
        "checked the record on every authoritative server before the order (it still validates)",
        f"raise persist_until, then certkeeper acme persist-record {event.name} --publish"))


def _tlsa_mismatch(event: TlsaMismatchObserved) -> AlertAction:
    published = ", ".join(event.published)
    return AlertAction(Alert(
        f"{tlsa_mismatch_prefix(event.name, event.endpoint)}{event.tlsa_name}:{event.served_spki_sha256}:"
        f"{_short(published)}", Severity.CRITICAL, f"{event.endpoint} matches no TLSA record of {event.name}",
        f"{event.endpoint} presents a certificate that no TLSA record at {event.tlsa_name} matches (tlsa-invalid): "
        f"DANE-validating senders defer mail to it.",
        (("certificate", event.name), ("endpoint", event.endpoint), ("served SPKI sha256", event.served_spki_sha256),
         ("seen", event.handshakes), ("TLSA name", event.tlsa_name), ("published", published),
         ("DNSSEC-validated", "yes" if event.dnssec_validated else "no")),
        "probed the endpoint (with and without SNI on SMTP) and looked up its TLSA records",
        f"certkeeper dane show {event.name}"))


def _tlsa_recovered(event: TlsaMatchRecovered) -> AlertAction:
    return AlertAction(forget=(tlsa_mismatch_prefix(event.name, event.endpoint),), recovered=Alert(
        f"tlsa-match:{event.name}:{event.endpoint}:recovered:{_stamp(event.at)}", Severity.INFO,
        f"{event.endpoint} matches its TLSA records again", f"{event.endpoint}: {event.message}",
        (("certificate", event.name), ("endpoint", event.endpoint), ("now", event.message)),
        "probed the endpoint and looked up its TLSA records again", "nothing"))


def _config_rejected(event: ConfigReloadRejected) -> AlertAction:
    return AlertAction(Alert(
        f"config:{event.path}:{_short(event.error)}", Severity.WARNING, "configuration reload rejected",
        f"The daemon kept its previous configuration: {event.error}",
        (("file", event.path), ("error", event.error)),
        "parsed the new configuration and kept running with the old one", "certkeeper config check"))


def _alert_mail_sent(event: AlertMailSent) -> AlertAction:
    key = f"relay-unverified:{event.relay}"
    if event.verified:  # the configured relay verifies again: the next unverified delivery is news again
        return AlertAction(forget=(key,)) if event.route.startswith("relay ") else NOTHING
    return AlertAction(Alert(
        key, Severity.WARNING, f"alert relay {event.relay} fails certificate verification",
        f"The alert relay {event.relay} presented a certificate that does not verify. Alert mail was sent to it "
        'anyway, without verification and without AUTH, because smtp_tls_fallback = "unverified-no-auth" allows '
        "that; whoever answered there could read or drop it.",
        (("relay", event.relay), ("sent", "without certificate verification, without AUTH")),
        "the relay with verification, then fallback_smtp_host if set",
        "renew or fix the relay's certificate, or set smtp_ca_bundle / fallback_smtp_host"))


def _metrics_failed(event: MetricsEndpointFailed) -> AlertAction:
    return AlertAction(Alert(
        f"metrics:{event.listen}:{_short(event.error)}", Severity.WARNING, f"metrics endpoint {event.listen} down",
        f"The daemon could not listen on {event.listen} for Prometheus: {event.error}; it keeps renewing",
        (("metrics_listen", event.listen), ("error", event.error)),
        "kept renewing without the metrics endpoint", "free the port or change metrics_listen, then SIGHUP"))


# event type -> its rule; an event type not listed owes no alert.
def _tls_failures_reported(event: TlsFailuresReported) -> AlertAction:
    """Once per MX, result type and first day reported: the reports of the next days alert again if it goes on."""
    organizations = ", ".join(event.organizations)
    window = f"{when(event.start)} to {when(event.end)}"
    ids = ", ".join(event.report_ids[:10]) + (" ..." if len(event.report_ids) > 10 else "")
    return AlertAction(Alert(
        f"tlsrpt:{event.receiving_mx}:{event.result_type}:{event.start.astimezone(UTC):%Y-%m-%d}",
        Severity.CRITICAL,
        f"{event.receiving_mx}: senders report {event.sessions} sessions failed with {event.result_type}",
        f"{organizations} reported {event.sessions} failed TLS sessions to {event.receiving_mx} "
        f"({event.result_type}) from {window}: {event.explained_by}.",
        (("receiving MX", event.receiving_mx), ("result type", event.result_type),
         ("failed sessions", str(event.sessions)), ("reported by", organizations), ("window", window),
         ("policy domains", ", ".join(event.policy_domains)), ("most likely cause", event.explained_by),
         ("report ids", ids)),
        "grouped the TLS reports (RFC 8460) of the last three days by MX and result type, and compared them with "
        "certkeeper's installs, rollbacks, failed renewals and TLSA changes of the certificates naming that MX",
        f"certkeeper check smtp://{event.receiving_mx}:25 --dane; certkeeper status; certkeeper tlsrpt summary"))


RULES: dict[type[Any], Callable[[Any], AlertAction]] = {
    RenewalFailed: _renewal_failed,
    ReloadHookFailed: _hook_failed,
    RolledBack: _rolled_back,
    ServedCertificateStale: _stale,
    EndpointFailed: _endpoint_failed,
    EndpointRecovered: _endpoint_recovered,
    CertificateVerified: _verified,
    TlsaUpdateFailed: _tlsa_update_failed,
    TlsaPropagationLagging: _tlsa_lagging,
    TlsaRecordsPublished: _tlsa_published,
    UnsafeKeyRollover: _unsafe_rollover,
    MtaStsPublishFailed: _mta_sts_failed,
    MtaStsPolicyPublished: _mta_sts_published,
    PersistRecordExpiring: _persist_expiring,
    TlsaMismatchObserved: _tlsa_mismatch,
    TlsaMatchRecovered: _tlsa_recovered,
    ConfigReloadRejected: _config_rejected,
    AlertMailSent: _alert_mail_sent,
    TlsFailuresReported: _tls_failures_reported,
    MetricsEndpointFailed: _metrics_failed,
}
