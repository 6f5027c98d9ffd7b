"""Simulation: a fleet's month of short-lived certificates against the order budget, on a simulated clock.

Run on demand (pytest does not collect it)::

    python tests/bench/sim_fleet_month.py [--nodes 1000] [--certs 10000] [--share 3] [--days 30]
                                          [--lifetime-days 6] [--per-domain 10] [--orders-per-3h 300]

``--certs`` certificates of ``--lifetime-days`` each, every one served by ``--share`` of ``--nodes`` nodes (the
shape FLEET.md calls A: the hosts behind one domain share its certificate), ``--per-domain`` certificates per
registered domain (``mail{i}.customer{j}.co.uk``: the Public Suffix List's ``co.uk`` rule), one key type, one
ACME issuer with Let's Encrypt's budget (``orders_per_3h`` 300, ``duplicates_per_week`` 5,
``certificates_per_domain_week`` 50).  The first pass of every node is a rollout (nothing installed anywhere),
then steady state.

What is real and what is simulated:

* the renewal decision is the real pure policy, :func:`certkeeper.renewal.policy.decide_renewal`, with the
  simulated clock passed in (``check_interval`` 12 h, ``renew_before`` 1/3, the hash spread); a node wakes at the
  earliest next check of its certificates, at most every 12 h, like the daemon; an order told to wait is not
  asked again by that node before the moment the answer named (``may_go_at``): the real
  :func:`certkeeper.renewal.policy.wait_for_budget` makes it not due until then and sets its next check (with
  its jitter), as the renewer does; meanwhile the node still installs a version another node ordered;
* the budget is the real pure token-bucket core: :func:`certkeeper.store.budget.limits_for` (real registered
  domains, real renewal exemptions: :func:`is_renewal`, exempt from ``orders_per_3h`` and the registered
  domain's bucket, not from ``duplicates_per_week``) and :func:`decide_spend`, called as the stores call it,
  one transaction per attempt.  Not PostgreSQL: the month makes ~10^5 budget transactions, too many for a
  test run.  The ledger here keeps the rows in memory and hands :func:`decide_spend` the waiting orders
  ahead of the caller as one row with their count (the only thing it reads from them), found by bisection in a
  list sorted the way :func:`certkeeper.store.budget._ahead` ranks; every ``--check-every``-th call is decided a
  second time with the full list of waiting rows, and both answers must agree;
* the database is a query counter: each operation adds what :class:`certkeeper.store.postgres.PostgresStore`
  counts on that path of :class:`certkeeper.store.fleet.Fleet` (see :data:`QUERIES`); the lease is modelled as
  taken at once (an order is instantaneous on this clock), so orders per renewal is 1 by construction here
  (``bench_fleet.py`` measures it with real nodes racing on a real PostgreSQL);
* the CA is a separate model of Let's Encrypt's documented buckets, written here from its numbers (renewals
  exempt from New Orders per Account and New Certificates per Registered Domain), that checks every order
  certkeeper lets through: none may be one the CA would refuse.

Prints peak orders per 3 h (any 3 h window: all orders, and those of new certificates, which the token bucket
bounds), orders per renewal, waiting attempts,
renewal delay beyond the renewal point, certificates that expired, and database queries per second over the
simulated month (queries in the simulated period / simulated seconds) with the peak hour.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certkeeper.config import AcmeIssuerConfig, CertificateConfig
from certkeeper.model import RenewBefore
from certkeeper.renewal.policy import Decision, History, Installed, Wanted, decide_renewal, wait_for_budget
from certkeeper.store.budget import (
    Bucket,
    Limit,
    Waiter,
    decide_spend,
    is_renewal,
    limits_for,
    system_suffixes,
    wait_keys,
)
from certkeeper.store.versions import Version

START = datetime(2026, 12, 1, tzinfo=UTC)
CHECK_INTERVAL = timedelta(hours=12)
# Queries PostgresStore counts on each path of Fleet (certkeeper/store/fleet.py), an order being instantaneous:
QUERIES = {
    "pass": 2,  # fleet_heads (all heads, one read) + put_node_results (one write)
    "wait": 8,  # fleet_head, acquire_lease, fleet_head, spend_budget (4 statements), release_lease
    "order": 12,  # as "wait", then _store: fleet_head + store_fleet_version (2 + 1 key pair)
    "install": 3,  # a node installing the fleet's newer version: fleet_head + fleet_version (2)
}


def _rank(not_after: datetime | None, name: str) -> tuple[int, float, str]:
    """The order of :func:`certkeeper.store.budget._ahead`: nothing installed first (by name), then by expiry."""
    return (0, 0.0, name) if not_after is None else (1, not_after.timestamp(), name)


@dataclass
class Ledger:
    """The ledger's rows in memory, spent with the real :func:`decide_spend`, one call per transaction."""

    check_every: int
    buckets: dict[str, Bucket] = field(default_factory=dict)
    waits: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)  # key -> ranks, sorted
    waiting: dict[str, tuple[tuple[int, float, str], list[str], datetime, datetime]] = field(default_factory=dict)
    calls: int = 0
    checked: int = 0

    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None:
        self.calls += 1
        rank = _rank(not_after, name)
        ahead = []
        for limit in limits:
            ranks = self.waits.get(limit.key, [])
            position = bisect.bisect_left(ranks, rank)
            if position:  # those ahead, as one row ranked before everyone (the sum is all decide_spend uses)
                ahead.append(Waiter(limit.key, "", position * count, None, now, now, now))
        spent, go_at = decide_spend(limits, self.buckets, ahead, name=name, count=count, not_after=not_after,
                                    now=now)
        if self.calls % self.check_every == 0:
            self.checked += 1
            full = decide_spend(limits, self.buckets, self._rows(limits, now), name=name, count=count,
                                not_after=not_after, now=now)
            assert full == (spent, go_at), (name, full, spent, go_at)
        for bucket in spent:
            self.buckets[bucket.key] = bucket
        self._forget(name)
        if go_at is not None:
            keys = wait_keys(limits)
            since = self.waiting.get(name, (rank, keys, now, now))[2]
            for key in keys:
                bisect.insort(self.waits.setdefault(key, []), rank)
            self.waiting[name] = (rank, keys, since, go_at)
        return go_at

    def _forget(self, name: str) -> None:
        found = self.waiting.pop(name, None)
        if found is not None:
            rank, keys, _, _ = found
            for key in keys:
                ranks = self.waits[key]
                del ranks[bisect.bisect_left(ranks, rank)]

    def _rows(self, limits: Sequence[Limit], now: datetime) -> list[Waiter]:
        """The rows ``SELECT * FROM order_waits WHERE key = ANY(...)`` returns (every waiter comes back at the
        moment it was told, so none is forgotten)."""
        keys = {limit.key for limit in limits}
        return [Waiter(key, who, 1, None if rank[0] == 0 else datetime.fromtimestamp(rank[1], UTC), since, now,
                       go_at)
                for who, (rank, held, since, go_at) in self.waiting.items() for key in held if key in keys]


class CaBuckets:
    """Let's Encrypt's side, from its documented numbers only: would it have refused an order?"""

    def __init__(self, orders_per_3h: int, duplicates_per_week: int, domain_per_week: int) -> None:
        self.rules = {"orders": (orders_per_3h, 3 * 3600.0), "duplicates": (duplicates_per_week, 7 * 86400.0),
                      "domain": (domain_per_week, 7 * 86400.0)}
        self.state: dict[tuple[str, str], tuple[float, float]] = {}
        self.refused = 0

    def order(self, at: float, account: str, identifiers: str, domains: Sequence[str], renewal: bool) -> None:
        spend = [("duplicates", identifiers)]
        if not renewal:  # "renewals are exempt": the exact set of identifiers of an earlier certificate
            spend += [("orders", account), *(("domain", domain) for domain in domains)]
        levels = {}
        for kind, scope in spend:
            capacity, period = self.rules[kind]
            if not capacity:
                continue
            tokens, then = self.state.get((kind, scope), (float(capacity), at))
            levels[kind, scope] = min(float(capacity), tokens + (at - then) * capacity / period)
        if any(level < 1 - 1e-6 for level in levels.values()):
            self.refused += 1
        for key, level in levels.items():
            self.state[key] = (level - 1, at)


@dataclass
class Served:
    """One node's copy of one certificate: the fleet version it installed and its next check."""

    version: int = 0
    next_check: float = 0.0
    due: bool = False  # decided due: stays due until something is installed (a property of the policy)
    due_since: float = 0.0
    expires: datetime | None = None  # the installed certificate's not_after
    wait_until: float = 0.0  # the moment the budget's last answer to this node named (not asked before then)


class Simulation:
    """The fleet, its ledger, the CA's model and what was counted, moved on by :meth:`run`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lifetime = timedelta(days=args.lifetime_days)
        issuer = AcmeIssuerConfig(name="le", directory="https://acme-v02.api.letsencrypt.org/directory",
                                  orders_per_3h=args.orders_per_3h, duplicates_per_week=5,
                                  certificates_per_domain_week=50)
        self.certificates = [CertificateConfig(f"c{i:05d}", "le", (f"mail{i}.customer{i // args.per_domain}.co.uk",))
                             for i in range(args.certs)]
        self.wanted = [Wanted(c.name, c.domains, ("ecdsa-p256",), RenewBefore.parse("1/3")) for c in self.certificates]
        suffixes = system_suffixes()
        self.limits = {(i, renewal): limits_for(issuer, c, renewal=renewal, suffixes=suffixes)
                       for i, c in enumerate(self.certificates) for renewal in (False, True)}
        self.serving = [[(i + k) % args.nodes for k in range(args.share)] for i in range(args.certs)]
        self.served = {(node, i): Served() for i, nodes in enumerate(self.serving) for node in nodes}
        self.mine: list[list[tuple[int, Served]]] = [[] for _ in range(args.nodes)]
        for (node, i), copy in self.served.items():
            self.mine[node].append((i, copy))
        # The fleet: each certificate's versions (not_before, not_after, the Version a node installs).
        self.fleet: list[list[tuple[datetime, datetime, Version]]] = [[] for _ in range(args.certs)]
        self.ledger = Ledger(args.check_every)
        self.ca = CaBuckets(args.orders_per_3h, 5, 50)
        self.queries: Counter[str] = Counter()
        self.hourly: Counter[int] = Counter()
        self.orders: list[tuple[float, bool]] = []  # (when, a renewal)
        self.delays: dict[bool, list[float]] = {False: [], True: []}  # first issuances, renewals
        self.expired: set[int] = set()
        self.end = args.days * 86400.0
        self.wakes = [(node * 600.0 / args.nodes, node) for node in range(args.nodes)]  # nodes start over 10 min
        heapq.heapify(self.wakes)
        self.planned = {node: at for at, node in self.wakes}

    def count(self, kind: str, at: float, times: int = 1) -> None:
        self.queries[kind] += times
        self.hourly[int(at // 3600)] += QUERIES[kind] * times

    def plan(self, node: int, at: float, *, replace: bool = False) -> None:
        """Wake ``node`` at ``at`` (or sooner, when it already planned to wake sooner)."""
        if not replace and self.planned.get(node, float("inf")) <= at:
            return
        self.planned[node] = at
        heapq.heappush(self.wakes, (at, node))

    def decide(self, i: int, copy: Served, at: float) -> None:
        """The real policy, on the simulated clock, for what ``copy`` has installed."""
        now = START + timedelta(seconds=at)
        installed = None
        if copy.version:
            not_before, copy.expires, version = self.fleet[i][copy.version - 1]
            installed = Installed(version.id, not_before, copy.expires, version.domains, ("ecdsa-p256",))
        decision = decide_renewal(installed, self.wanted[i], History(), now=now, check_interval=CHECK_INTERVAL)
        copy.due = decision.due
        copy.due_since = (decision.renew_at - START).total_seconds() if decision.due else 0.0
        copy.next_check = at if decision.due else (decision.next_check - START).total_seconds()

    def run(self) -> None:
        while self.wakes:
            at, node = heapq.heappop(self.wakes)
            if at >= self.end:
                break
            if self.planned.get(node) == at:  # else a wake planned again since
                self.plan(node, self.one_pass(node, at), replace=True)

    def one_pass(self, node: int, at: float) -> float:
        """One pass of ``node``: install what the fleet has newer, decide, spend or wait, order.  Returns the
        node's next wake: its certificates' earliest next check, at most ``check_interval`` later."""
        now = START + timedelta(seconds=at)
        self.count("pass", at)
        waited = 0
        soonest = at + CHECK_INTERVAL.total_seconds()
        for i, copy in self.mine[node]:
            if copy.version < len(self.fleet[i]):
                # The pass's heads show a newer fleet version: this node installs it (no order), decides again
                # (also while it waits for the budget: waiting, the certificate is not due, the fleet is asked).
                self.count("install", at)
                copy.version = len(self.fleet[i])
                copy.wait_until = 0.0
                self.decide(i, copy, at)
            elif copy.next_check <= at and not copy.due:
                self.decide(i, copy, at)
            if copy.expires is not None and copy.expires <= now:
                self.expired.add(i)
            if copy.due and at < copy.wait_until:  # told to wait: not asked again before that moment
                soonest = min(soonest, copy.next_check)
                continue
            if copy.due:
                waited += self.attempt(node, i, copy, at, now)
            soonest = min(soonest, max(copy.next_check, at + 1.0))
        self.count("wait", at, waited)
        return soonest

    def attempt(self, node: int, i: int, copy: Served, at: float, now: datetime) -> int:
        """The lease holder spends from the budget (the real ledger decision) and orders, or waits (1)."""
        certificate = self.certificates[i]
        previous = self.fleet[i][copy.version - 1][2] if copy.version else None
        renewal = is_renewal(previous, certificate)
        go_at = self.ledger.spend_budget(self.limits[i, renewal], certificate.name, 1, copy.expires, now)
        if go_at is not None:  # as the renewer: not due before go_at, looked at again then (with the jitter)
            copy.wait_until = (go_at - START).total_seconds()
            waiting = wait_for_budget(Decision(True, "", now, now), go_at, name=certificate.name, now=now)
            copy.next_check = (waiting.next_check - START).total_seconds()
            return 1
        copy.wait_until = 0.0
        self.count("order", at)
        self.orders.append((at, renewal))
        self.delays[renewal].append(at - copy.due_since)
        self.ca.order(at, "le", certificate.domains[0],
                      [limit.key for limit in self.limits[i, renewal] if limit.key.startswith("domain ")], renewal)
        version = Version(certificate.name, f"{i}-{len(self.fleet[i]) + 1}", Path("/dev/null"), now, "le",
                          certificate.domains, ())
        self.fleet[i].append((now, now + self.lifetime, version))
        copy.version = len(self.fleet[i])
        self.decide(i, copy, at)
        for other in self.serving[i]:  # the others find it in their next pass's heads
            if other != node:
                self.served[other, i].next_check = at
                self.plan(other, at + 1.0)
        return 0

    def report(self, elapsed: float) -> None:
        args, orders = self.args, self.orders
        new = [at for at, renewal in orders if not renewal]
        rollout_end = new[args.certs - 1] if len(new) >= args.certs else self.end
        peak, peak_rollout, peak_steady = _peak([at for at, _ in orders], rollout_end)
        peak_new = _peak(new, rollout_end)[0]
        renewals = sum(len(versions) for versions in self.fleet)
        total = sum(QUERIES[kind] * n for kind, n in self.queries.items())
        bound = 2 * args.orders_per_3h  # a full bucket, then what it refills in 3 h
        ledger = self.ledger
        print(f"{args.nodes} nodes x {args.certs} certificates of {args.lifetime_days:g} days, each on {args.share} "
              f"nodes, {args.per_domain} per registered domain, {args.days:g} simulated days "
              f"({elapsed:.0f} s real time)")
        print(f"orders: {len(orders)}   fleet versions (renewals): {renewals}   orders per renewal: "
              f"{len(orders) / max(renewals, 1):.3f}   every certificate first issued by day {rollout_end / 86400:.2f}")
        print(f"peak orders per 3 h: {peak} in any 3 h window ({peak_rollout} in the rollout, {peak_steady} after "
              f"it), {peak_new} of new certificates (orders_per_3h = {args.orders_per_3h}: a full bucket and its "
              f"refill allow at most {bound}; renewals are exempt); orders the CA would refuse: {self.ca.refused}")
        for renewal, what in ((True, "renewals"), (False, "first issuances")):
            if delays := sorted(self.delays[renewal]):
                print(f"delay beyond the renewal point (waiting for the budget), {what}: median "
                      f"{delays[len(delays) // 2] / 3600:.1f} h, p99 {delays[int(len(delays) * 0.99)] / 3600:.1f} h, "
                      f"max {delays[-1] / 3600:.1f} h")
        print(f"certificates that expired while installed: {len(self.expired)}")
        print(f"budget transactions: {ledger.calls} ({self.queries['wait']} told to wait, each not asked again by "
              f"its node before the moment named; every one run through decide_spend, {ledger.checked} of them "
              f"twice, with every waiting row: the same answers)")
        print(f"database queries: {total} in {args.days:g} days = {total / self.end:.1f} queries/s on average, "
              f"peak hour {max(self.hourly.values()) / 3600:.1f}/s; by operation: "
              + ", ".join(f"{kind} {n} x {QUERIES[kind]}" for kind, n in sorted(self.queries.items())))
        assert self.ca.refused == 0, "an order the CA would have refused"
        assert peak_new <= bound, f"{peak_new} orders of new certificates in 3 h, above the token bucket's {bound}"
        assert len(orders) == renewals


def _peak(times: Sequence[float], rollout_end: float) -> tuple[int, int, int]:
    """The most of ``times`` in any 3 h window: overall, in windows ending by ``rollout_end``, after it."""
    window: deque[float] = deque()
    peak = rollout = steady = 0
    for at in times:
        window.append(at)
        while window[0] <= at - 3 * 3600:
            window.popleft()
        peak = max(peak, len(window))
        if at <= rollout_end:
            rollout = max(rollout, len(window))
        elif at - 3 * 3600 >= rollout_end:
            steady = max(steady, len(window))
    return peak, rollout, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--certs", type=int, default=10000)
    parser.add_argument("--share", type=int, default=3, help="nodes serving each certificate")
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--lifetime-days", type=float, default=6)
    parser.add_argument("--per-domain", type=int, default=10, help="certificates per registered domain")
    parser.add_argument("--orders-per-3h", type=int, default=300)
    parser.add_argument("--check-every", type=int, default=20000, help="decide every n-th call with all rows")
    args = parser.parse_args()
    began = time.monotonic()
    simulation = Simulation(args)
    simulation.run()
    simulation.report(time.monotonic() - began)


if __name__ == "__main__":
    main()
