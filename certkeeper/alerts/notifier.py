"""Alerts by email: events and observations become alert records in the store, pending ones go out as one digest.

The flow (:mod:`certkeeper.alerts.relay` hands the mail to SMTP):

1. :meth:`Notifier.handle` (an :class:`~certkeeper.events.EventBus` subscriber) and
   :meth:`Notifier.observe_certificate` decide (with :mod:`certkeeper.alerts.rules`) whether an alert is owed and
   queue it with :meth:`Store.enqueue_alert`, under a de-duplication key the store remembers across restarts.
2. :meth:`Notifier.deliver` sends everything pending as one digest mail (``digest = "immediate"``) or once a UTC
   day (``"daily"``; CRITICAL alerts do not wait).  The store marks what a relay accepted; a failure is logged,
   recorded on the alerts, and retried on the next call.  Nothing raises into the daemon, nothing is dropped.

The alert path must not depend on what it reports on: when the relay's own certificate is the one that expired,
the mail goes through ``fallback_smtp_host``, and (opt-in, without AUTH) to the configured relay without certificate
verification, with a warning in the log.
"""

from __future__ import annotations

import html
import json
import logging
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from certkeeper.alerts import rules as alert_rules
from certkeeper.alerts.catalog import alert_for, when
from certkeeper.alerts.relay import UNVERIFIED_ROUTE, send_message
from certkeeper.alerts.rules import Severity
from certkeeper.config import AlertsConfig, Config
from certkeeper.errors import AlertDeliveryFailed
from certkeeper.events import (
    AlertMailSent,
    CertificateInstalled,
    CertificateIssued,
    Event,
    EventBus,
)
from certkeeper.store import AlertRecord, EndpointRecord, Store
from certkeeper.values import field, frozen, mutable

log = logging.getLogger("certkeeper.alerts.notifier")

SUBJECT_PREFIX = "[certkeeper]"


@frozen
class AlertContent:
    """What one alert says, stored as JSON in the alert's body so the digest can render text and HTML."""

    summary: str
    facts: tuple[tuple[str, str], ...] = ()
    tried: str = ""
    next_step: str = ""

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary, "facts": [list(f) for f in self.facts],
                           "tried": self.tried, "next": self.next_step})

    @classmethod
    def from_body(cls, body: str) -> AlertContent:
        """Tolerates bodies that are plain text (queued by something other than this module)."""
        try:
            data = json.loads(body)
            facts = tuple((str(k), str(v)) for k, v in data.get("facts", []))
            return cls(str(data["summary"]), facts, str(data.get("tried", "")), str(data.get("next", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(body)


@frozen
class DeliveryReport:
    """What :meth:`Notifier.deliver` did: ``sent`` alerts through ``route``, or ``error`` (they stay pending)."""

    sent: int = 0
    held: int = 0
    route: str = ""
    error: str = ""


@mutable
class Notifier:
    """Turns events and observations into alerts, and alerts into digest mails."""

    config: AlertsConfig
    store: Store
    _issued: dict[str, CertificateIssued] = field(default_factory=dict)

    # -- raising -----------------------------------------------------------------------------------------------

    def raise_alert(
        self,
        key: str,
        severity: Severity | str,
        subject: str,
        now: datetime,
        *,
        summary: str = "",
        facts: Sequence[tuple[str, str]] = (),
        tried: str = "",
        next_step: str = "",
    ) -> AlertRecord | None:
        """Queue an alert unless ``key`` was raised before (pending or sent); returns the record or None.

        ``subject`` is the subject line without prefix and severity (``mail.example.org expires in 2 days``).
        """
        content = AlertContent(summary or subject, tuple(facts), tried, next_step)
        record = self.store.enqueue_alert(key, str(severity), subject, content.to_json(), now)
        if record is not None:
            log.info("alert queued: %s %s (%s)", severity, subject, key)
        return record

    def observe_certificate(
        self,
        owner: str,
        subject: str,
        not_before: datetime,
        not_after: datetime,
        now: datetime,
        *,
        names: Sequence[str] = (),
        warn_days: Sequence[int] | None = None,
        managed: bool = True,
        endpoint: str = "",
    ) -> AlertRecord | None:
        """Raise the expiry alert owed for a certificate at ``now``: the tightest threshold it crossed.

        ``owner`` is the certificate's name (managed) or the ``[[watch]]`` entry's name; ``endpoint`` says where a
        watched certificate was seen.  ``warn_days`` overrides ``[alerts] warn_days`` (a watch entry's own).
        """
        decision = alert_rules.expiry_alert(
            owner, subject, not_before, not_after, warn_days or self.config.warn_days, now)
        if decision is None:
            return None
        what = alert_rules.describe_remaining(decision.remaining)
        facts = [("certificate", owner if managed else f"{owner} (watched)"), ("subject", subject)]
        if names:
            facts.append(("names", ", ".join(names)))
        if endpoint:
            facts.append(("endpoint", endpoint))
        facts += [("not after", when(not_after)), ("threshold", _threshold_words(decision.threshold))]
        if managed:
            tried = "certkeeper renews before this point; this certificate is still installed, so renewal has " \
                    "not succeeded yet (see the renewal alerts and `certkeeper status`)"
            next_step = f"certkeeper renew {owner} --force"
        else:
            tried = "nothing: certkeeper only watches this certificate; its operator must renew it"
            next_step = f"certkeeper check {endpoint}" if endpoint else "tell the operator of this server"
        return self.raise_alert(
            decision.key, decision.severity, f"{subject} {what}", now,
            summary=f"The certificate for {subject} {what}.", facts=facts, tried=tried, next_step=next_step)

    def observe_endpoint(
        self, record: EndpointRecord, now: datetime, *, warn_days: Sequence[int] | None = None, managed: bool = False,
    ) -> AlertRecord | None:
        """:meth:`observe_certificate` for what an endpoint served, read from the stored probe result.

        ``record.details`` is the probe's JSON (``certificate.{subject, not_before, not_after,
        subject_alternative_names}``); without a ``not_before`` the lifetime is unknown and the thresholds are
        taken as written.
        """
        certificate = record.details.get("certificate") if isinstance(record.details, dict) else None
        if not isinstance(certificate, dict):
            certificate = {}
        not_after = _parse_time(certificate.get("not_after")) or record.not_after
        if not_after is None:
            return None
        not_before = _parse_time(certificate.get("not_before")) or datetime.min.replace(tzinfo=UTC)
        subject = _subject_name(str(certificate.get("subject") or "")) or record.endpoint
        names = [str(n) for n in certificate.get("subject_alternative_names") or ()]
        return self.observe_certificate(record.owner, subject, not_before, not_after, now, names=names,
                                        warn_days=warn_days, managed=managed, endpoint=record.endpoint)

    def handle(self, event: Event) -> None:
        """The :class:`~certkeeper.events.EventBus` subscriber: applies :func:`~certkeeper.alerts.catalog.alert_for`."""
        if isinstance(event, CertificateIssued):  # its serial and expiry go into the installed mail
            self._issued[event.name] = event
            return
        issued = self._issued.pop(event.name, None) if isinstance(event, CertificateInstalled) else None
        action = alert_for(event, issued=issued, notify_success=self.config.notify_success)
        forgotten = sum(self.store.forget_alerts(prefix) for prefix in action.forget)
        alert = action.recovered if forgotten and action.recovered is not None else action.alert
        if alert is not None:
            self.raise_alert(alert.key, alert.severity, alert.subject, event.at, summary=alert.summary,
                             facts=alert.facts, tried=alert.tried, next_step=alert.next_step)

    # -- delivering --------------------------------------------------------------------------------------------

    def deliver(self, now: datetime, *, force: bool = False) -> DeliveryReport:
        """Send everything pending as one digest mail, when the digest setting says it is time.  Never raises."""
        try:
            return self._deliver(now, force)
        except Exception as exc:  # the daemon must keep running; the alerts stay pending
            log.exception("alert delivery failed, will retry")
            return DeliveryReport(error=str(exc))

    def _deliver(self, now: datetime, force: bool) -> DeliveryReport:
        pending = self.store.pending_alerts()
        markers = [a for a in pending if a.key.startswith("digest:")]
        if markers:  # left pending by a crash between queueing and marking; they are bookkeeping, not news
            self.store.mark_alert_attempt([a.id for a in markers], now, None)
        alerts = [a for a in pending if not a.key.startswith("digest:")]
        day_key = alert_rules.digest_day_key(now)
        if not alert_rules.digest_due(self.config.digest, [a.severity for a in alerts],
                                      self.store.alert_seen(day_key), force=force):
            return DeliveryReport(held=len(alerts))
        message = compose_digest(alerts, self.config, now)
        ids = [a.id for a in alerts]
        try:
            route = send_message(self.config, message)
        except AlertDeliveryFailed as exc:
            log.error("%s; %d alert(s) stay pending and are retried on the next run", exc, len(ids))
            self.store.mark_alert_attempt(ids, now, exc.message)
            return DeliveryReport(held=len(ids), error=exc.message)
        self.store.mark_alert_attempt(ids, now, None)
        if self.config.digest == "daily":
            marker = self.store.enqueue_alert(day_key, "INFO", "daily digest sent", "", now)
            if marker is not None:
                self.store.mark_alert_attempt([marker.id], now, None)
        log.info("sent %d alert(s) in one mail via %s", len(ids), route)
        unverified = route.startswith(UNVERIFIED_ROUTE)
        self.handle(AlertMailSent(now, f"{self.config.smtp_host}:{self.config.smtp_port}", route, not unverified))
        if unverified and self.store.pending_alerts():
            self._deliver(now, force)  # the alert about the unverified relay, right behind the mail it concerns
        return DeliveryReport(sent=len(ids), route=route)

    def send_test(self, now: datetime) -> str:
        """Send a test mail now, outside the queue; returns the route used or raises AlertDeliveryFailed."""
        record = AlertRecord(0, "test", now, "INFO", "test mail", AlertContent(
            "This is a test mail from certkeeper: alerts reach you through these settings.",
            facts=(("relay", f"{self.config.smtp_host}:{self.config.smtp_port} ({self.config.smtp_security})"),
                   ("sent by", socket.getfqdn())),
            tried="nothing to try: this is a test", next_step="nothing").to_json())
        return send_message(self.config, compose_digest([record], self.config, now))


# -- composing -------------------------------------------------------------------------------------------------


def compose_digest(alerts: Sequence[AlertRecord], config: AlertsConfig, now: datetime) -> EmailMessage:
    """One mail for ``alerts``: subject with the worst severity (and a count), text and HTML parts."""
    ordered = sorted(alerts, key=lambda a: (-alert_rules.worst_severity([a.severity]).rank, a.id))
    worst = alert_rules.worst_severity([a.severity for a in alerts])
    first = ordered[0].subject if ordered else "nothing pending"
    if len(ordered) > 1:
        subject = f"{SUBJECT_PREFIX} {worst} {len(ordered)} alerts: {first}, +{len(ordered) - 1} more"
    else:
        subject = f"{SUBJECT_PREFIX} {worst} {first}"
    contents = [(a, AlertContent.from_body(a.body)) for a in ordered]
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = make_msgid("certkeeper", domain=config.sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    message.set_content(_text_part(contents))
    message.add_alternative(_html_part(contents, subject), subtype="html")
    return message


def _text_part(contents: Sequence[tuple[AlertRecord, AlertContent]]) -> str:
    lines: list[str] = []
    for alert, content in contents:
        lines += [f"{alert.severity}: {alert.subject}", "", content.summary, ""]
        lines += [f"  {name}: {value}" for name, value in content.facts]
        if content.tried:
            lines.append(f"  already tried: {content.tried}")
        if content.next_step:
            lines.append(f"  run next: {content.next_step}")
        lines += [f"  raised: {when(alert.created_at)}", "", "-" * 40, ""]
    lines.append("certkeeper sends each alert once; `certkeeper status` shows the current state.")
    return "\n".join(lines) + "\n"


_COLOURS = {"CRITICAL": "#b00020", "WARNING": "#a05a00", "INFO": "#1b5e20"}


def _html_part(contents: Sequence[tuple[AlertRecord, AlertContent]], title: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<title>{e(title)}</title></head><body style=\"font-family:sans-serif;max-width:40em\">"]
    for alert, content in contents:
        colour = _COLOURS.get(alert.severity, "#333")
        parts.append(f"<h2 style=\"color:{colour};font-size:1.1em\">{e(alert.severity)}: {e(alert.subject)}</h2>")
        parts.append(f"<p>{e(content.summary)}</p>")
        rows = [*content.facts]
        if content.tried:
            rows.append(("already tried", content.tried))
        rows.append(("raised", when(alert.created_at)))
        parts.append("<table style=\"border-collapse:collapse\">")
        parts += [f"<tr><th style=\"text-align:left;padding:2px 8px 2px 0;vertical-align:top\">{e(name)}</th>"
                  f"<td style=\"padding:2px 0\">{e(value)}</td></tr>" for name, value in rows]
        parts.append("</table>")
        if content.next_step:
            parts.append(f"<p>Run next: <code>{e(content.next_step)}</code></p>")
        parts.append("<hr>")
    parts.append("<p style=\"color:#666\">certkeeper sends each alert once; <code>certkeeper status</code> "
                 "shows the current state.</p></body></html>")
    return "\n".join(parts) + "\n"


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _subject_name(subject: str) -> str:
    """``CN=mail.example.org,O=...`` -> ``mail.example.org``; other spellings are kept as they are."""
    for part in subject.split(","):
        key, _, value = part.strip().partition("=")
        if key.upper() == "CN" and value:
            return value
    return subject


def subscribe_notifier(config: Config, store: Store, bus: EventBus) -> Notifier | None:
    """The wiring for the composition root: a Notifier subscribed to ``bus``, or None without ``[alerts]``."""
    if config.alerts is None:
        return None
    notifier = Notifier(config.alerts, store)
    bus.subscribe(notifier.handle)
    return notifier


def _threshold_words(threshold: alert_rules.Threshold | None) -> str:
    if threshold is None:
        return "expired"
    applied = threshold.before.total_seconds() / 86400
    if abs(applied - threshold.days) < 1e-9:
        return f"{threshold.days} days"
    return f"{threshold.days} days, scaled to {applied:.1f} days for this short-lived certificate"


