"""TLSA records in DNS: published with RFC 2136 updates, confirmed on every authoritative server, looked up
through a validating resolver.

The RFC 2136/TSIG client, the BIND key-file parser and the authoritative-server discovery are those of the
dns-01 responder (:class:`certkeeper.issuers.challenges.Rfc2136Dns01`): one DNS update path in certkeeper.
The DNS settings default to the certificate's ACME issuer's (``dns_server``, ``tsig_key_file``, ``dns_zone``),
since a mail domain's DNS is usually updated through one key.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from certkeeper.config import AcmeIssuerConfig, DaneConfig, IssuerConfig
from certkeeper.dane import TlsaRecord, absolute
from certkeeper.errors import InputError
from certkeeper.issuers.challenges import (
    ChallengeFailed,
    Rfc2136Dns01,
    _resolve_address,  # the dns-01 responder's own, so both resolve dns_server alike
    parse_server,
    parse_tsig_key,
    read_secret_file,
)


class TlsaDnsError(Exception):
    """Publishing or confirming TLSA records failed; the message names the server and what to fix."""


@dataclass(frozen=True)
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
    """Adds and removes TLSA records on the primary, and tells which are answered by every authoritative one."""

    def __init__(self, settings: DnsSettings, *, ttl: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            key = parse_tsig_key(read_secret_file(settings.tsig_key_file, "the TSIG key"), str(settings.tsig_key_file))
        except InputError as exc:
            raise TlsaDnsError(str(exc)) from None
        self.settings = settings
        self.client = Rfc2136Dns01(settings.server, key, zone=settings.zone, timeout=timeout, ttl=ttl)
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._zones: dict[str, dns.name.Name] = {}

    def publish(self, add: Iterable[TlsaRecord], remove: Iterable[TlsaRecord]) -> None:
        """Remove ``remove`` and add ``add``: one signed update per zone, applied whole or not at all."""
        address = self._address()
        changes: dict[dns.name.Name, tuple[list[TlsaRecord], list[TlsaRecord]]] = defaultdict(lambda: ([], []))
        for record in add:
            changes[self._zone(address, record.name)][0].append(record)
        for record in remove:
            changes[self._zone(address, record.name)][1].append(record)
        for zone, (adding, removing) in changes.items():
            try:
                self.client.send_update(address, zone, add=[_text(r) for r in sorted(adding)],
                                        delete=[_text(r) for r in sorted(removing)])
            except ChallengeFailed as exc:
                raise TlsaDnsError(f"TLSA update of {zone}: {exc}") from None

    def visible(self, records: Iterable[TlsaRecord]) -> set[TlsaRecord]:
        """The records every authoritative server of their zone answers now (one query per server and name)."""
        address = self._address()
        wanted = set(records)
        by_zone: dict[dns.name.Name, set[TlsaRecord]] = defaultdict(set)
        for record in wanted:
            by_zone[self._zone(address, record.name)].add(record)
        seen = set(wanted)
        for zone, members in by_zone.items():
            try:
                servers = self.client.authoritative_addresses(address, zone)
            except ChallengeFailed as exc:
                raise TlsaDnsError(str(exc)) from None
            for server in servers:
                for name in {r.name for r in members}:
                    answered = self._answered(server, name)
                    seen -= {r for r in members if r.name == name and r not in answered}
        return seen

    def wait_visible(self, records: Iterable[TlsaRecord]) -> set[TlsaRecord]:
        """:meth:`visible`, asked again with backoff until all are visible or ``timeout`` has passed."""
        wanted = set(records)
        deadline = self._clock() + self.timeout
        delay = 0.05
        while True:
            seen = self.visible(wanted)
            if seen == wanted or self._clock() + delay > deadline:
                return seen
            self._sleep(delay)
            delay = min(delay * 2, 2.0)

    def published(self, names: Iterable[str]) -> set[TlsaRecord]:
        """What the primary answers for ``names`` now (``certkeeper dane show --published``, tests)."""
        address = self._address()
        found: set[TlsaRecord] = set()
        for name in names:
            found |= self._answered(address, name, port=self.client.port)
        return found

    def _answered(self, server: str, name: str, *, port: int | None = None) -> set[TlsaRecord]:
        # A non-standard port of dns_server applies to every authoritative server (see Rfc2136Dns01).
        try:
            reply = self.client.query(server, port or self.client.port, dns.name.from_text(name), dns.rdatatype.TLSA)
        except ChallengeFailed:
            return set()
        return {TlsaRecord.from_text(name, rdata.to_text()) for rrset in reply.answer
                if rrset.rdtype == dns.rdatatype.TLSA for rdata in rrset}

    def _address(self) -> str:
        try:
            return _resolve_address(self.client.host)
        except ChallengeFailed as exc:
            raise TlsaDnsError(str(exc)) from None

    def _zone(self, address: str, name: str) -> dns.name.Name:
        if self.client.zone is not None:
            return self.client.zone
        if name not in self._zones:
            try:
                self._zones[name] = self.client.find_zone(address, name)
            except ChallengeFailed as exc:
                raise TlsaDnsError(f"{exc} (dane.zone)") from None
        return self._zones[name]


def _text(record: TlsaRecord) -> tuple[str, dns.rdatatype.RdataType, str]:
    return record.name, dns.rdatatype.TLSA, record.rdata


# -- lookups through a resolver (certkeeper check --dane) ------------------------------------------------------


@dataclass(frozen=True)
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
    if resolver is None:
        try:
            nameservers = dns.resolver.Resolver().nameservers
        except dns.exception.DNSException as exc:
            raise TlsaDnsError(f"no resolver configured in /etc/resolv.conf ({exc}); pass --resolver") from None
        if not nameservers:
            raise TlsaDnsError("no resolver configured in /etc/resolv.conf; pass --resolver")
        resolver = str(nameservers[0])
    host, port = parse_server(resolver)
    query = dns.message.make_query(absolute(name), dns.rdatatype.TLSA)
    query.flags |= dns.flags.AD
    try:
        reply, _ = dns.query.udp_with_fallback(query, host, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        raise TlsaDnsError(f"the TLSA query for {name} to {host}:{port} failed: {exc}") from None
    records = frozenset(TlsaRecord.from_text(name, rdata.to_text()) for rrset in reply.answer
                        if rrset.rdtype == dns.rdatatype.TLSA for rdata in rrset)
    return TlsaAnswer(absolute(name), records, bool(reply.flags & dns.flags.AD), f"{host}:{port}",
                      dns.rcode.to_text(reply.rcode()))
