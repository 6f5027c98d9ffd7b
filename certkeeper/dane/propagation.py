"""Whether published TLSA records are visible everywhere a sender may look: a pure judge of the answers
(:func:`judge_visibility`), and the queries that get them (:func:`authoritative_answers`, :func:`resolver_answers`).

The two-TTL wait of RFC 7671 section 8.1 counts from the moment the *new RRset* is what every authoritative
server answers: a secondary that has not transferred the new serial yet still hands out the old set, and a
resolver that asks it caches that set for a TTL.  So every name server of the zone (its NS set, every IPv4 and
IPv6 address of each) is asked directly, without recursion, for its SOA serial and each TLSA RRset.

When the zone is signed (``dane.resolver`` is set) a DANE sender uses the records only when its resolver
validated them (RFC 7672 section 2.2), so the validating resolver must also return them with the AD bit: a
primary that has not signed the new records yet, or signed them wrongly, serves an answer no sender accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from certkeeper import dnsclient
from certkeeper.dane.records import TlsaRecord
from certkeeper.deadline import Deadline
from certkeeper.errors import DnsError
from certkeeper.values import field, frozen


@frozen
class ServerAnswer:
    """What one authoritative address answered: its SOA serial and the TLSA RRset at each name asked."""

    server: str  # "ns2.example.org. [2001:db8::53]:53"
    serial: int | None
    rrsets: Mapping[str, frozenset[TlsaRecord]] = field(default_factory=dict)
    error: str = ""


@frozen
class ResolverAnswer:
    """The validating resolver's answer for one TLSA name."""

    name: str
    records: frozenset[TlsaRecord]
    authenticated: bool
    rcode: str
    resolver: str
    error: str = ""


@frozen
class Visibility:
    """Which wanted records every server (and the resolver) answers, and who lags, in words."""

    visible: frozenset[TlsaRecord]
    lagging: tuple[str, ...] = ()

    @property
    def lagging_servers(self) -> tuple[str, ...]:
        return lagging_servers(self.lagging)


def lagging_servers(lagging: Sequence[str]) -> tuple[str, ...]:
    """The servers named in :attr:`Visibility.lagging` lines (``"<server>: <why>"``)."""
    return tuple(dict.fromkeys(line.split(": ", 1)[0] for line in lagging))


def judge_visibility(wanted: frozenset[TlsaRecord], servers: Sequence[ServerAnswer],
                     resolver: Sequence[ResolverAnswer] | None) -> Visibility:
    """The records of ``wanted`` that every server answers, and the validating resolver (when there is one)
    returns with AD; each server or resolver that lags, with why (the records it misses and its serial against
    the highest seen, an error, no AD)."""
    visible = set(wanted)
    lagging: list[str] = []
    serials = [s.serial for s in servers if s.serial is not None]
    newest = max(serials) if serials else None
    for server in servers:
        if server.error:
            lagging.append(f"{server.server}: {server.error}")
            visible.clear()
            continue
        missing = {r for r in wanted if r not in server.rrsets.get(r.name, frozenset())}
        visible -= missing
        if missing:
            # The serial says why: a secondary behind the primary has not transferred the update yet.
            behind = newest is not None and server.serial is not None and server.serial < newest
            first = sorted(missing)[0]
            why = [f"serial {server.serial}, {newest} on another server"] if behind else []
            why.append(f"{len(missing)} TLSA record(s) missing, e.g. {first.name} {first.rdata[:40]}...")
            lagging.append(f"{server.server}: {'; '.join(why)}")
    for answer in resolver or ():
        here = {r for r in wanted if r.name == answer.name}
        if answer.error:
            lagging.append(f"resolver {answer.resolver}: {answer.error}")
            visible -= here
        elif not answer.authenticated:
            lagging.append(f"resolver {answer.resolver}: {answer.name} answered {answer.rcode} without the AD "
                           f"bit (not DNSSEC-validated: has the primary signed the records?)")
            visible -= here
        elif not here <= answer.records:
            lagging.append(f"resolver {answer.resolver}: {answer.name} validated, but without "
                           f"{len(here - answer.records)} new record(s) yet (its cache holds the old RRset)")
            visible -= here
    return Visibility(frozenset(visible), tuple(lagging))


# -- the shell: asking each authoritative address and the resolver --------------------------------------------


def _query_timeout(deadline: Deadline | None, server: str) -> float:
    """One query's timeout: :data:`dnsclient.QUERY_TIMEOUT`, or what is left of ``deadline`` when that is less (a server
    that does not answer costs the whole sweep no more than its time); DnsError once none is left."""
    if deadline is None:
        return dnsclient.QUERY_TIMEOUT
    left = deadline.remaining(lambda: DnsError(server, "not asked: the time to wait had passed"))
    return min(dnsclient.QUERY_TIMEOUT, left)


def authoritative_answers(primary: str, port: int, zone: str, names: Iterable[str], *,
                          deadline: Deadline | None = None) -> list[ServerAnswer]:
    """Each name server of ``zone`` (its NS set, asked of the primary), at every IPv4 and IPv6 address, asked
    directly for its SOA serial and the TLSA RRset of each of ``names``.  No NS set: the primary alone.  With
    ``deadline``, every query waits only for what is left of it.

    Every address is asked on ``port``, the primary's (see :class:`certkeeper.issuers.challenges.Rfc2136Dns01`:
    a test bed or a hidden primary on a high port answers for every name there)."""
    wanted = sorted(set(names))
    where = f"{primary}:{port}"
    try:
        hosts = sorted(set(dnsclient.query(primary, port, zone, "NS", timeout=_query_timeout(deadline, where)).values))
    except DnsError as exc:
        return [ServerAnswer(_label("primary", primary, port), None, error=str(exc))]
    servers: list[tuple[str, str]] = []
    for host in hosts:
        for rdtype in ("A", "AAAA"):
            try:
                found = dnsclient.query(primary, port, host, rdtype, timeout=_query_timeout(deadline, where))
                servers += [(host, address) for address in found.values]
            except DnsError:
                continue
    if not servers:
        servers = [("primary", primary)]
    return [_ask_server(host, address, port, zone, wanted, deadline) for host, address in dict.fromkeys(servers)]


def _ask_server(host: str, address: str, port: int, zone: str, names: Sequence[str],
                deadline: Deadline | None) -> ServerAnswer:
    label = _label(host, address, port)
    try:
        soa = dnsclient.query(address, port, zone, "SOA", timeout=_query_timeout(deadline, label))
        if soa.rcode != "NOERROR" or not soa.values:
            return ServerAnswer(label, None, error=f"no authoritative answer for {zone} ({soa.rcode})")
        serial = int(soa.values[0].split()[2])  # MNAME RNAME SERIAL ... (RFC 1035 section 3.3.13)
        rrsets = {name: frozenset(TlsaRecord.from_text(name, value)
                                  for value in dnsclient.query(address, port, name, "TLSA",
                                                               timeout=_query_timeout(deadline, label)).values)
                  for name in names}
    except (DnsError, ValueError, IndexError) as exc:
        return ServerAnswer(label, None, error=str(exc))
    return ServerAnswer(label, serial, rrsets)


def _label(host: str, address: str, port: int) -> str:
    return f"{host} [{address}]:{port}" if ":" in address else f"{host} {address}:{port}"


def resolver_answers(resolver: str, names: Iterable[str], *, timeout: float,
                     deadline: Deadline | None = None) -> list[ResolverAnswer]:
    """The validating resolver's answer for each TLSA name, RD and AD set: its AD bit says whether it validated
    the answer (RFC 6840 section 5.7), which RFC 7672 section 2.2 requires before a sender uses the records.
    ``timeout`` per query, and no more than what is left of ``deadline``."""
    host, port = dnsclient.parse_server(resolver)
    answers = []
    for name in sorted(set(names)):
        try:
            left = timeout if deadline is None else min(timeout, _query_timeout(deadline, resolver))
            answer = dnsclient.query(host, port, name, "TLSA", recursive=True, timeout=left)
        except DnsError as exc:
            answers.append(ResolverAnswer(name, frozenset(), False, "", resolver, str(exc)))
            continue
        answers.append(ResolverAnswer(name, frozenset(TlsaRecord.from_text(name, v) for v in answer.values),
                                      answer.authenticated, answer.rcode, answer.server))
    return answers
