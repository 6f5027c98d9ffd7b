"""dns-persist-01 records, pure: what is published, and why a record would be refused (draft-ietf-acme-dns-persist)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certkeeper.issuers.persist import (
    judge_persist_records,
    parse_persist_record,
    persist_until_warning,
    wanted_record,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CA = ("pebble.letsencrypt.org",)
ME = "https://ca.example/acct/1"


def judge(*values: str, wildcard: bool = False) -> str | None:
    return judge_persist_records(values, issuer_domain_names=CA, account_uri=ME, wildcard=wildcard, now=NOW)


def test_the_published_record_round_trips() -> None:
    until = NOW + timedelta(days=365)
    record = wanted_record(CA[0], ME, wildcard=True, persist_until=until)
    assert record.text == (f"pebble.letsencrypt.org; accounturi={ME}; policy=wildcard; "
                           f"persistUntil={int(until.timestamp())}")
    assert parse_persist_record(record.text) == record
    mixed_case = parse_persist_record("pebble.letsencrypt.org;AccountURI=x; Policy=WildCard")
    assert mixed_case is not None and (mixed_case.account_uri, mixed_case.policy) == ("x", "wildcard")


def test_a_record_that_would_pass_and_the_ways_one_would_not() -> None:
    assert judge(f"pebble.letsencrypt.org; accounturi={ME}") is None
    assert judge("letsencrypt.org; accounturi=x", f"pebble.letsencrypt.org; accounturi={ME}") is None
    assert "no TXT record for issuer pebble.letsencrypt.org (found only: 'letsencrypt.org" in str(
        judge("letsencrypt.org; accounturi=x"))
    assert "names accounturi=https://other" in str(judge("pebble.letsencrypt.org; accounturi=https://other"))
    assert "lacks policy=wildcard" in str(judge(f"pebble.letsencrypt.org; accounturi={ME}", wildcard=True))
    past = int((NOW - timedelta(days=1)).timestamp())
    assert "expired at persistUntil" in str(judge(f"pebble.letsencrypt.org; accounturi={ME}; persistUntil={past}"))
    assert "is malformed" in str(judge("pebble.letsencrypt.org; accounturi"))
    assert "is malformed" in str(judge(f"pebble.letsencrypt.org; accounturi={ME}; persistUntil=soon"))


def test_persist_until_warns_only_when_closer_than_the_warning() -> None:
    assert persist_until_warning(None, warning=timedelta(days=30), now=NOW) is None
    assert persist_until_warning(NOW + timedelta(days=40), warning=timedelta(days=30), now=NOW) is None
    assert persist_until_warning(NOW + timedelta(days=10), warning=timedelta(days=30), now=NOW) == timedelta(days=10)
