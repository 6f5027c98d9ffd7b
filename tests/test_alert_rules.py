"""The pure alert decisions: thresholds, their scaling for short-lived certificates, keys, wording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from certkeeper.alerts.rules import (
    Severity,
    describe_remaining,
    digest_due,
    effective_thresholds,
    expiry_alert,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT = (21, 14, 7, 3, 1)

lifetimes = st.timedeltas(min_value=timedelta(hours=6), max_value=timedelta(days=400))
warn_lists = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=6, unique=True).map(
    lambda days: tuple(sorted(days, reverse=True)))


def test_long_lived_certificates_use_the_configured_days() -> None:
    """A 90-day certificate: 21, 14, 7, 3, 1 days as written."""
    assert [t.before for t in effective_thresholds(DEFAULT, timedelta(days=90))] == [
        timedelta(days=d) for d in DEFAULT]


def test_short_lived_certificates_get_scaled_thresholds() -> None:
    """A 30-day certificate is not "expiring" for 21 of its 30 days: 21 days becomes 7.5 (30 * 21 / 84)."""
    scaled = effective_thresholds(DEFAULT, timedelta(days=30))
    assert scaled[0].before == timedelta(days=7.5)
    assert [t.days for t in scaled] == list(DEFAULT)
    shortlived = effective_thresholds(DEFAULT, timedelta(hours=160))
    assert shortlived[0].before == timedelta(hours=40)


@given(warn_lists, lifetimes)
def test_thresholds_stay_ordered_and_inside_the_lifetime(warn: tuple[int, ...], lifetime: timedelta) -> None:
    """Scaled or not, thresholds keep their order, and scaled ones never exceed a quarter of the lifetime."""
    thresholds = effective_thresholds(warn, lifetime)
    befores = [t.before for t in thresholds]
    assert befores == sorted(befores, reverse=True)
    if lifetime < timedelta(days=4 * max(warn)):
        assert befores[0] <= lifetime / 4 + timedelta(microseconds=1)


@given(warn_lists, lifetimes, st.lists(st.floats(min_value=-0.2, max_value=1.3), min_size=2, max_size=25))
def test_each_threshold_alerts_at_most_once_and_in_order(
    warn: tuple[int, ...], lifetime: timedelta, moments: list[float],
) -> None:
    """Observed at any increasing times, a certificate raises each key at most once, tightest last."""
    not_after = T0 + lifetime
    raised: list[str] = []
    seen: set[str] = set()
    for fraction in sorted(moments):
        decision = expiry_alert("mail", "mail.example.org", T0, not_after, warn, T0 + lifetime * fraction)
        if decision is not None and decision.key not in seen:
            seen.add(decision.key)
            raised.append(decision.key)
    assert len(raised) <= len(warn) + 1
    order = [f"{d}d" for d in warn] + ["expired"]
    positions = [order.index(key.rsplit(":", 1)[1]) for key in raised]
    assert positions == sorted(positions)


@given(warn_lists, lifetimes, st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_crossing_is_monotone_in_time(warn: tuple[int, ...], lifetime: timedelta, a: float, b: float) -> None:
    """Once a threshold is crossed it stays crossed: later never means a wider threshold or no alert."""
    early, late = sorted((a, b))
    first = expiry_alert("x", "x", T0, T0 + lifetime, warn, T0 + lifetime * early)
    second = expiry_alert("x", "x", T0, T0 + lifetime, warn, T0 + lifetime * late)
    if first is not None:
        assert second is not None
        assert second.remaining <= first.remaining
        if first.threshold is not None and second.threshold is not None:
            assert second.threshold.before <= first.threshold.before
        if second.severity is not Severity.CRITICAL:
            assert first.severity is not Severity.CRITICAL


@given(warn_lists, lifetimes, st.floats(min_value=1.0, max_value=3.0))
def test_always_critical_after_not_after(warn: tuple[int, ...], lifetime: timedelta, fraction: float) -> None:
    """An expired certificate always owes a CRITICAL 'expired' alert."""
    decision = expiry_alert("x", "x", T0, T0 + lifetime, warn, T0 + lifetime * fraction)
    assert decision is not None and decision.severity is Severity.CRITICAL and decision.key.endswith(":expired")


def test_first_sight_close_to_expiry_raises_only_the_tightest_threshold() -> None:
    """Seen 2 days before expiry: one CRITICAL alert for the 3-day threshold, not five mails."""
    decision = expiry_alert("mail", "mail.example.org", T0, T0 + timedelta(days=90), DEFAULT,
                            T0 + timedelta(days=88))
    assert decision is not None
    assert decision.key.endswith(":3d") and decision.severity is Severity.CRITICAL
    assert expiry_alert("mail", "m", T0, T0 + timedelta(days=90), DEFAULT, T0 + timedelta(days=60)) is None


def test_a_renewed_certificate_has_new_keys() -> None:
    """The key names not_after, so a renewal re-arms every threshold without forgetting anything."""
    old = expiry_alert("mail", "m", T0, T0 + timedelta(days=90), DEFAULT, T0 + timedelta(days=80))
    new = expiry_alert("mail", "m", T0 + timedelta(days=60), T0 + timedelta(days=150), DEFAULT,
                       T0 + timedelta(days=140))
    assert old is not None and new is not None and old.key != new.key


def test_remaining_time_reads_like_a_person_wrote_it() -> None:
    """Subject wording."""
    assert describe_remaining(timedelta(days=2, hours=5)) == "expires in 2 days"
    assert describe_remaining(timedelta(hours=30)) == "expires in 30 hours"
    assert describe_remaining(timedelta(minutes=1)) == "expires in 1 minute"
    assert describe_remaining(timedelta(days=-3)) == "expired 3 days ago"


def test_daily_digest_waits_except_for_critical() -> None:
    """digest_due: immediate always; daily once a day, CRITICAL at once; nothing pending, nothing sent."""
    assert digest_due("immediate", ["INFO"], True)
    assert not digest_due("immediate", [], False)
    assert digest_due("daily", ["WARNING"], False)
    assert not digest_due("daily", ["WARNING"], True)
    assert digest_due("daily", ["WARNING", "CRITICAL"], True)
    assert digest_due("daily", ["INFO"], True, force=True)
