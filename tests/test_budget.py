"""The order budget's pure rules and its configuration (the ledgers: tests/test_store_contract.py; fleets of
nodes on Pebble: tests/test_fleet_budget.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper.config import AcmeIssuerConfig, CertificateConfig
from certkeeper.errors import CaUnavailable, ConfigError, IssuanceError
from certkeeper.public_suffix import parse_suffix_list
from certkeeper.renewal.policy import BUDGET_JITTER, Decision, wait_for_budget
from certkeeper.store.budget import (
    Bucket,
    Limit,
    Waiter,
    decide_spend,
    is_renewal,
    level,
    limits_for,
    rate_limit_pause,
    registered_domains,
)
from certkeeper.store.versions import Version
from certkeeper.values import replace
from tests.configs import acme_issuer_config

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORDERS = Limit("orders le", 300, timedelta(hours=3))


def test_lets_encrypts_directory_gets_its_documented_limits_and_other_cas_none(tmp_path: Path) -> None:
    letsencrypt = acme_issuer_config(tmp_path, "https://acme-v02.api.letsencrypt.org/directory")
    assert (letsencrypt.orders_per_3h, letsencrypt.duplicates_per_week,
            letsencrypt.certificates_per_domain_week) == (300, 5, 50)
    other = acme_issuer_config(tmp_path, "https://acme.example.test/directory")
    assert (other.orders_per_3h, other.duplicates_per_week, other.certificates_per_domain_week) == (0, 0, 0)
    chosen = acme_issuer_config(tmp_path, "https://acme.example.test/directory",
                     "orders_per_3h = 50\nduplicates_per_week = 2\ncertificates_per_domain_week = 20")
    assert (chosen.orders_per_3h, chosen.duplicates_per_week, chosen.certificates_per_domain_week) == (50, 2, 20)


def test_a_negative_budget_is_refused_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"issuers\.ca\.orders_per_3h.*-1.*at least 0"):
        acme_issuer_config(tmp_path, "https://acme.example.test/directory", "orders_per_3h = -1")
    with pytest.raises(ConfigError, match=r"issuers\.ca\.certificates_per_domain_week.*at least 0"):
        acme_issuer_config(tmp_path, "https://acme.example.test/directory", "certificates_per_domain_week = -5")
    with pytest.raises(ConfigError, match=r"issuers\.ca\.certificates_per_domain_week"):
        acme_issuer_config(tmp_path, "https://acme.example.test/directory", 'certificates_per_domain_week = "fifty"')


SUFFIXES = parse_suffix_list("uk\nco.uk\norg\n")
LE = AcmeIssuerConfig(name="le", directory="https://acme-v02.api.letsencrypt.org/directory", orders_per_3h=300,
                      duplicates_per_week=5, certificates_per_domain_week=50)
MAIL = CertificateConfig(name="mail", issuer="le", domains=("mx1.example.co.uk", "MX2.example.co.uk",
                                                           "mail.example.org"))


def test_a_new_certificate_spends_one_token_from_each_registered_domain_it_names() -> None:
    keys = [(limit.key, limit.capacity, limit.period) for limit in limits_for(LE, MAIL, suffixes=SUFFIXES)]
    assert keys[2:] == [("domain acme-v02.api.letsencrypt.org example.co.uk", 50, timedelta(days=7)),
                        ("domain acme-v02.api.letsencrypt.org example.org", 50, timedelta(days=7))]
    assert [key for key, _, _ in keys[:2]] == [
        "orders le", "duplicates le mail.example.org,mx1.example.co.uk,mx2.example.co.uk"]
    renewal = limits_for(LE, MAIL, renewal=True, suffixes=SUFFIXES)
    assert [limit.key for limit in renewal] == [key for key, _, _ in keys[:2]]  # no registered domain's limit
    assert [limit.exempt for limit in renewal] == [True, False]  # nor orders: only a 429 on it holds a renewal
    assert [limit.key for limit in limits_for(LE, MAIL)] == [key for key, _, _ in keys]  # Debian's list agrees


def test_ip_addresses_count_as_their_own_registered_domain_and_ipv6_by_its_64() -> None:
    names = ["192.0.2.7", "2001:db8::1", "2001:db8:0:0:ffff::2", "*.mail.example.co.uk", "co.uk"]
    assert registered_domains(names, SUFFIXES) == ["192.0.2.7", "2001:db8::/64", "co.uk", "example.co.uk"]


def test_a_renewal_is_the_installed_certificates_exact_set_of_names_from_the_same_issuer(tmp_path: Path) -> None:
    def installed(issuer: str, domains: tuple[str, ...]) -> Version:
        return Version("mail", "v1", tmp_path, NOW, issuer, domains, ())

    assert is_renewal(installed("le", ("mail.example.org", "mx2.example.co.uk", "mx1.example.co.uk")), MAIL)
    assert not is_renewal(None, MAIL)  # nothing installed: a new certificate
    assert not is_renewal(installed("le", ("mx1.example.co.uk",)), MAIL)  # names added: a new set
    assert not is_renewal(installed("other", MAIL.domains), MAIL)  # another CA issued it


def test_a_full_bucket_spends_and_an_empty_one_names_the_moment_a_token_is_back() -> None:
    spent, go_at = decide_spend([ORDERS], {}, [], name="a", count=2, not_after=None, now=NOW)
    assert go_at is None and spent == [Bucket("orders le", 298.0, NOW)]
    empty = {"orders le": Bucket("orders le", 0.0, NOW)}
    assert decide_spend([ORDERS], empty, [], name="a", count=1, not_after=None, now=NOW) == (
        [], NOW + timedelta(seconds=36))  # Let's Encrypt refills one order every 36 s


def test_a_waiting_certificate_that_expires_sooner_is_served_first() -> None:
    bucket = {"orders le": Bucket("orders le", 1.0, NOW)}
    soon = Waiter("orders le", "soon", 1, NOW + timedelta(days=1), NOW, NOW, NOW)
    _, go_at = decide_spend([ORDERS], bucket, [soon], name="late", count=1, not_after=NOW + timedelta(days=3),
                            now=NOW)
    assert go_at is not None  # the one token is owed to "soon"
    spent, go_at = decide_spend([ORDERS], bucket, [soon], name="soon", count=1, not_after=soon.not_after, now=NOW)
    assert go_at is None and spent[0].tokens == 0.0
    # A waiter comes back at the moment it was told: until an hour after it, it still holds its place.
    told = Waiter("orders le", "soon", 1, NOW, NOW - timedelta(hours=2), NOW - timedelta(hours=2), NOW)
    assert decide_spend([ORDERS], bucket, [told], name="late", count=1, not_after=NOW + timedelta(days=3),
                        now=NOW)[1] is not None
    gone = replace(told, may_go_at=NOW - timedelta(minutes=61))
    assert decide_spend([ORDERS], bucket, [gone], name="late", count=1, not_after=NOW, now=NOW)[1] is None


def test_a_renewal_spends_nothing_from_the_issuers_bucket_yet_a_429_on_it_holds_it() -> None:
    renewal = replace(ORDERS, exempt=True)
    empty = {"orders le": Bucket("orders le", 0.0, NOW)}
    assert decide_spend([renewal], empty, [], name="a", count=1, not_after=NOW, now=NOW) == ([], None)
    assert decide_spend([ORDERS], empty, [], name="b", count=1, not_after=None, now=NOW)[1] is not None
    blocked = {"orders le": Bucket("orders le", 300.0, NOW, NOW + timedelta(minutes=5))}
    assert decide_spend([renewal], blocked, [], name="a", count=1, not_after=NOW, now=NOW) == (
        [], NOW + timedelta(minutes=5))


def test_a_renewal_told_to_wait_is_not_due_before_that_moment_then_due_again() -> None:
    due = Decision(True, "renew_before (1/3 of the lifetime left)", NOW, NOW + timedelta(minutes=10))
    until = NOW + timedelta(hours=2)
    waiting = wait_for_budget(due, until, name="mail", now=NOW)
    assert not waiting.due and waiting.renew_at == until and "waiting for the order budget" in waiting.reason
    assert until <= waiting.next_check < until + BUDGET_JITTER
    assert wait_for_budget(due, until, name="other", now=NOW).next_check != waiting.next_check  # spread
    assert wait_for_budget(due, until, name="mail", now=until) == due
    assert wait_for_budget(due, None, name="mail", now=NOW) == due


def test_a_429_pauses_for_its_retry_after_and_a_rate_limited_problem_for_an_hour() -> None:
    assert rate_limit_pause(CaUnavailable("ca", "mail", "slow down", retry_after=120)) == timedelta(minutes=2)
    limited = CaUnavailable("ca", "mail", "too many", problem_type="urn:ietf:params:acme:error:rateLimited")
    assert rate_limit_pause(limited) == timedelta(hours=1)
    assert rate_limit_pause(IssuanceError("ca", "mail", "bad CSR")) is None


@given(st.floats(0, 300), st.integers(0, 10**6), st.integers(1, 300))
def test_the_bucket_never_holds_more_than_its_capacity_and_never_lends(tokens: float, seconds: int,
                                                                     count: int) -> None:
    bucket = Bucket("orders le", tokens, NOW)
    later = NOW + timedelta(seconds=seconds)
    assert 0 <= level(ORDERS, bucket, later) <= ORDERS.capacity
    spent, go_at = decide_spend([ORDERS], {"orders le": bucket}, [], name="a", count=count, not_after=None, now=later)
    if go_at is None:
        assert spent[0].tokens >= 0 and level(ORDERS, bucket, later) >= count
    else:
        assert go_at > later and not spent
