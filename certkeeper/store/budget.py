"""The order budget: how many orders a CA still accepts, kept as token buckets shared by every node.

Let's Encrypt documents its limits as token buckets (https://letsencrypt.org/docs/rate-limits/): "New Orders per
Account", 300 per 3 hours refilled one every 36 s, "New Certificates per Exact Set of Identifiers", 5 per
7 days refilled one every ~34 h, and "New Certificates per Registered Domain", 50 per 7 days refilled one every
202 minutes.  certkeeper keeps the same buckets on its side, so a fleet (or one host) never sends an order the CA
would refuse:

* ``[issuers.X] orders_per_3h``: one bucket per issuer (the fleet's use of that CA's account), every order of
  a new certificate of that issuer spends one token (one per key type: each is its own order); a renewal is
  exempt, as Let's Encrypt documents (below), yet a CA's 429 on this bucket holds it too;
* ``[issuers.X] duplicates_per_week``: one bucket per certificate's exact set of identifiers, every certificate
  issued for it spends one;
* ``[issuers.X] certificates_per_domain_week``: one bucket per registered domain (the Public Suffix List's,
  :mod:`certkeeper.public_suffix`; an IPv4 address, an IPv6 /64) at the CA's directory (the CA counts every
  account's certificates there): a certificate spends one token from each registered domain it names.

A renewal, an order for the exact set of identifiers of the certificate installed from the same issuer
(:func:`is_renewal`), is exempt from ``orders_per_3h`` and ``certificates_per_domain_week``, as Let's Encrypt
documents ("renewals are exempt" from New Orders per Account and New Certificates per Registered Domain, by an
exact match of the set of identifiers); it still spends from ``duplicates_per_week`` (New Certificates per Exact
Set of Identifiers counts renewals), and a CA's 429 on the issuer's bucket holds it like every other order.
Modelled conservatively where the exemption depends on what certkeeper cannot see before the order: an
ARI-coordinated renewal (``replaces`` within the suggested window, RFC 9773) is exempt from every limit at Let's
Encrypt, yet certkeeper still spends its duplicate token, and counts a changed set of identifiers as a new
certificate even when it carries ``replaces`` (the CA may refuse the replacement, then the order is a new
one), so it never relies on an exemption the CA may not grant.

All three default to Let's Encrypt's figures when ``directory`` is Let's Encrypt's production directory and are
off (0) otherwise.

An order that finds a bucket short waits (:class:`OrderWaiting`, reported ``waiting``) until the moment the
bucket will hold its tokens, and registers itself as waiting, with the ``not_after`` of the certificate it has:
a later attempt of a certificate that expires later leaves the tokens to those that expire sooner, so the
closest to expiry go first, fleet-wide.  It does not ask again before that moment (the renewer remembers it:
:func:`certkeeper.renewal.policy.wait_for_budget`), so its row counts as waiting until an hour after it.  A CA's
429 with Retry-After blocks the issuer's bucket until then for every node
(:meth:`BudgetLedger.block_budget`).

Pure decisions here (:func:`decide_spend`); the ledgers (PostgreSQL for a fleet, SQLite for one host) store the
rows and call them inside one transaction.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit

from certkeeper.config import AcmeIssuerConfig, CertificateConfig, IssuerConfig
from certkeeper.errors import IssuanceError, OrderWaiting
from certkeeper.public_suffix import SuffixList, ascii_name, load_suffix_list, registered_domain
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.store.versions import Version

T = TypeVar("T")

ORDERS_PERIOD = timedelta(hours=3)
DUPLICATES_PERIOD = timedelta(days=7)
DOMAIN_PERIOD = timedelta(days=7)
RATE_LIMITED_PAUSE = timedelta(hours=1)  # a rateLimited problem without Retry-After: wait this long
# A waiting order comes back at the moment it was told (may_go_at); one not seen for an hour after that moment
# has gone (certificate removed, node stopped) and no longer holds the others back.
WAIT_FORGOTTEN_AFTER = timedelta(hours=1)


@frozen
class Limit:
    """``capacity`` tokens, refilled evenly over ``period``; capacity 0 means no limit (a 429 still blocks).
    ``exempt``: the order spends nothing here (a renewal on the issuer's bucket), only a 429's block holds it."""

    key: str
    capacity: int
    period: timedelta
    exempt: bool = False


@frozen
class Bucket:
    """A bucket's row: its tokens at ``updated_at``, and a CA's Retry-After block."""

    key: str
    tokens: float
    updated_at: datetime
    blocked_until: datetime | None = None


@frozen
class Waiter:
    """A renewal waiting for a bucket: which certificate, how many tokens it needs, its installed expiry."""

    key: str
    name: str
    count: int
    not_after: datetime | None
    since: datetime
    seen_at: datetime
    may_go_at: datetime

    def gone(self, now: datetime) -> bool:
        """Not back an hour after the moment it was told (or last seen): it no longer holds the others back."""
        return now - max(self.seen_at, self.may_go_at) > WAIT_FORGOTTEN_AFTER


def limits_for(issuer: IssuerConfig | None, certificate: CertificateConfig, *, renewal: bool = False,
               suffixes: SuffixList | None = None) -> list[Limit]:
    """The buckets an order of ``certificate`` spends from: the issuer's (always listed, a 429 blocks it; a
    ``renewal``, :func:`is_renewal`, is exempt from its tokens), the exact set of identifiers', and the
    registered domains' unless the order is a renewal."""
    if not isinstance(issuer, AcmeIssuerConfig):
        return []
    identifiers = ",".join(sorted(d.lower() for d in certificate.domains))
    limits = [Limit(f"orders {issuer.name}", issuer.orders_per_3h, ORDERS_PERIOD, exempt=renewal)]
    if issuer.duplicates_per_week:
        limits.append(Limit(f"duplicates {issuer.name} {identifiers}", issuer.duplicates_per_week,
                            DUPLICATES_PERIOD))
    if issuer.certificates_per_domain_week and not renewal:
        ca = urlsplit(issuer.directory).hostname or issuer.directory
        domains = registered_domains(certificate.domains, suffixes or system_suffixes())
        limits.extend(Limit(f"domain {ca} {domain}", issuer.certificates_per_domain_week, DOMAIN_PERIOD)
                      for domain in domains)
    return limits


@functools.cache
def system_suffixes() -> SuffixList:
    """Debian's Public Suffix List, read once per process (a few tens of milliseconds)."""
    return load_suffix_list()


def registered_domains(names: Iterable[str], suffixes: SuffixList) -> list[str]:
    """The registered domains ``names`` count against, in A-label form: the Public Suffix List's for a name
    (the name itself when it is a public suffix: the CA refuses it anyway), the address for IPv4, the /64 for
    IPv6 (as Let's Encrypt counts IP address certificates)."""
    found = set()
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            found.add(ascii_name(registered_domain(name, suffixes) or name.removeprefix("*.").lower()))
            continue
        if isinstance(address, ipaddress.IPv6Address):
            found.add(str(ipaddress.ip_network(f"{address}/64", strict=False)))
        else:
            found.add(str(address))
    return sorted(found)


def is_renewal(previous: Version | None, certificate: CertificateConfig) -> bool:
    """An order Let's Encrypt counts as a renewal: the exact set of identifiers (case and order aside) of a
    certificate issued before, here the one installed, from the same issuer."""
    return (previous is not None and previous.issuer == certificate.issuer
            and {d.lower() for d in previous.domains} == {d.lower() for d in certificate.domains})


def level(limit: Limit, bucket: Bucket | None, now: datetime) -> float:
    """Tokens in the bucket at ``now``: full when never used, refilled evenly, never above capacity."""
    if bucket is None:
        return float(limit.capacity)
    elapsed = max(0.0, (now - bucket.updated_at).total_seconds())
    return min(float(limit.capacity), bucket.tokens + elapsed * limit.capacity / limit.period.total_seconds())


def _ahead(waiters: Sequence[Waiter], limit: Limit, name: str, not_after: datetime | None, now: datetime) -> int:
    """Tokens owed first to renewals on this bucket whose certificates expire sooner (nothing installed first)."""
    def rank(when: datetime | None, who: str) -> tuple[int, datetime, str]:
        return (0, now, who) if when is None else (1, when, who)

    mine = rank(not_after, name)
    return sum(w.count for w in waiters
               if w.key == limit.key and w.name != name and not w.gone(now) and rank(w.not_after, w.name) < mine)


def decide_spend(limits: Sequence[Limit], buckets: dict[str, Bucket], waiters: Sequence[Waiter], *, name: str,
                 count: int, not_after: datetime | None, now: datetime) -> tuple[list[Bucket], datetime | None]:
    """Spend ``count`` tokens from every bucket of ``limits``, or say when that will be possible.

    Returns (the buckets to write, None) when spent, or ([], the moment it may go) when it must wait.  Tokens
    owed to waiting renewals that expire sooner are not spent (closest to expiry first).  An ``exempt`` limit
    is only checked for a CA's block and never written.
    """
    go_at = now
    for limit in limits:
        bucket = buckets.get(limit.key)
        if bucket is not None and bucket.blocked_until is not None and bucket.blocked_until > now:
            go_at = max(go_at, bucket.blocked_until)
        if not limit.capacity or limit.exempt:
            continue
        need = count + _ahead(waiters, limit, name, not_after, now)
        have = level(limit, bucket, now)
        need = min(need, limit.capacity)  # more is owed than the bucket holds: wait for a full one
        if have < need:
            refill = (need - have) * limit.period.total_seconds() / limit.capacity
            go_at = max(go_at, now + timedelta(seconds=refill))
    if go_at > now:
        return [], go_at
    spent = []
    for limit in spending(limits):
        bucket = buckets.get(limit.key)
        blocked = bucket.blocked_until if bucket is not None else None
        tokens = level(limit, bucket, now) - count if limit.capacity else 0.0
        spent.append(Bucket(limit.key, max(0.0, tokens), now, blocked))
    return spent, None


def spending(limits: Sequence[Limit]) -> list[Limit]:
    """The limits an order spends tokens from (the rows a ledger creates and writes)."""
    return [limit for limit in limits if not limit.exempt]


def wait_keys(limits: Sequence[Limit]) -> list[str]:
    """The buckets a waiting order is listed under: those it spends from, or, for a renewal spending from none
    (``duplicates_per_week`` off) held by a CA's 429, the issuer's."""
    return sorted(limit.key for limit in spending(limits) or limits)


def blocked(limit_key: str, bucket: Bucket | None, until: datetime, now: datetime) -> Bucket:
    """The bucket after a CA's 429 with Retry-After: nothing leaves it before ``until``."""
    if bucket is None:
        return Bucket(limit_key, 0.0, now, until)
    later = max(until, bucket.blocked_until) if bucket.blocked_until is not None else until
    return Bucket(bucket.key, bucket.tokens, bucket.updated_at, later)


class BudgetLedger(Protocol):
    """Where the buckets live: PostgreSQL for a fleet (:class:`~certkeeper.store.postgres.PostgresStore`), the
    local SQLite store for one host.  Each method is one transaction with the bucket rows locked."""

    def spend_budget(self, limits: Sequence[Limit], name: str, count: int, not_after: datetime | None,
                     now: datetime) -> datetime | None:
        """Spend (None) or register ``name`` as waiting and return the moment it may go."""
        ...

    def block_budget(self, limits: Sequence[Limit], until: datetime, now: datetime) -> None: ...

    def budget(self) -> tuple[list[Bucket], list[Waiter]]: ...


def spend_or_wait(ledger: BudgetLedger, issuer: IssuerConfig | None, certificate: CertificateConfig,
                  previous: Version | None, now: datetime) -> None:
    """Spend the tokens for one order of ``certificate`` (``previous``: the version installed, if any) or raise
    :class:`OrderWaiting`."""
    limits = limits_for(issuer, certificate, renewal=is_renewal(previous, certificate))
    if not limits:
        return
    not_after = previous.not_after if previous is not None else None
    go_at = ledger.spend_budget(limits, certificate.name, len(certificate.key_types), not_after, now)
    if go_at is not None:
        raise OrderWaiting(certificate.name, certificate.issuer, go_at)


def rate_limit_pause(error: IssuanceError) -> timedelta | None:
    """How long the CA asked everyone to stay away: its Retry-After, or an hour for a rateLimited problem
    (RFC 8555 section 6.7) that came without one; None for a refusal that is not about load."""
    if error.retry_after is not None:
        return timedelta(seconds=max(0.0, error.retry_after))
    if error.problem_type.endswith(":rateLimited"):
        return RATE_LIMITED_PAUSE
    return None


def record_rate_limit(ledger: BudgetLedger, issuer: IssuerConfig | None, certificate: CertificateConfig,
                      error: IssuanceError, now: datetime) -> None:
    """A CA's 429 (Retry-After): block the issuer's bucket until then, for every node sharing the ledger."""
    pause = rate_limit_pause(error)
    limits = limits_for(issuer, certificate)[:1]
    if pause is not None and limits:
        ledger.block_budget(limits, now + pause, now)


def obtain_within_budget(ledger: BudgetLedger, issuer: IssuerConfig | None, certificate: CertificateConfig,
                         previous: Version | None, issue: Callable[[], T], now: datetime) -> T:
    """``issue()`` once the budget allows it (else :class:`OrderWaiting`); a 429 it meets blocks the budget."""
    spend_or_wait(ledger, issuer, certificate, previous, now)
    try:
        return issue()
    except IssuanceError as exc:
        record_rate_limit(ledger, issuer, certificate, exc, now)
        raise


@frozen
class BucketReport:
    """One bucket as ``certkeeper db status`` shows it: orders used in the window and the next free slot."""

    key: str
    capacity: int
    used: int
    next_free_at: datetime
    blocked_until: datetime | None


def report_buckets(limits: Sequence[Limit], buckets: Sequence[Bucket], now: datetime) -> list[BucketReport]:
    """Every bucket the configuration spends from (a bucket never used is empty, free now)."""
    rows = {b.key: b for b in buckets}
    reports = []
    for limit in sorted({limit.key: limit for limit in limits}.values(), key=lambda item: item.key):
        bucket = rows.get(limit.key)
        blocked_until = bucket.blocked_until if bucket is not None and bucket.blocked_until else None
        free_at = now
        used = 0
        if limit.capacity:
            have = level(limit, bucket, now)
            used = round(limit.capacity - have)
            if have < 1:
                free_at = now + timedelta(seconds=(1 - have) * limit.period.total_seconds() / limit.capacity)
        if blocked_until is not None and blocked_until > free_at:
            free_at = blocked_until
        reports.append(BucketReport(limit.key, limit.capacity, used, free_at,
                                    blocked_until if blocked_until and blocked_until > now else None))
    return reports
