"""When is a certificate due: pure decisions over plain values and ``now``.

Nothing here reads a clock, a file or the network, and randomness is derived from the certificate itself (a
hash of its name and fingerprint), so a decision is the same every time it is asked: a certificate that is due
stays due, and a thousand certificates issued in the same second still spread their renewals.

The order of the rules (the first that applies wins):

1. nothing installed, expired, not yet valid, key not matching, or domains / key types differing from the
   configuration: due now;
2. the CA's ARI window (RFC 9773): due at a moment inside the window picked from the certificate's hash; a
   window in the past means now; a window that would leave less than a tenth of the lifetime is ignored
   (a backstop against a CA answering nonsense);
3. ``renew_before`` reached, less a spread of up to 2 % of the lifetime (at most 12 h);
4. after failures: exponential backoff with jitter from 10 minutes, up to 12 h or a twentieth of the lifetime
   (8 h for a 160-hour certificate), never later than the critical point (a tenth of the lifetime before
   expiry) and never more often than every 10 minutes (CA rate limits); none once the configuration or the
   issuer changed since the last attempt (the fix is tried at once).

A due certificate the order budget told to wait (:func:`wait_for_budget`) is not due again before the moment it
was named, plus a jitter of up to 30 s: the budget is not asked again before then.

Two rules sit beside the decision, also pure: the fleet gate (:func:`fleet_may_catch_up`: a node asks the
fleet for a newer certificate only when nothing is due and the failure backoff has passed) and the reload
retry (:func:`next_check_with_reload`: a reload still owed is retried on the backoff, sooner than the
renewal point).  What a pass did with a certificate is a :class:`Result`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from enum import StrEnum

from certkeeper.model import RenewBefore
from certkeeper.values import frozen, replace

MIN_RETRY = timedelta(minutes=10)
MAX_RETRY = timedelta(hours=12)
MAX_SPREAD = timedelta(hours=12)
BUDGET_JITTER = timedelta(seconds=30)
SPREAD_FRACTION = 0.02
ARI_BACKSTOP_FRACTION = 0.1
CRITICAL_FRACTION = 0.1
RETRY_CAP_FRACTION = 0.05


class Result(StrEnum):
    """What a pass did with one certificate; the value is what ``renew`` prints and its JSON carries."""

    RENEWED = "renewed"
    NOT_DUE = "not-due"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    RELOADED = "reloaded"
    DRY_RUN = "dry-run"
    BUSY = "busy"
    VERIFIED = "verified"
    WAITING = "waiting"  # the order budget, or DANE (RFC 7672): the next key's TLSA records not visible yet

    @property
    def failed(self) -> bool:
        """Whether ``certkeeper renew`` exits non-zero for it."""
        return self in {Result.FAILED, Result.ROLLED_BACK, Result.BUSY}


@frozen
class Installed:
    """What is installed now, as plain values (the first key type's certificate when there are two)."""

    fingerprint: str
    not_before: datetime
    not_after: datetime
    domains: tuple[str, ...]
    key_types: tuple[str, ...]
    key_matches: bool = True

    @property
    def lifetime(self) -> timedelta:
        return max(self.not_after - self.not_before, timedelta(seconds=1))


@frozen
class Wanted:
    """What the configuration asks for."""

    name: str
    domains: tuple[str, ...]
    key_types: tuple[str, ...]
    renew_before: RenewBefore


@frozen
class History:
    """What happened before: failures in a row and the CA's renewal window, if it gave one."""

    failures: int = 0
    last_attempt_at: datetime | None = None
    ari_start: datetime | None = None
    ari_end: datetime | None = None
    inputs_changed: bool = False  # the configuration or the issuer changed after the last attempt


@frozen
class Decision:
    due: bool
    reason: str
    renew_at: datetime
    next_check: datetime


def decide_renewal(installed: Installed | None, wanted: Wanted, history: History, *, now: datetime,
                   check_interval: timedelta) -> Decision:
    """Is ``wanted`` due for renewal at ``now``, why, and when to look again (always after ``now``)."""
    renew_at, reason = _renewal_point(installed, wanted, history, now)
    retry_at = _retry_point(installed, wanted, history)
    if retry_at is not None and retry_at > renew_at:
        renew_at = retry_at
        reason = f"{reason}; retrying after {history.failures} failure{'s' if history.failures > 1 else ''}"
    if now >= renew_at:
        return Decision(True, reason, renew_at, now + MIN_RETRY)
    return _not_due(reason, renew_at, now=now, check_interval=check_interval)


def _not_due(reason: str, renew_at: datetime, *, now: datetime, check_interval: timedelta) -> Decision:
    """Not due before ``renew_at``: look again then, or after ``check_interval`` if sooner (always after ``now``)."""
    next_check = min(renew_at, now + check_interval)
    return Decision(False, reason, renew_at, max(next_check, now + timedelta(seconds=1)))


def decide_again(earlier: Decision, decided_at: datetime, installed: Installed | None, *, now: datetime,
                 check_interval: timedelta) -> Decision | None:
    """What :func:`decide_renewal` decides at ``now`` from the ``installed``, wanted and history that gave
    ``earlier`` at ``decided_at``, found without deciding again (a daemon's pass asks for 1,000 every wake); None
    when it may differ: ``earlier`` was due, ``now`` is not between ``decided_at`` and its renewal point, or the
    certificate became valid or expired in between.

    The point and its reason depend on ``now`` only through those two bounds and, for a certificate due at once,
    through ``now`` itself, which a decision not due then lies before (its point is the retry point, later).
    """
    if earlier.due or not decided_at <= now < earlier.renew_at:
        return None
    if installed is not None and ((decided_at < installed.not_before) != (now < installed.not_before)
                                  or (decided_at >= installed.not_after) != (now >= installed.not_after)):
        return None
    return _not_due(earlier.reason, earlier.renew_at, now=now, check_interval=check_interval)


def _renewal_point(installed: Installed | None, wanted: Wanted, history: History,
                   now: datetime) -> tuple[datetime, str]:
    if installed is None:
        return now, "no certificate installed yet"
    if now >= installed.not_after:
        return installed.not_after, "expired"
    if now < installed.not_before:
        return now, "not valid yet (clock or issuer problem)"
    if not installed.key_matches:
        return now, "the installed key does not match the certificate"
    if tuple(sorted(installed.domains)) != tuple(sorted(wanted.domains)):
        return now, "the configured domains changed"
    if tuple(sorted(installed.key_types)) != tuple(sorted(wanted.key_types)):
        return now, "the configured key types changed"
    lifetime = installed.lifetime
    spread = min(lifetime * SPREAD_FRACTION, MAX_SPREAD) * _unit_hash(wanted.name, installed.fingerprint, "spread")
    threshold = installed.not_after - wanted.renew_before.before_expiry(lifetime) - spread
    threshold_reason = f"renew_before ({wanted.renew_before} of the lifetime left)" \
        if wanted.renew_before.fraction is not None else f"renew_before ({wanted.renew_before} before expiry)"
    ari = _ari_moment(installed, wanted, history)
    if ari is not None and ari < threshold:
        return ari, "the CA's renewal window (ARI)"
    return threshold, threshold_reason


def _ari_moment(installed: Installed, wanted: Wanted, history: History) -> datetime | None:
    start, end = history.ari_start, history.ari_end
    if start is None or end is None or end < start:
        return None
    if installed.not_after - start < installed.lifetime * ARI_BACKSTOP_FRACTION:
        return None
    return start + (end - start) * _unit_hash(wanted.name, installed.fingerprint, "ari")


def _retry_point(installed: Installed | None, wanted: Wanted, history: History) -> datetime | None:
    if history.failures <= 0 or history.last_attempt_at is None or history.inputs_changed:
        return None
    cap = MAX_RETRY if installed is None else min(MAX_RETRY, installed.lifetime * RETRY_CAP_FRACTION)
    delay = backoff_delay(history.failures, wanted.name, cap=cap)
    retry_at = history.last_attempt_at + delay
    if installed is not None:
        critical = installed.not_after - installed.lifetime * CRITICAL_FRACTION
        retry_at = min(retry_at, max(critical, history.last_attempt_at + MIN_RETRY))
    return retry_at


def wait_for_budget(decision: Decision, until: datetime | None, *, name: str, now: datetime) -> Decision:
    """A due ``decision`` once the order budget said it may go at ``until``: not due before then, looked at again
    then plus a jitter of up to :data:`BUDGET_JITTER` (renewals a CA's Retry-After released at the same moment do
    not all ask in the same second); as it was once ``until`` has passed."""
    if not decision.due or until is None or now >= until:
        return decision
    at = until + BUDGET_JITTER * _unit_hash(name, until.isoformat(), "budget")
    return Decision(False, f"{decision.reason}; waiting for the order budget until {until:%Y-%m-%d %H:%M:%S} UTC",
                    until, at)


def fleet_may_catch_up(decision: Decision, history: History, *, name: str, now: datetime) -> bool:
    """The fleet gate: ask the fleet for a newer certificate only when nothing is due here, and not sooner than
    the failure backoff allows (a node whose install of the fleet's version failed is not retried every pass)."""
    if decision.due:
        return False
    if history.failures == 0 or history.last_attempt_at is None:
        return True
    return now >= history.last_attempt_at + backoff_delay(history.failures, name)


def caught_up(decision: Decision, *, version: int, ordered_by: str, now: datetime) -> Decision:
    """The decision once the fleet has a newer certificate: due now (it is installed, nothing is ordered)."""
    return replace(decision, due=True, next_check=now + MIN_RETRY,
                   reason=f"fleet has a newer certificate (version {version}, ordered by {ordered_by})")


def next_check_with_reload(decision: Decision, history: History, *, name: str, reload_owed: bool,
                           now: datetime) -> datetime:
    """When to look again: the decision's moment, sooner when a reload is still owed (retried on the backoff)."""
    if not reload_owed:
        return decision.next_check
    retry = (history.last_attempt_at or now) + backoff_delay(max(history.failures, 1), name)
    return min(decision.next_check, max(retry, now + timedelta(seconds=1)))


def backoff_delay(failures: int, name: str, *, cap: timedelta = MAX_RETRY) -> timedelta:
    """10 min, 20 min, 40 min, ... up to ``cap`` (12 h), each scaled by a jitter in [0.75, 1), never under 10 min."""
    base = MIN_RETRY * (1 << min(failures - 1, 16))
    jitter = 0.75 + 0.25 * _unit_hash(name, str(failures), "backoff")
    return max(MIN_RETRY, min(base, cap) * jitter)


def _unit_hash(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts``: randomness that is the same on every call and every host."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
