"""dns-persist-01 records (draft-ietf-acme-dns-persist): what to publish once, and whether a record would pass.

Pure functions of plain values and ``now``; the DNS lookups are :class:`certkeeper.issuers.challenges.PersistDns01`.

The record, at ``_validation-persist.<domain>`` (a wildcard's base name), is an RFC 8659 issue-value::

    <issuer-domain-name>; accounturi=<account URI>[; policy=wildcard][; persistUntil=<unix seconds>]

The CA accepts it when the issuer domain name is one of its own (the challenge's ``issuer-domain-names``, which
are its CAA identities), ``accounturi`` is exactly the ordering account's URI, ``policy=wildcard`` is there for a
wildcard name, and ``persistUntil`` (if any) is not past.  Tags are case-insensitive, values are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from certkeeper.values import frozen


@frozen
class PersistRecord:
    """One issue-value as parsed: the issuer's domain name and the parameters certkeeper judges."""

    issuer_domain_name: str
    account_uri: str = ""
    policy: str = ""
    persist_until: datetime | None = None

    @property
    def text(self) -> str:
        """The record's value as it is published."""
        parts = [self.issuer_domain_name, f"accounturi={self.account_uri}"]
        if self.policy:
            parts.append(f"policy={self.policy}")
        if self.persist_until is not None:
            parts.append(f"persistUntil={int(self.persist_until.timestamp())}")
        return "; ".join(parts)


def wanted_record(issuer_domain_name: str, account_uri: str, *, wildcard: bool,
                  persist_until: datetime | None) -> PersistRecord:
    """The record to publish for one name."""
    return PersistRecord(issuer_domain_name, account_uri, "wildcard" if wildcard else "", persist_until)


def parse_persist_record(text: str) -> PersistRecord | None:
    """An issue-value -> :class:`PersistRecord`; None when it is malformed (the CA would refuse it too)."""
    issuer, *parameters = text.split(";")
    issuer = issuer.strip(" \t")
    if not issuer:
        return None
    fields: dict[str, str] = {}
    for parameter in parameters:
        tag, equals, value = parameter.strip(" \t").partition("=")
        tag, value = tag.strip(" \t").lower(), value.strip(" \t")
        if not equals or not tag or tag in fields:
            return None
        fields[tag] = value
    until = None
    if "persistuntil" in fields:
        try:
            until = datetime.fromtimestamp(int(fields["persistuntil"]), UTC)
        except (ValueError, OverflowError):
            return None
    policy = fields.get("policy", "")
    return PersistRecord(issuer, fields.get("accounturi", ""), "wildcard" if policy.lower() == "wildcard" else "",
                         until)


def judge_persist_records(values: Sequence[str], *, issuer_domain_names: Sequence[str], account_uri: str,
                          wildcard: bool, now: datetime) -> str | None:
    """None when one of ``values`` would be accepted; otherwise what is missing or wrong, in a sentence."""
    ours = [(value, parse_persist_record(value)) for value in values]
    ours = [(value, record) for value, record in ours
            if record is None or record.issuer_domain_name in issuer_domain_names]
    if not ours:
        found = f" (found only: {'; '.join(repr(v) for v in values)})" if values else ""
        return (f"no TXT record for issuer {' or '.join(issuer_domain_names) or '?'}{found}; publish it with "
                f"`certkeeper acme persist-record NAME --publish`")
    reasons: list[str] = []
    for value, record in ours:
        if record is None:
            reasons.append(f"{value!r} is malformed")
        elif record.account_uri != account_uri:
            reasons.append(f"{value!r} names accounturi={record.account_uri or '(none)'}, but this account is "
                           f"{account_uri}")
        elif wildcard and record.policy != "wildcard":
            reasons.append(f"{value!r} lacks policy=wildcard, needed for the wildcard name")
        elif record.persist_until is not None and record.persist_until <= now:
            reasons.append(f"{value!r} expired at persistUntil {record.persist_until.isoformat()}")
        else:
            return None
    return "; ".join(reasons) + "; publish the record `certkeeper acme persist-record NAME` prints"


def persist_until_warning(persist_until: datetime | None, *, warning: timedelta, now: datetime) -> timedelta | None:
    """The time left before ``persistUntil`` when that is closer than ``warning`` (an alert is owed), else None."""
    if persist_until is None:
        return None
    left = persist_until - now
    return left if left < warning else None
