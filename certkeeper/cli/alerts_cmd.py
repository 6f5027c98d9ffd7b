"""``certkeeper alerts``: send a test mail, deliver what is pending, list what is pending."""

from __future__ import annotations

import argparse
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.config import AlertsConfig
from certkeeper.errors import ConfigError

ORDER = 60


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "alerts", help="test the alert mail settings, send or list pending alerts", parents=[common],
        description="Alerts are queued in the state store and sent as one digest mail through the [alerts] "
                    "SMTP settings; the daemon and `certkeeper renew` send them on their own.",
    )
    commands = parser.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND", required=True)
    test = commands.add_parser(
        "test", help="send a test mail through the configured relay now", parents=[common],
        description="Send a test mail to the [alerts] recipients and say which route took it (the relay, the "
                    "fallback relay, or the relay without certificate verification).  Exit 69 when no relay "
                    "accepted it, with what each said.",
    )
    test.set_defaults(handler=run_test)
    flush = commands.add_parser(
        "flush", help="send the pending alerts now (even with digest = \"daily\")", parents=[common],
        description="Send every pending alert now as one digest mail.  Exit 69 when no relay accepted it; the "
                    "alerts then stay pending.",
    )
    flush.set_defaults(handler=run_flush)
    pending = commands.add_parser("list", help="show the alerts not sent yet", parents=[common])
    pending.set_defaults(handler=run_list)


def _alerts_config(context: Context) -> AlertsConfig:
    alerts = context.config.alerts
    if alerts is None:
        raise ConfigError(context.config_path, "alerts", "no [alerts] section",
                          'an [alerts] section with at least to = ["postmaster@example.org"] and from')
    return alerts


def run_test(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.alerts.notifier import Notifier
    from certkeeper.pki import now_utc

    alerts = _alerts_config(context)
    route = Notifier(alerts, context.store).send_test(now_utc())
    print(f"test mail to {', '.join(alerts.to)} accepted by {route}")
    return 0


def run_flush(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.alerts.notifier import Notifier
    from certkeeper.errors import AlertDeliveryFailed
    from certkeeper.pki import now_utc

    report = Notifier(_alerts_config(context), context.store).deliver(now_utc(), force=True)
    if report.error:
        raise AlertDeliveryFailed([report.error])
    print(f"sent {report.sent} alert(s) via {report.route}" if report.sent else "nothing pending")
    return 0


def run_list(args: argparse.Namespace, context: Context) -> int:
    for alert in context.store.pending_alerts():
        if alert.key.startswith("digest:"):
            continue
        tried = f"  ({alert.attempts} attempts, last: {alert.last_error})" if alert.attempts else ""
        print(f"{alert.created_at:%Y-%m-%d %H:%M} {alert.severity:8} {alert.subject}{tried}")
    return 0
