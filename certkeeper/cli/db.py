"""``certkeeper db init|status``: the fleet's PostgreSQL schema, and what each node last reported."""

from __future__ import annotations

import argparse
import json
from typing import Any

from certkeeper.cli.context import Context
from certkeeper.errors import UsageError

ORDER = 65


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "db", help="create or migrate the fleet database, show its state", parents=[common],
        description="The PostgreSQL database named by `database` in [certkeeper], shared by the nodes of a fleet. "
                    "Nodes migrate it on first contact as well; `db init` does it up front and says which "
                    "schema version it holds.")
    commands = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    init = commands.add_parser("init", help="create or migrate the schema; print its version", parents=[common],
                               description="Create the tables, or migrate an older schema to this certkeeper's. "
                                           "A schema newer than this certkeeper understands is refused (exit 74).")
    init.set_defaults(handler=run_init)
    status = commands.add_parser("status", help="schema version, fleet versions and every node's last result",
                                 parents=[common])
    status.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    status.set_defaults(handler=run_status)


def _open(context: Context) -> Any:
    settings = context.config.settings
    if not settings.database:
        msg = (
            f"{context.config.path}: no `database` in [certkeeper]; this node keeps its state in "
                         f"{settings.state_dir} (SQLite) and has no fleet database"
        )
        raise UsageError(msg)
    from certkeeper.store.postgres import PostgresStore

    return PostgresStore(settings.database, settings.database_password_file, node=settings.node, migrate=False)


def _budget(context: Context, store: Any) -> dict[str, Any]:
    """The order budget: each bucket's orders used and next free slot, and the renewals waiting for it."""
    from certkeeper import pki
    from certkeeper.store.budget import limits_for, report_buckets

    config = context.config
    now = pki.now_utc()
    limits = [limit for c in config.certificates.values() for limit in limits_for(config.issuers.get(c.issuer), c)]
    buckets, waiters = store.budget()
    waiting = sorted({w.name: w for w in waiters if not w.gone(now)}.values(),
                     key=lambda w: (w.not_after is not None, w.not_after or now, w.name))
    return {
        "buckets": [{"key": b.key, "capacity": b.capacity, "used": b.used, "next_free_at": b.next_free_at.isoformat(),
                     "blocked_until": b.blocked_until.isoformat() if b.blocked_until else None}
                    for b in report_buckets(limits, buckets, now)],
        "waiting": [{"name": w.name, "key": w.key, "not_after": w.not_after.isoformat() if w.not_after else None,
                     "since": w.since.isoformat(), "may_go_at": w.may_go_at.isoformat()} for w in waiting],
    }


def run_init(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.store.postgres import SCHEMA_VERSION

    store = _open(context)
    try:
        found = store.migrate()
    finally:
        store.close()
    if found == SCHEMA_VERSION:
        print(f"{store.location}: schema version {SCHEMA_VERSION}, up to date")
    elif found == 0:
        print(f"{store.location}: schema created, version {SCHEMA_VERSION}")
    else:
        print(f"{store.location}: schema migrated from version {found} to {SCHEMA_VERSION}")
    return 0


def run_status(args: argparse.Namespace, context: Context) -> int:
    store = _open(context)
    try:
        store.migrate()
        names = list(context.config.certificates)
        heads = {name: store.fleet_head(name) for name in names}
        report = {
            "database": store.location,
            "schema_version": store.schema_version(),
            "budget": _budget(context, store),
            "certificates": [
                {"name": name,
                 "fleet_version": head.version if head else None,
                 "ordered_by": head.ordered_by if head else None,
                 "serials": list(head.serials) if head else [],
                 "not_after": head.not_after.isoformat() if head else None,
                 "nodes": [{"node": r.node, "version": r.version, "result": r.result, "at": r.at.isoformat(),
                            "serials": r.serials, "detail": r.detail}
                           for r in store.node_results([name])]}
                for name, head in heads.items()
            ],
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['database']}: schema version {report['schema_version']}")
    for bucket in report["budget"]["buckets"]:
        limit = f"{bucket['used']} of {bucket['capacity']} used" if bucket["capacity"] else "no limit"
        blocked = f", the CA asked to wait until {bucket['blocked_until'][:19]}" if bucket["blocked_until"] else ""
        print(f"{bucket['key']}: {limit}, next free slot {bucket['next_free_at'][:19]}{blocked}")
    if report["budget"]["waiting"]:
        print("waiting:")
    for waiter in report["budget"]["waiting"]:
        expiry = waiter["not_after"][:16] if waiter["not_after"] else "nothing installed"
        print(f"  {waiter['name']} ({expiry}): may go at {waiter['may_go_at'][:19]} ({waiter['key']})")
    for entry in report["certificates"]:
        if entry["fleet_version"] is None:
            print(f"{entry['name']}: no fleet version yet")
        else:
            print(f"{entry['name']}: fleet version {entry['fleet_version']} ordered by {entry['ordered_by']}, "
                  f"serials {', '.join(entry['serials'])}, expires {entry['not_after'][:16]}")
        for node in entry["nodes"]:
            print(f"  {node['node']}: version {node['version']}, {node['result']} at {node['at'][:19]}")
    return 0
