"""``certkeeper daemon``: the long-running form.  The only module that imports APScheduler.

One job does the work: a pass (:meth:`certkeeper.app.App.run_pass`) that observes every endpoint, renews what
is due and reloads what is stale.  After each pass the job is scheduled again for the earliest ``next_check``
the pass's outcomes carry (at the latest ``check_interval`` from now; the daemon decides nothing itself), so a
daemon with nothing due sleeps until then: idle means idle, no polling.  Pending alert mail is retried on its own timer.

Signals: SIGHUP re-reads the configuration (an invalid one is rejected, the old one kept, and an alert
raised); SIGTERM and SIGINT let a pass in flight finish (every step of a pass leaves a consistent install:
see :mod:`certkeeper.store.versions`) and then exit.  Under systemd ``Type=notify`` the daemon reports READY,
RELOADING and STOPPING through ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from certkeeper import pki
from certkeeper.app import App, build_app
from certkeeper.config import Config, load_config
from certkeeper.errors import CertkeeperError
from certkeeper.events import ConfigReloadRejected, MetricsEndpointFailed
from certkeeper.renewal.lifecycle import Outcome
from certkeeper.renewal.policy import MIN_RETRY, Result

log = logging.getLogger("certkeeper.daemon")

PASS_JOB = "pass"
ALERTS_JOB = "alerts"
TLSRPT_JOB = "tlsrpt"
ALERT_RETRY = timedelta(minutes=5)


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``, silently nothing elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", address, exc)


class Daemon:
    def __init__(self, config_path: Path, config: Config, *,
                 clock: Callable[[], datetime] = pki.now_utc) -> None:
        self.config_path = config_path
        self.clock = clock
        self.app: App = build_app(config, clock=clock)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._metrics_stop: Callable[[], None] | None = None
        self._policy_servers: list[Callable[[], None]] = []
        self._tlsrpt_version = ""
        # Held by a pass from start to end: a SIGHUP swaps the app only between passes, so a pass in flight
        # finishes on the app (store, issuers) it started with (issue 21.7: "Cannot operate on a closed database").
        self._pass_lock = threading.Lock()
        self.passes = 0
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        for signum, handler in ((signal.SIGHUP, self._on_hup), (signal.SIGTERM, self._on_term),
                                (signal.SIGINT, self._on_term)):
            signal.signal(signum, handler)
        self.start()
        notify_systemd("READY=1\nSTATUS=watching " + self._summary())
        log.info("certkeeper daemon started: %s", self._summary())
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.reload_config()
        notify_systemd("STOPPING=1")
        log.info("stopping: letting a pass in flight finish")
        self.stop()
        log.info("certkeeper daemon stopped")
        return 0

    def start(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(self._pass, DateTrigger(self.clock()), id=PASS_JOB, name="renewal pass")
        self.scheduler.add_job(self._deliver_alerts, IntervalTrigger(seconds=ALERT_RETRY.total_seconds()),
                               id=ALERTS_JOB, name="alert delivery")
        self._start_metrics()
        self._start_policy_servers()
        self._start_tlsrpt()

    def stop(self) -> None:
        if self._metrics_stop is not None:
            self._metrics_stop()
            self._metrics_stop = None
        self._stop_policy_servers()
        self._stop_tlsrpt()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.app.close()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.app.fleet is not None:
            self.app.fleet.stopping.set()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    # -- configuration -----------------------------------------------------------------------------------------

    def reload_config(self) -> bool:
        """Re-read the configuration; keep the old one (and say so loudly) when the new one is invalid."""
        notify_systemd("RELOADING=1")
        try:
            config = load_config(self.config_path)
        except CertkeeperError as exc:
            log.error("configuration reload rejected, keeping the running configuration: %s", exc)
            self.app.bus.publish(ConfigReloadRejected(self.clock(), str(self.config_path), str(exc)))
            notify_systemd("READY=1")
            return False
        # Let a pass in flight finish with the old configuration before swapping.
        self.scheduler.pause()
        try:
            new = build_app(config, clock=self.clock)
            with self._pass_lock:
                self._stop_tlsrpt()
                old, self.app = self.app, new
            old.close()
            self._restart_metrics()
            self._stop_policy_servers()
            self._start_policy_servers()
            self._start_tlsrpt()
        finally:
            self.scheduler.resume()
        self._schedule_pass(self.clock())
        log.info("configuration reloaded: %s", self._summary())
        notify_systemd("READY=1\nSTATUS=watching " + self._summary())
        return True

    # -- jobs --------------------------------------------------------------------------------------------------

    def _pass(self) -> None:
        with self._pass_lock:
            self._pass_with(self.app)

    def _pass_with(self, app: App) -> None:
        outcomes: list[Outcome] = []
        try:
            outcomes = app.run_pass()
            for outcome in outcomes:
                if outcome.result != Result.NOT_DUE:
                    log.info("%s: %s: %s", outcome.name, outcome.result, outcome.detail)
        except CertkeeperError as exc:
            log.error("renewal pass failed: %s", exc)
        except Exception:
            log.exception("renewal pass failed unexpectedly")
        finally:
            self.passes += 1
            self._serve_tlsrpt_certificate()
            if not self._stop.is_set():
                self._schedule_pass(self._next_wake(app, outcomes))

    def _deliver_alerts(self) -> None:
        if self.app.notifier is not None:
            self.app.notifier.deliver(self.clock())

    def _next_wake(self, app: App, outcomes: list[Outcome]) -> datetime:
        """The earliest ``next_check`` of the pass; after a pass that failed as a whole, the shortest retry."""
        now = self.clock()
        ceiling = now + app.config.settings.check_interval
        moments = [o.next_check for o in outcomes if o.next_check is not None]
        if len(outcomes) < len(app.config.certificates):  # the pass failed as a whole: the shortest retry
            moments.append(now + MIN_RETRY)
        if app.mta_sts_wake is not None:
            moments.append(max(app.mta_sts_wake, now))
        return min([*moments, ceiling])

    def _schedule_pass(self, when: datetime) -> None:
        self.scheduler.add_job(self._pass, DateTrigger(when), id=PASS_JOB, name="renewal pass",
                               replace_existing=True)
        log.debug("next pass at %s", when.isoformat())

    def next_pass_at(self) -> datetime | None:
        job = self.scheduler.get_job(PASS_JOB)
        return job.next_run_time if job else None

    # -- TLS reports (RFC 8460) ------------------------------------------------------------------------------

    def _start_tlsrpt(self) -> None:
        tlsrpt = self.app.tlsrpt
        if tlsrpt is None:
            return
        if tlsrpt.config.imap is not None:
            self.scheduler.add_job(self._fetch_tlsrpt, IntervalTrigger(
                seconds=tlsrpt.config.fetch_interval.total_seconds()), next_run_time=self.clock(),
                id=TLSRPT_JOB, name="TLS report fetch", replace_existing=True)
        self._serve_tlsrpt_certificate()

    def _fetch_tlsrpt(self) -> None:
        tlsrpt = self.app.tlsrpt
        if tlsrpt is None:
            return
        try:
            tlsrpt.fetch()
        except CertkeeperError as exc:
            log.error("%s", exc)
        except Exception:
            log.exception("fetching TLS reports failed unexpectedly")
        if self.app.notifier is not None:
            self.app.notifier.deliver(self.clock())

    def _serve_tlsrpt_certificate(self) -> None:
        """Start the POST endpoint once its certificate is installed; serve each new version from then on."""
        tlsrpt = self.app.tlsrpt
        if tlsrpt is None or tlsrpt.config.listen is None or tlsrpt.config.certificate is None:
            return
        certificate = self.app.config.certificates[tlsrpt.config.certificate]
        current = self.app.renewer.home(certificate).current()
        if current is None or not current.pairs:
            log.warning("TLS report endpoint waits: certificate %r is not installed yet", certificate.name)
            return
        if current.id == self._tlsrpt_version:
            return
        pair = current.pairs[0]
        try:
            if tlsrpt.endpoint is None:
                tlsrpt.start_endpoint(pair.fullchain, pair.privkey)
            else:
                tlsrpt.endpoint.use_certificate(pair.fullchain, pair.privkey)
            self._tlsrpt_version = current.id
        except (CertkeeperError, OSError) as exc:
            log.error("TLS report endpoint: %s", exc)

    def _stop_tlsrpt(self) -> None:
        if self.app.tlsrpt is not None:
            self.app.tlsrpt.stop_endpoint()
        self._tlsrpt_version = ""
        if self.scheduler.running and self.scheduler.get_job(TLSRPT_JOB) is not None:
            self.scheduler.remove_job(TLSRPT_JOB)

    # -- metrics -----------------------------------------------------------------------------------------------

    def _start_metrics(self) -> None:
        listen = self.app.config.settings.metrics_listen
        if not listen:
            return
        from certkeeper.monitoring.metrics import ListenerSecurity, start_metrics_server

        settings = self.app.config.settings
        security = ListenerSecurity(settings.metrics_tls_cert_file, settings.metrics_tls_key_file,
                                    settings.metrics_basic_auth_file)
        try:
            # Lambdas for late binding: SIGHUP replaces self.app.
            server = start_metrics_server(listen, lambda: self.app.render_metrics(), security,  # noqa: PLW0108
                                          page=lambda: self.app.render_status_page())  # noqa: PLW0108
        except (OSError, ValueError) as exc:  # a busy port: say so, and keep renewing without the endpoint
            log.error("metrics endpoint not started on %s: %s; renewing goes on without it", listen, exc)
            self.app.bus.publish(MetricsEndpointFailed(self.clock(), listen, str(exc)))
            return
        self._metrics_stop = server.stop

    def _restart_metrics(self) -> None:
        if self._metrics_stop is not None:
            self._metrics_stop()
            self._metrics_stop = None
        try:
            self._start_metrics()
        except CertkeeperError as exc:  # e.g. an unreadable metrics_tls_key_file: renewals go on regardless
            log.error("metrics listener not restarted after the reload: %s", exc)

    # -- MTA-STS policy servers (serve = "HOST:PORT" in [mta_sts.<domain>]) -------------------------------------

    def _start_policy_servers(self) -> None:
        if not any(m.serve for m in self.app.config.mta_sts.values()):
            return
        from certkeeper.mtasts.serve import start_configured_servers

        try:
            self._policy_servers = [server.stop for server in start_configured_servers(self.app.config)]
        except OSError as exc:
            log.error("cannot serve MTA-STS policies: %s", exc)

    def _stop_policy_servers(self) -> None:
        for stop in self._policy_servers:
            stop()
        self._policy_servers = []

    def _summary(self) -> str:
        config = self.app.config
        return f"{len(config.certificates)} certificates, {len(config.watch)} watch entries"
