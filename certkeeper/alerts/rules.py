"""Which alerts are owed: pure decisions of plain values and ``now``, no IO.

Thresholds.  ``warn_days`` (default 21, 14, 7, 3, 1) are days before ``not_after``.  A certificate whose lifetime
is shorter than four times the largest threshold (84 days for the default: the internal CA's 30-day
certificates, 45-day ``tlsserver`` and 160-hour ``shortlived`` ACME profiles) would otherwise be "expiring" for
most of its life, so its thresholds are scaled: each becomes ``lifetime * days / (4 * max(warn_days))``, so that
the first warning comes a twelfth of the lifetime after the default renewal point (a third left).  The scaling is
continuous (an 84-day certificate gets exactly 21, 14, 7, 3, 1 days), keeps the order of the thresholds, and
gives a 45-day certificate 11.3, 7.5, 3.8, 1.6, 0.5 days, a 160-hour one 40, 26.7, 13.3, 5.7, 1.9 hours.

No flood.  Only the tightest crossed threshold is raised, under a key that names the certificate's ``not_after``,
so a certificate first seen two days before expiry sends one mail (not five), each threshold alerts at most once,
and a renewed certificate (a new ``not_after``) is armed again without any bookkeeping.  Recoveries re-arm
endpoint and renewal alerts by forgetting their key prefixes (:func:`endpoint_prefix`, :func:`renewal_prefix`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from certkeeper.model import SHORT_LIVED_FACTOR
from certkeeper.values import frozen

DEFAULT_WARN_DAYS: tuple[int, ...] = (21, 14, 7, 3, 1)
# Thresholds of this many (nominal) days or fewer are CRITICAL: at that point a failed renewal leaves no
# time to wait for the next scheduled attempt.
CRITICAL_DAYS = 3


class Severity(enum.StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def worst_severity(severities: Sequence[str]) -> Severity:
    """The most severe of ``severities`` (unknown spellings count as WARNING); INFO for none."""
    known = [Severity(s) if s in Severity.__members__ else Severity.WARNING for s in severities]
    return max(known, key=lambda s: s.rank, default=Severity.INFO)


@frozen
class Threshold:
    """One warning threshold of one certificate: ``days`` as configured, ``before`` as applied."""

    days: int
    before: timedelta

    @property
    def severity(self) -> Severity:
        return Severity.CRITICAL if self.days <= CRITICAL_DAYS else Severity.WARNING


def effective_thresholds(warn_days: Sequence[int], lifetime: timedelta) -> tuple[Threshold, ...]:
    """The thresholds for a certificate of ``lifetime``, widest first (scaled when short-lived, see above)."""
    days = sorted({d for d in warn_days if d > 0}, reverse=True)
    if not days:
        return ()
    largest = days[0]
    if lifetime >= timedelta(days=SHORT_LIVED_FACTOR * largest) or lifetime <= timedelta(0):
        return tuple(Threshold(d, timedelta(days=d)) for d in days)
    return tuple(Threshold(d, lifetime * d / (SHORT_LIVED_FACTOR * largest)) for d in days)


@frozen
class ExpiryAlert:
    """An expiry alert owed for a certificate: the tightest threshold crossed, or ``expired``."""

    key: str
    severity: Severity
    threshold: Threshold | None  # None: the certificate has expired
    remaining: timedelta  # negative once expired


def expiry_alert(
    owner: str,
    subject: str,
    not_before: datetime,
    not_after: datetime,
    warn_days: Sequence[int],
    now: datetime,
) -> ExpiryAlert | None:
    """The expiry alert owed at ``now`` (de-duplicated by its key in the store), or None when none is."""
    remaining = not_after - now
    if remaining <= timedelta(0):
        return ExpiryAlert(f"{expiry_prefix(owner, subject, not_after)}expired", Severity.CRITICAL, None, remaining)
    crossed = [t for t in effective_thresholds(warn_days, not_after - not_before) if remaining <= t.before]
    if not crossed:
        return None
    tightest = crossed[-1]
    key = f"{expiry_prefix(owner, subject, not_after)}{tightest.days}d"
    return ExpiryAlert(key, tightest.severity, tightest, remaining)


def expiry_prefix(owner: str, subject: str, not_after: datetime) -> str:
    return f"expiry:{owner}:{subject}:{_stamp(not_after)}:"


def endpoint_prefix(owner: str, endpoint: str) -> str:
    """Keys of an endpoint's failure alerts; forgetting them re-arms the endpoint."""
    return f"endpoint:{owner}:{endpoint}:down:"


def endpoint_failed_key(owner: str, endpoint: str, status: str, message: str) -> str:
    # The finding in the key: a second, different problem on a failing endpoint is news; the same one is not.
    return f"{endpoint_prefix(owner, endpoint)}{status}:{_digest(_first_word(message))}"


def renewal_prefix(name: str) -> str:
    return f"renewal:{name}:failed:"


def renewal_failed_key(name: str, error: str) -> str:
    """The same error on every retry alerts once; a different error alerts again."""
    return f"{renewal_prefix(name)}{_digest(error)}"


def stale_prefix(name: str) -> str:
    return f"stale:{name}:"


def hook_prefix(name: str) -> str:
    return f"hook:{name}:"


def describe_remaining(remaining: timedelta) -> str:
    """``expires in 2 days``, ``expires in 5 hours``, ``expired 3 days ago``: the words of a subject line."""
    seconds = remaining.total_seconds()
    amount = _amount(abs(seconds))
    return f"expires in {amount}" if seconds > 0 else f"expired {amount} ago"


def _amount(seconds: float) -> str:
    if seconds >= 2 * 86400:
        value, unit = int(seconds // 86400), "day"
    elif seconds >= 2 * 3600:
        value, unit = int(seconds // 3600), "hour"
    else:
        value, unit = max(1, int(seconds // 60)), "minute"
    return f"{value} {unit}{'s' if value != 1 else ''}"


def digest_due(mode: str, severities: Sequence[str], last_digest_day: bool, *, force: bool = False) -> bool:
    """Whether pending alerts go out now.

    ``immediate``: whenever something is pending.  ``daily``: one digest per UTC day (``last_digest_day`` says
    whether today's went out already), except that a CRITICAL alert goes out at once: a certificate that
    expires tomorrow must not wait for tomorrow's summary.
    """
    if not severities:
        return False
    if force or mode != "daily":
        return True
    return not last_digest_day or worst_severity(severities) is Severity.CRITICAL


def digest_day_key(now: datetime) -> str:
    """The reserved key that records "today's daily digest went out" (UTC days)."""
    return f"digest:daily:{now.astimezone(UTC).date().isoformat()}"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _first_word(message: str) -> str:
    # Endpoint messages carry timings and counters ("timed out after 10.0 s"); their finding code comes first.
    return message.split(":", 1)[0].strip()
