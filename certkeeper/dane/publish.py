"""TLSA records in DNS: published with RFC 2136 updates, confirmed on every authoritative server, looked up
through a validating resolver.

The RFC 2136/TSIG client, the BIND key-file parser and the authoritative-server discovery are
:mod:`certkeeper.dnsclient`'s, shared with the dns-01 responder: one DNS update path in certkeeper.
The DNS settings default to the certificate's ACME issuer's (``dns_server``, ``tsig_key_file``, ``dns_zone``),
since a mail domain's DNS is usually updated through one key.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from certkeeper import dnsclient
from certkeeper.config import AcmeIssuerConfig, DaneConfig, IssuerConfig
from certkeeper.dane.propagation import Visibility, authoritative_answers, judge_visibility, resolver_answers
from certkeeper.dane.records import TlsaRecord, absolute
from certkeeper.deadline import Deadline
from certkeeper.dnsclient import parse_server, parse_tsig_key
from certkeeper.errors import DnsError, InputError, TlsaDnsError
from certkeeper.issuers.challenges import read_secret_file
from certkeeper.values import frozen


@frozen
class DnsSettings:
    """Where TLSA records are updated: the primary, its TSIG key file and (optionally) the zone."""

    server: str
    tsig_key_file: Path
    zone: str | None = None


def dns_settings(dane: DaneConfig, issuer: IssuerConfig | None) -> DnsSettings | None:
    """``dane``'s own settings, each missing one taken from the ACME issuer's RFC 2136 settings; None when there
    is no server or no key: the records are then published by hand (``certkeeper dane show``)."""
    acme = issuer if isinstance(issuer, AcmeIssuerConfig) else None
    server = dane.dns_server or (acme.dns_server if acme else None)
    key_file = dane.tsig_key_file or (acme.tsig_key_file if acme else None)
    zone = dane.zone or (acme.dns_zone if acme else None)
    if not server or not key_file:
        return None
    return DnsSettings(server, key_file, zone)


class TlsaPublisher:
    """Adds and removes TLSA records on the primary, and tells which are answered by every authoritative one.

    The authoritative servers are asked on the primary's port (see :class:`certkeeper.issuers.challenges.Rfc2136Dns01`).
    """

    def __init__(self, settings: DnsSettings, *, ttl: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            self.key = parse_tsig_key(read_secret_file(settings.tsig_key_file, "the TSIG key"),
                                      str(settings.tsig_key_file))
        except InputError as exc:
            raise TlsaDnsError(str(exc)) from None
        self.settings = settings
        self.host, self.port = parse_server(settings.server)
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._zones: dict[str, str] = {}

    def publish(self, add: Iterable[TlsaRecord], remove: Iterable[TlsaRecord]) -> None:
        """Remove ``remove`` and add ``add``: one signed update per zone, applied whole or not at all."""
        address = self._address()
        changes: dict[str, tuple[list[TlsaRecord], list[TlsaRecord]]] = defaultdict(lambda: ([], []))
        for record in add:
            changes[self._zone(address, record.name)][0].append(record)
        for record in remove:
            changes[self._zone(address, record.name)][1].append(record)
        for zone, (adding, removing) in changes.items():
            try:
                dnsclient.send_update(address, self.port, zone, self.key, ttl=self.ttl,
                                      add=[_text(r) for r in sorted(adding)],
                                      delete=[_text(r) for r in sorted(removing)])
            except DnsError as exc:
                msg = f"TLSA update of {zone} ({self.host}:{self.port}): {exc.detail}"
                raise TlsaDnsError(msg) from None

    def visibility(self, records: Iterable[TlsaRecord], *, resolver: str | None = None,
                   deadline: Deadline | None = None) -> Visibility:
        """Which of ``records`` every authoritative server of their zone answers now (each NS, every address,
        its SOA serial compared), and, with ``resolver``, the validating resolver returns with AD.  With
        ``deadline``, no query waits past it (a server not asked in time counts as not answering)."""
        address = self._address()
        wanted = frozenset(records)
        by_zone: dict[str, set[TlsaRecord]] = defaultdict(set)
        for record in wanted:
            by_zone[self._zone(address, record.name)].add(record)
        visible: set[TlsaRecord] = set()
        lagging: list[str] = []
        for zone, members in by_zone.items():
            names = {r.name for r in members}
            servers = authoritative_answers(address, self.port, zone, names, deadline=deadline)
            answers = resolver_answers(resolver, names, timeout=min(self.timeout, 5.0), deadline=deadline) \
                if resolver else None
            judged = judge_visibility(frozenset(members), servers, answers)
            visible |= judged.visible
            lagging += judged.lagging
        return Visibility(frozenset(visible), tuple(lagging))

    def visible(self, records: Iterable[TlsaRecord]) -> set[TlsaRecord]:
        """The records every authoritative server of their zone answers now."""
        return set(self.visibility(records).visible)

    def wait_visible(self, records: Iterable[TlsaRecord], *, resolver: str | None = None,
                     timeout: float | None = None) -> Visibility:
        """:meth:`visibility`, asked again with backoff until all are visible or ``timeout`` has passed; no query
        waits past it either, so a server that does not answer holds the wait no longer than ``timeout``."""
        wanted = frozenset(records)
        seconds = self.timeout if timeout is None else timeout
        deadline = self._clock() + seconds
        queries = Deadline(seconds)  # the queries' own waits are real seconds, whatever ``clock`` says
        delay = 0.05
        while True:
            seen = self.visibility(wanted, resolver=resolver, deadline=queries)
            if seen.visible == wanted or self._clock() + delay > deadline:
                return seen
            self._sleep(delay)
            delay = min(delay * 2, 2.0)

    def published(self, names: Iterable[str]) -> set[TlsaRecord]:
        """What the primary answers for ``names`` now (``certkeeper dane show --published``, tests)."""
        address = self._address()
        found: set[TlsaRecord] = set()
        for name in names:
            found |= self._answered(address, name)
        return found

    def _answered(self, server: str, name: str) -> set[TlsaRecord]:
        try:
            answer = dnsclient.query(server, self.port, name, "TLSA")
        except DnsError:
            return set()
        return {TlsaRecord.from_text(name, value) for value in answer.values}

    def _address(self) -> str:
        try:
            return dnsclient.resolve_address(self.host)
        except DnsError as exc:
            raise TlsaDnsError(str(exc)) from None

    def _zone(self, address: str, name: str) -> str:
        if self.settings.zone:
            return self.settings.zone
        if name not in self._zones:
            try:
                self._zones[name] = dnsclient.find_zone(address, self.port, name)
            except DnsError as exc:
                msg = f"{exc} (dane.zone)"
                raise TlsaDnsError(msg) from None
        return self._zones[name]


def _text(record: TlsaRecord) -> dnsclient.Record:
    return record.name, "TLSA", record.rdata


# -- lookups through a resolver (certkeeper check --dane) ------------------------------------------------------


@frozen
class TlsaAnswer:
    """A resolver's answer for one TLSA name: the records, and whether it validated them (the AD bit)."""

    name: str
    records: frozenset[TlsaRecord]
    authenticated: bool
    resolver: str
    rcode: str = "NOERROR"


def lookup_tlsa(name: str, resolver: str | None = None, *, timeout: float = 5.0) -> TlsaAnswer:
    """Ask ``resolver`` (``HOST[:PORT]``; default the first nameserver of ``/etc/resolv.conf``) for TLSA records.

    The query sets RD and AD: a validating resolver then reports in AD whether it validated the answer
    (RFC 6840 section 5.7), which is what RFC 7672 section 2.2 requires before a sender uses the records.
    Raises :class:`TlsaDnsError` when the resolver cannot be asked.
    """
    try:
        host, port = parse_server(resolver or dnsclient.default_resolver())
        answer = dnsclient.query(host, port, absolute(name), "TLSA", recursive=True, timeout=timeout)
    except DnsError as exc:
        msg = f"the TLSA query for {name}: {exc}"
        raise TlsaDnsError(msg) from None
    records = frozenset(TlsaRecord.from_text(name, value) for value in answer.values)
    return TlsaAnswer(absolute(name), records, answer.authenticated, f"{host}:{port}", answer.rcode)
