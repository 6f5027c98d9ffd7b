"""The renewal decision: rules in order, and the properties the daemon relies on (Hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from certkeeper.model import RenewBefore
from certkeeper.renewal.policy import (
    MIN_RETRY,
    Decision,
    History,
    Installed,
    Wanted,
    backoff_delay,
    decide_again,
    decide_renewal,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def installed(lifetime: timedelta = 90 * DAY, *, start: datetime = T0, fingerprint: str = "ab",
              domains: tuple[str, ...] = ("mail.example.org",), key_types: tuple[str, ...] = ("ecdsa-p256",),
              key_matches: bool = True) -> Installed:
    return Installed(fingerprint, start, start + lifetime, domains, key_types, key_matches)


def wanted(name: str = "mail", renew_before: str = "1/3") -> Wanted:
    return Wanted(name, ("mail.example.org",), ("ecdsa-p256",), RenewBefore.parse(renew_before))


def decide(at: datetime, inst: Installed | None = None, want: Wanted | None = None,
           history: History = History()) -> Decision:
    return decide_renewal(inst, want or wanted(), history, now=at, check_interval=12 * HOUR)


def test_nothing_installed_is_due_now() -> None:
    decision = decide(T0, None)
    assert decision.due and decision.reason == "no certificate installed yet"


def test_key_mismatch_domain_and_key_type_changes_are_due_now() -> None:
    assert decide(T0 + DAY, installed(key_matches=False)).reason == "the installed key does not match the certificate"
    assert decide(T0 + DAY, installed(domains=("old.example.org",))).reason == "the configured domains changed"
    assert decide(T0 + DAY, installed(key_types=("rsa-2048",))).reason == "the configured key types changed"


def test_renew_before_fraction_renews_with_a_third_left_for_45_and_6_day_certificates() -> None:
    for lifetime in (90 * DAY, 45 * DAY, 6 * DAY):
        cert = installed(lifetime)
        point = cert.not_after - lifetime / 3
        spread = min(lifetime * 0.02, 12 * HOUR)
        assert not decide(point - spread - timedelta(seconds=1), cert).due
        assert decide(point, cert).due


def test_an_ari_window_before_the_threshold_wins_and_a_late_window_is_ignored() -> None:
    cert = installed()
    early = History(ari_start=T0 + 10 * DAY, ari_end=T0 + 11 * DAY)
    decision = decide(T0 + 12 * DAY, cert, history=early)
    assert decision.due and decision.reason == "the CA's renewal window (ARI)"
    assert T0 + 10 * DAY <= decision.renew_at <= T0 + 11 * DAY
    # A window leaving less than a tenth of the lifetime is nonsense: the backstop ignores it.
    late = History(ari_start=cert.not_after - DAY, ari_end=cert.not_after)
    assert decide(T0 + 62 * DAY, cert, history=late).reason.startswith("renew_before")


def test_a_window_in_the_past_means_now() -> None:
    history = History(ari_start=T0 + DAY, ari_end=T0 + 2 * DAY)
    assert decide(T0 + 30 * DAY, installed(), history=history).due


def test_failures_back_off_but_never_past_the_critical_point() -> None:
    cert = installed()
    now = T0 + 61 * DAY
    history = History(failures=3, last_attempt_at=now)
    decision = decide(now + timedelta(minutes=5), cert, history=history)
    assert not decision.due and "retrying after 3 failures" in decision.reason
    assert decision.renew_at >= now + MIN_RETRY
    many = History(failures=30, last_attempt_at=cert.not_after - 10 * DAY)
    critical = cert.not_after - 9 * DAY
    assert decide(critical, cert, history=many).due


def test_backoff_grows_and_is_bounded() -> None:
    delays = [backoff_delay(n, "mail") for n in range(1, 12)]
    assert delays[0] >= MIN_RETRY
    assert delays[3] > delays[0]
    assert max(delays) <= timedelta(hours=12)


lifetimes = st.integers(min_value=3600, max_value=400 * 86400).map(lambda s: timedelta(seconds=s))
offsets = st.integers(min_value=-86400, max_value=500 * 86400).map(lambda s: timedelta(seconds=s))
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
fractions = st.sampled_from(["1/3", "1/2", "1/10", "30d", "1d", "6h"])
windows = st.one_of(st.none(), st.tuples(offsets, st.integers(0, 10 * 86400)))
failures = st.integers(min_value=0, max_value=20)


def history_for(window: tuple[timedelta, int] | None, fails: int, last: timedelta) -> History:
    start = T0 + window[0] if window else None
    end = start + timedelta(seconds=window[1]) if start and window else None
    return History(failures=fails, last_attempt_at=T0 + last if fails else None, ari_start=start, ari_end=end)


@settings(max_examples=300, deadline=None)
@given(lifetimes, offsets, offsets, names, fractions, windows, failures, offsets)
def test_once_due_stays_due(lifetime: timedelta, t1: timedelta, step: timedelta, name: str, rb: str,
                            window: tuple[timedelta, int] | None, fails: int, last: timedelta) -> None:
    # From not_before on: a certificate not valid yet is due only while it is not valid (rule 1).
    cert, want, history = installed(lifetime), wanted(name, rb), history_for(window, fails, last)
    first = decide(T0 + abs(t1), cert, want, history)
    if first.due:
        assert decide(T0 + abs(t1) + abs(step), cert, want, history).due


@settings(max_examples=300, deadline=None)
@given(lifetimes, offsets, names, fractions, windows, failures, offsets)
def test_always_due_after_not_after_unless_a_retry_was_just_made(
        lifetime: timedelta, after: timedelta, name: str, rb: str,
        window: tuple[timedelta, int] | None, fails: int, last: timedelta) -> None:
    cert, history = installed(lifetime), history_for(window, fails, last)
    now = cert.not_after + abs(after)
    recent_attempt = history.last_attempt_at is not None and now - history.last_attempt_at < MIN_RETRY
    if not recent_attempt:
        assert decide(now, cert, wanted(name, rb), history).due


@settings(max_examples=300, deadline=None)
@given(lifetimes, offsets, names, fractions, windows, failures, offsets)
def test_the_next_check_is_in_the_future(lifetime: timedelta, t: timedelta, name: str, rb: str,
                                         window: tuple[timedelta, int] | None, fails: int, last: timedelta) -> None:
    now = T0 + t
    decision = decide(now, installed(lifetime), wanted(name, rb), history_for(window, fails, last))
    assert decision.next_check > now


def test_certificates_issued_together_are_not_renewed_in_the_same_second() -> None:
    moments = {decide(T0, installed(fingerprint=f"{i:04x}"), wanted(f"cert{i}")).renew_at for i in range(200)}
    assert len(moments) == 200
    spread = max(moments) - min(moments)
    assert spread > 6 * HOUR  # up to 2 % of 90 days, capped at 12 h


@settings(max_examples=500, deadline=None)
@given(lifetimes, offsets, offsets, offsets, names, fractions, windows, failures, offsets, st.booleans())
def test_a_decision_found_again_is_the_one_deciding_again_gives(
        lifetime: timedelta, start: timedelta, t0: timedelta, step: timedelta, name: str, rb: str,
        window: tuple[timedelta, int] | None, fails: int, last: timedelta, nothing_installed: bool) -> None:
    """decide_again (what a daemon's next pass uses while the inputs are unchanged) agrees with decide_renewal
    whenever it answers; it declines only what it cannot know."""
    cert = None if nothing_installed else installed(lifetime, start=T0 + start)
    want, history = wanted(name, rb), history_for(window, fails, last)
    first, then = decide(T0 + t0, cert, want, history), T0 + t0
    for later in (then, then + abs(step), then + abs(step) / 7, then + timedelta(seconds=1), then - abs(step)):
        again = decide_again(first, then, cert, now=later, check_interval=12 * HOUR)
        if again is not None:
            assert again == decide(later, cert, want, history)
    if not first.due and then + abs(step) / 7 < first.renew_at and cert is not None \
            and (then < cert.not_before) == (then + abs(step) / 7 < cert.not_before) \
            and (then >= cert.not_after) == (then + abs(step) / 7 >= cert.not_after):
        assert decide_again(first, then, cert, now=then + abs(step) / 7, check_interval=12 * HOUR) is not None
