"""The composition root: configuration in, the wired parts out.  The CLI and the daemon both start here."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from certkeeper import pki
from certkeeper.config import CaIssuerConfig, Config, IssuerConfig, Settings
from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.events import (
    Event,
    EventBus,
    MtaStsPolicyPublished,
    MtaStsPublishFailed,
    Subscriber,
    TlsaRecordsPublished,
    log_event,
)
from certkeeper.issuers.base import Issuer
from certkeeper.renewal.lifecycle import Outcome, Renewer
from certkeeper.store import EndpointRecord, HistoryRecord, Store
from certkeeper.values import mutable

if TYPE_CHECKING:
    from certkeeper.alerts.notifier import Notifier
    from certkeeper.issuers.caa import CaaVerdict
    from certkeeper.monitoring.statuspage import CertificateView, EndpointView
    from certkeeper.renewal.observe import Observation
    from certkeeper.store.fleet import Fleet
    from certkeeper.tlsrpt.service import Tlsrpt


def open_store(config: Config) -> Store:
    """This node's own store: SQLite under ``state_dir``.

    With ``database`` set (a fleet), PostgreSQL holds what the nodes share (:func:`open_fleet`), while each node's
    decisions, history and alert queue stay local: a node must keep serving, verifying and alerting while the
    database is unreachable.  :class:`~certkeeper.store.postgres.PostgresStore` passes the same contract.
    """
    from certkeeper.store.sqlite import SqliteStore

    return SqliteStore(config.settings.state_dir)


def open_fleet(config: Config, store: Store, clock: Callable[[], datetime]) -> Fleet | None:
    """The fleet coordination when ``database`` is set; it connects on first use, so a node starts without it."""
    if not config.settings.database:
        return None
    from certkeeper.store.fleet import open_fleet as open_configured_fleet

    return open_configured_fleet(config, store, clock)


def build_issuer(config: IssuerConfig, settings: Settings) -> Issuer:
    """The one place that knows which class implements which ``type`` of issuer."""
    if isinstance(config, CaIssuerConfig):
        from certkeeper.issuers.internal_ca import InternalCaIssuer

        return InternalCaIssuer(config)
    from certkeeper.issuers.acme import AcmeIssuer

    return AcmeIssuer(config, settings.state_dir)


def check_caa(config: Config, *, resolver: str | None = None,
              configured_only: bool = False) -> list[tuple[str, CaaVerdict]]:
    """The CAA pre-flight of every ACME certificate, as an order would run it: (certificate name, verdict).

    ``resolver`` overrides each issuer's ``caa_resolver`` ("system" when neither is set); ``configured_only``
    skips issuers without ``caa_resolver`` (``doctor``: no resolver asked unless the configuration says so).
    For ``doctor`` and ``check --caa``; the order itself runs the same check (:class:`AcmeIssuer`).
    """
    from certkeeper.config import AcmeIssuerConfig
    from certkeeper.issuers.acme import AcmeIssuer
    from certkeeper.values import replace

    found: list[tuple[str, CaaVerdict]] = []
    for certificate in config.certificates.values():
        issuer_config = config.issuers.get(certificate.issuer)
        if not isinstance(issuer_config, AcmeIssuerConfig):
            continue
        if configured_only and not issuer_config.caa_resolver:
            continue
        chosen = resolver or issuer_config.caa_resolver or "system"
        issuer = AcmeIssuer(replace(issuer_config, caa_resolver=chosen), config.settings.state_dir)
        found += [(certificate.name, verdict) for verdict in issuer.caa_verdicts(certificate.domains)]
    return found


class Issuers:
    """Issuers built on first use (so a pass with nothing due never imports acme), once per process."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._built: dict[str, Issuer] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Issuer:
        with self._lock:
            if name not in self._built:
                issuer_config = self._config.issuers.get(name)
                if issuer_config is None:
                    raise ConfigError(self._config.path, "issuers", f"no issuer named {name!r}",
                                      "an issuer defined under [issuers]")
                self._built[name] = build_issuer(issuer_config, self._config.settings)
            return self._built[name]


@mutable
class App:
    config: Config
    store: Store
    bus: EventBus
    issuers: Issuers
    renewer: Renewer
    clock: Callable[[], datetime]
    notifier: Notifier | None = None
    fleet: Fleet | None = None
    mta_sts_wake: datetime | None = None  # when a pending MTA-STS narrowing becomes due
    tlsrpt: Tlsrpt | None = None

    def observe_endpoints(self, names: Sequence[str] | None = None) -> list[Observation]:
        """Probe the managed endpoints (and, for a full pass, the ``[[watch]]`` ones); record and publish."""
        items = self.renewer.watched(self.renewer.select(names))
        if not names and self.config.watch:
            from certkeeper.renewal.observe import Watched

            items += [Watched(w.name, target, ca_file=w.ca_file, servername=w.servername)
                      for w in self.config.watch for target in w.endpoints]
        if not items:
            return []  # nothing to probe: the prober is not even imported
        from certkeeper.renewal.observe import observe, record

        now = self.clock()
        observations = observe(items, now=now, concurrency=50)
        for event in record(self.store, observations, now=now):
            self.bus.publish(event)
        return observations

    def run_pass(self, names: Sequence[str] | None = None, *, force: bool = False,
                 dry_run: bool = False) -> list[Outcome]:
        """What ``renew`` and each daemon wake-up do: observe, renew what is due, reload what is stale."""
        stale: frozenset[str] = frozenset()
        if not dry_run:
            stale = frozenset(o.watched.owner for o in self.observe_endpoints(names) if o.stale)
        if not dry_run and not names:
            self.publish_mta_sts()
        outcomes = self.renewer.run(names, force=force, dry_run=dry_run, stale=stale)
        if self.notifier is not None and not dry_run:
            self.raise_expiry_alerts()
            self.notifier.deliver(self.clock())
        return outcomes

    def publish_mta_sts(self) -> None:
        """Each ``[mta_sts.<domain>]``: the policy (widened before narrowed), then its TXT records.

        Before the renewals, so a widened policy is what the MTA-STS guard holds a renewed certificate against.
        """
        if not self.config.mta_sts:
            return
        from certkeeper.mtasts.publish import publish_domain

        self.mta_sts_wake = None
        for mta in self.config.mta_sts.values():
            now = self.clock()
            try:
                published = publish_domain(mta, self.config, now)
            except CertkeeperError as exc:  # MtaStsPublishError, or an unreadable state file
                self.bus.publish(MtaStsPublishFailed(now, mta.domain, str(exc)))
                continue
            narrow_at = published.decision.narrow_at
            if narrow_at is not None and (self.mta_sts_wake is None or narrow_at < self.mta_sts_wake):
                self.mta_sts_wake = narrow_at  # the daemon wakes then to narrow the policy
            if published.changed or published.dns_updated:
                self.bus.publish(MtaStsPolicyPublished(now, mta.domain, published.policy_id,
                                                       published.decision.policy.mx, published.decision.reason))

    def raise_expiry_alerts(self) -> None:
        """Expiry thresholds crossed by installed certificates and by what ``[[watch]]`` endpoints serve."""
        assert self.notifier is not None
        now = self.clock()
        for certificate in self.config.certificates.values():
            current = self.renewer.home(certificate).readable_current()
            for pair in current.pairs if current else ():
                self.notifier.observe_certificate(certificate.name, certificate.domains[0], pair.not_before,
                                                  pair.not_after, now, names=certificate.domains)
        watch = {w.name: w for w in self.config.watch}
        for record in self.store.endpoints():
            if record.owner in watch:
                self.notifier.observe_endpoint(record, now, warn_days=watch[record.owner].warn_days)

    def render_metrics(self) -> str:
        return render_all_metrics(self.config, self.store)

    def render_status_page(self) -> str:
        """The status page at ``/`` (:mod:`certkeeper.monitoring.statuspage`), from the store and the installed
        versions; contacts nothing."""
        from certkeeper.monitoring.statuspage import render_page

        now = self.clock()
        certificates, watched = self.status_views(now)
        return render_page(certificates, watched, now)

    def status_views(self, now: datetime) -> tuple[list[CertificateView], list[tuple[str, list[EndpointView]]]]:
        from certkeeper.monitoring.blackbox import reason_code
        from certkeeper.monitoring.statuspage import CertificateView, EndpointView, Mark, VersionSpan, served_state

        records: dict[str, list[EndpointRecord]] = {}
        for record in self.store.endpoints():
            records.setdefault(record.owner, []).append(record)
        alerts: dict[str, list[Mark]] = {}
        for alert in self.store.recent_alerts():
            owner = alert.key.split(":")[1] if alert.key.count(":") >= 2 else ""
            alerts.setdefault(owner, []).append(Mark(alert.created_at, "alert", f"{alert.severity} {alert.subject}"))

        def endpoint(record: EndpointRecord, served: str) -> EndpointView:
            return EndpointView(record.endpoint, served, record.status, reason_code(record.details, record.status),
                                record.message, record.at)

        certificates = []
        for certificate in self.config.certificates.values():
            home = self.renewer.home(certificate)
            current = home.readable_current()  # what cannot be read is the pass's to report (last_error)
            decision = self.renewer.decide(certificate, now)
            state = self.store.get_state(certificate.name)
            fingerprints = current.fingerprints if current else None
            marks = [Mark(r.at, f"renewal-{r.result}", r.detail or r.version)
                     for r in self.store.renewals(certificate.name, limit=50)]
            certificates.append(CertificateView(
                name=certificate.name, domains=certificate.domains, issuer=certificate.issuer,
                not_after=current.not_after if current else None,
                next_action="renew now" if decision.due else f"renew at {decision.renew_at:%Y-%m-%d %H:%M} UTC",
                next_reason=decision.reason, failures=state.failures if state else 0,
                last_error=state.last_error if state else "",
                endpoints=tuple(endpoint(r, served_state(r.status, r.fingerprint, r.stale, fingerprints))
                                for r in records.get(certificate.name, [])),
                versions=tuple(VersionSpan(v.id, v.not_before, v.not_after, current is not None and v.id == current.id)
                               for v in home.versions()),
                marks=tuple(marks + alerts.get(certificate.name, []))))
        watched = [(w.name, [endpoint(r, "watched") for r in records.get(w.name, [])]) for w in self.config.watch]
        return certificates, watched

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        self.store.close()


def render_all_metrics(config: Config, store: Store) -> str:
    """What the metrics listener and ``certkeeper metrics`` serve: the store's and the installed certificates'
    families, then the TLS reports' (RFC 8460) when the store holds any."""
    from certkeeper.monitoring.metrics import escape_label_value, installed_certificates, render_store_metrics
    from certkeeper.tlsrpt.summary import render_metrics as render_tlsrpt_metrics

    statuses = []
    if config.mta_sts:
        from certkeeper.mtasts.status import domain_statuses

        statuses = domain_statuses(config)
    text = render_store_metrics(store, installed_certificates(config), statuses)
    totals = store.tls_session_totals()
    if totals:
        text += render_tlsrpt_metrics(totals, store.tls_last_reports(), escape_label_value)
    return text


def remember_history(store: Store) -> Subscriber:
    """The subscriber that keeps what certkeeper did besides renewing (TLSA publishes, MTA-STS policies), for
    TLS-RPT correlation."""
    def remember(event: Event) -> None:
        if isinstance(event, TlsaRecordsPublished):
            detail = "; ".join(part for part in (
                "added " + ", ".join(event.added) if event.added else "",
                "removed " + ", ".join(event.removed) if event.removed else "") if part)
            store.add_history(HistoryRecord(event.name, event.at, "dane-publish", detail))
        elif isinstance(event, MtaStsPolicyPublished):
            detail = f"id {event.policy_id}, mx {', '.join(event.mx)}; {event.reason}"
            store.add_history(HistoryRecord(event.domain, event.at, "mta-sts-policy", detail))  # name: the domain

    return remember


def build_app(config: Config, *, store: Store | None = None,
              clock: Callable[[], datetime] = pki.now_utc) -> App:
    store = store or open_store(config)
    bus = EventBus()
    bus.subscribe(log_event)
    bus.subscribe(remember_history(store))
    issuers = Issuers(config)
    fleet = open_fleet(config, store, clock)
    renewer = Renewer(config, store, issuers, bus, clock, fleet=fleet)
    notifier = None
    if config.alerts is not None:  # imported only when configured: `renew` from cron starts faster without it
        from certkeeper.alerts.notifier import subscribe_notifier

        notifier = subscribe_notifier(config, store, bus)
    tlsrpt = None
    if config.tlsrpt is not None:
        from certkeeper.tlsrpt.service import Tlsrpt

        certificates = {c.name: c.domains for c in config.certificates.values()}
        tlsrpt = Tlsrpt(config.tlsrpt, store, bus, certificates, clock)
    return App(config, store, bus, issuers, renewer, clock, notifier, fleet, tlsrpt=tlsrpt)
