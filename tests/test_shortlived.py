"""160-hour (``shortlived``) certificates: renewed on their own, again and again, and never a false alert.

The month is simulated with the pure core and the clock passed in (renewal policy, the CA's ARI window, expiry
alerts, ``check`` thresholds); the renewal itself is then done for real against Pebble's ``shortlived`` profile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.alerts.rules import DEFAULT_WARN_DAYS, expiry_alert
from certkeeper.app import build_app
from certkeeper.config import load_config
from certkeeper.model import RenewBefore
from certkeeper.probe.judge import thresholds_for
from certkeeper.renewal.policy import History, Installed, Wanted, decide_renewal
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import TODAYS_PROFILES, Pebble

LIFETIME = timedelta(hours=160)
START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
MONTH = timedelta(days=30)
CHECK_INTERVAL = timedelta(hours=12)  # the reference configuration's


def ari_window(not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
    """A CA's suggested window (RFC 9773) as Let's Encrypt and Pebble give it: two thirds in, a day either side."""
    ideal = not_after - (not_after - not_before) / 3
    return max(not_before, ideal - timedelta(days=1)), min(not_after, ideal + timedelta(days=1))


@dataclass
class Month:
    renewals: list[tuple[datetime, timedelta]]  # when, and how much lifetime was left
    alerts: list[str]
    check_warnings: list[datetime]
    failures: int


def simulate_month(*, outages: tuple[tuple[datetime, datetime], ...] = (), renew_before: str = "1/3") -> Month:
    """The daemon's loop over a month: wake at next_check, renew what is due, raise what alerts are owed.

    A renewal attempted during an outage fails; ``check`` (Nagios) is asked every hour in between.
    """
    wanted = Wanted("mail", ("mail.example.test",), ("ecdsa-p256",), RenewBefore.parse(renew_before))
    installed: Installed | None = None
    history = History()
    month = Month([], [], [], 0)
    now, nagios = START, START
    while now < START + MONTH:
        while nagios < now:  # hourly check between two wake-ups, against what is installed then
            if installed is not None:
                warning, _ = thresholds_for(LIFETIME / timedelta(days=1), 21.0, 7.0)
                if installed.not_after - nagios <= timedelta(days=warning):
                    month.check_warnings.append(nagios)
            nagios += timedelta(hours=1)
        decision = decide_renewal(installed, wanted, history, now=now, check_interval=CHECK_INTERVAL)
        if decision.due:
            if any(start <= now < end for start, end in outages):
                history = History(history.failures + 1, now, history.ari_start, history.ari_end)
                month.failures += 1
            else:
                if installed is not None:
                    month.renewals.append((now, installed.not_after - now))
                fingerprint = hashlib.sha256(now.isoformat().encode()).hexdigest()
                installed = Installed(fingerprint, now, now + LIFETIME - timedelta(seconds=1), wanted.domains,
                                      wanted.key_types)
                history = History(0, now, *ari_window(installed.not_before, installed.not_after))
            decision = decide_renewal(installed, wanted, history, now=now, check_interval=CHECK_INTERVAL)
        assert installed is not None
        alert = expiry_alert("mail", "mail.example.test", installed.not_before, installed.not_after,
                             DEFAULT_WARN_DAYS, now)
        if alert is not None:
            month.alerts.append(f"{now}: {alert.key}")
        assert decision.next_check > now
        now = decision.next_check
    return month


def test_a_shortlived_certificate_renews_on_its_own_all_month_and_never_alerts() -> None:
    month = simulate_month()

    # Renewed inside the CA's window or at a third left: every 3.5 to 4.5 days, 6 to 8 times in 30 days.
    assert 6 <= len(month.renewals) <= 8
    assert all(left > LIFETIME / 4 for _, left in month.renewals)
    assert month.alerts == []
    assert month.check_warnings == []


def test_a_six_hour_ca_outage_at_renewal_time_is_retried_without_any_alert() -> None:
    first = simulate_month().renewals[0][0]
    month = simulate_month(outages=((first, first + timedelta(hours=6)),))

    assert month.failures >= 3
    assert len(month.renewals) >= 6
    assert month.alerts == []
    assert month.check_warnings == []


def test_a_ca_down_for_two_days_is_warned_about_before_the_certificate_is_critical() -> None:
    """The other side of "no false alerts": a real problem is told, while there is still time."""
    first = simulate_month().renewals[0][0]
    month = simulate_month(outages=((first, first + timedelta(days=2)),))

    assert month.alerts and "21d" in month.alerts[0]
    assert month.check_warnings


# --- the renewal for real, against Pebble's shortlived profile -------------------------------------------------


class Clock:
    """Real time plus an offset the test moves forward (Pebble's certificates carry real times)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return pki.now_utc() + self.offset


@pytest.fixture(scope="module")
def profiled_pebble(bind: Bind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with Pebble(tmp_path_factory.mktemp("pebble-shortlived"), bind=bind, profiles=TODAYS_PROFILES) as server:
        yield server


@pytest.mark.testbed
def test_a_shortlived_certificate_from_pebble_is_renewed_by_a_pass_when_the_clock_reaches_its_window(
        profiled_pebble: Pebble, tmp_path: Path) -> None:
    roots = profiled_pebble.write_issuer_chain(tmp_path / "roots.pem")
    config_file = tmp_path / "certkeeper.toml"
    config_file.write_text(
        f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\ncheck_interval = "12h"\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{profiled_pebble.directory_url}"\n'
        f'ca_bundle = "{profiled_pebble.ca_file}"\ntrust_roots = "{roots}"\nprofile = "shortlived"\n'
        f'http_address = "127.0.0.1"\nhttp_port = {profiled_pebble.http_port}\n'
        '[certificates.mail]\nissuer = "pebble"\ndomains = ["shortlived.example.test"]\n')
    config = load_config(config_file)
    clock = Clock()
    app = build_app(config, clock=clock)
    home = CertificateHome(config.settings.state_dir, "mail")
    try:
        assert [o.result for o in app.run_pass()] == ["renewed"]
        first = home.current()
        assert first is not None
        (pair,) = first.pairs
        assert pair.not_after - pair.not_before + timedelta(seconds=1) == LIFETIME

        clock.offset = (pair.not_after - timedelta(hours=80)) - pki.now_utc()  # before the CA's window opens
        assert [o.result for o in app.run_pass()] == ["not-due"]

        clock.offset = (pair.not_after - timedelta(hours=50)) - pki.now_utc()  # past a third left
        assert [o.result for o in app.run_pass()] == ["renewed"]
        second = home.current()
        assert second is not None and second.id != first.id
        (renewed,) = second.pairs
        assert renewed.not_after - renewed.not_before + timedelta(seconds=1) == LIFETIME
    finally:
        app.close()
