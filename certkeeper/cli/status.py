"""``certkeeper status``: every certificate at a glance: expiry, what endpoints serve, what happens next."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from certkeeper.cli.context import Context

ORDER = 30


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "status", help="show each certificate, its endpoints and the next planned action", parents=[common],
        description="A table a person reads at a glance: each certificate, its domains, issuer, key types, "
                    "expiry and days left, what each endpoint served when last probed (current, stale, "
                    "unreachable), the next planned action and why, and the last renewal result; for each "
                    "[mta_sts.<domain>] the published policy id and mode and whether every MX matches. "
                    "Reads the state store and the installed files; contacts nothing.")
    parser.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    parser.set_defaults(handler=run)


def collect(context: Context, now: datetime) -> list[dict[str, Any]]:
    from certkeeper.app import build_app

    app = build_app(context.config, store=context.store)
    nodes: dict[str, list[Any]] = {}
    if app.fleet is not None:  # a fleet: every node's state for every certificate, from the shared database
        for result in app.fleet.node_results(list(context.config.certificates)):
            nodes.setdefault(result.name, []).append(result)
    endpoints: dict[str, list[Any]] = {}
    for record in context.store.endpoints():
        endpoints.setdefault(record.owner, []).append(record)
    rows: list[dict[str, Any]] = []
    for certificate in context.config.certificates.values():
        home = app.renewer.home(certificate)
        current, problem = home.current_or_problem()
        decision = app.renewer.decide(certificate, now)
        state = context.store.get_state(certificate.name)
        last = context.store.renewals(certificate.name, limit=1)
        served = []
        for record in endpoints.get(certificate.name, []):
            if record.status != "OK" and not record.fingerprint:
                seen = "unreachable"
            elif current is not None and record.fingerprint in current.fingerprints and not record.stale:
                seen = "current"
            else:
                seen = "stale"
            served.append({"endpoint": record.endpoint, "served": seen, "status": record.status,
                           "message": record.message, "probed_at": record.at.isoformat()})
        rows.append({
            "name": certificate.name,
            "domains": list(certificate.domains),
            "issuer": certificate.issuer,
            "key_types": [k.value for k in certificate.key_types],
            "version": current.id if current else None,
            "installed_error": problem,  # why nothing usable is installed when something is ("" otherwise)
            "versions": [v.id for v in home.versions()],
            "not_after": current.not_after.isoformat() if current else None,
            "days_left": round((current.not_after - now).total_seconds() / 86400, 2) if current else None,
            "serials": [p.serial for p in current.pairs] if current else [],
            "endpoints": served,
            "next_action": "renew now" if decision.due else f"renew at {decision.renew_at:%Y-%m-%d %H:%M} UTC",
            "next_reason": decision.reason,
            "next_renewal": decision.renew_at.isoformat(),
            "failures": state.failures if state else 0,
            "last_error": state.last_error if state else "",
            "reload_pending": state.reload_pending if state else False,
            "last_result": ({"result": last[0].result, "at": last[0].at.isoformat(), "detail": last[0].detail}
                            if last else None),
        })
        rows[-1].update(_dane_fields(certificate, home, context, now))
        if app.fleet is not None:
            rows[-1]["nodes"] = [{"node": r.node, "version": r.version, "serials": r.serials, "result": r.result,
                                  "at": r.at.isoformat(), "detail": r.detail}
                                 for r in nodes.get(certificate.name, [])]
    if context.config.mta_sts:  # each MX certificate: the domains whose MTA-STS policy names it
        from certkeeper.mtasts.guard import mx_certificates
        from certkeeper.mtasts.status import domain_statuses

        by_name: dict[str, dict[str, Any]] = {row["name"]: row for row in rows}
        for mta, domain in zip(context.config.mta_sts.values(), domain_statuses(context.config), strict=True):
            for certificate in mx_certificates(mta, context.config.certificates):
                entries: list[dict[str, Any]] = by_name[certificate.name].setdefault("mta_sts", [])
                entries.append({
                    "domain": domain.domain, "policy_id": domain.policy_id, "mode": domain.mode,
                    "mx": list(domain.mx), "every_mx_matches": domain.every_mx_matches,
                    "unmatched": list(domain.unmatched), "txt_in_step": domain.txt_in_step})
    if app.fleet is not None:
        if app.fleet.down_since() is not None:
            for row in rows:
                row["fleet_store"] = f"unreachable since {app.fleet.down_since():%Y-%m-%d %H:%M} UTC"
        app.fleet.close()
    return rows


def _dane_fields(certificate: Any, home: Any, context: Context, now: datetime) -> dict[str, Any]:
    """``{"dane": ...}``: the DANE rollover from the store (no DNS asked), records retiring and servers lagging
    at the last look; nothing for a certificate without ``dane``."""
    if certificate.dane is None:
        return {}
    from certkeeper.dane.propagation import lagging_servers
    from certkeeper.dane.rollover import DaneRollover

    rollover = DaneRollover(certificate, home, context.config.issuers.get(certificate.issuer), lambda _: None,
                            lambda: now, store=context.store)
    state = rollover.load_state()
    return {"dane": {
        "published": sorted(r.rdata for r in state.published),
        "retiring": [{"name": r.name, "rdata": r.rdata, "key": retirement.key}
                     for retirement in state.retirements for r in sorted(retirement.records)],
        "retiring_since": min(r.since for r in state.retirements).isoformat() if state.retirements else None,
        "lagging": list(lagging_servers(state.lagging)),
        "lagging_reasons": list(state.lagging),
        "last_error": state.last_error,
    }}


def run(args: argparse.Namespace, context: Context) -> int:
    from certkeeper.pki import now_utc

    rows = collect(context, now_utc())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        expiry = (f"expires {row['not_after'][:10]} ({row['days_left']:.0f} days)" if row["not_after"]
                  else f"nothing usable installed: {row['installed_error']}" if row["installed_error"]
                  else "not installed")
        print(f"{row['name']}  [{', '.join(row['key_types'])}]  {' '.join(row['domains'])}")
        print(f"  issuer {row['issuer']}, {expiry}, version {row['version'] or '-'}")
        for endpoint in row["endpoints"]:
            print(f"  {endpoint['endpoint']}: {endpoint['served']} ({endpoint['status']})")
        print(f"  next: {row['next_action']} ({row['next_reason']})")
        if row["last_result"]:
            last = row["last_result"]
            detail = f": {last['detail']}" if last["detail"] and last["result"] != "success" else ""
            print(f"  last renewal: {last['result']} at {last['at'][:16]}{detail}")
        dane = row.get("dane")
        if dane:
            for record in dane["retiring"]:
                print(f"  TLSA {record['name']} {record['rdata'][:24]}...: retiring since "
                      f"{dane['retiring_since'][:19]}")
            for reason in dane["lagging_reasons"]:
                print(f"  TLSA lagging: {reason}")
        if row["reload_pending"]:
            print(f"  reload pending: {row['last_error']}")
        if "fleet_store" in row:
            print(f"  fleet store {row['fleet_store']}")
        for node in row.get("nodes", []):
            print(f"  node {node['node']}: version {node['version']} ({node['serials'] or 'nothing installed'}), "
                  f"{node['result']} at {node['at'][:19]}")
    if context.config.mta_sts:
        from certkeeper.mtasts.status import domain_statuses, status_lines

        print("MTA-STS")
        for line in status_lines(domain_statuses(context.config)):
            print(f"  {line}")
    return 0
