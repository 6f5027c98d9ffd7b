"""DNS as certkeeper speaks it: TSIG-signed RFC 2136 updates, and questions to authoritative servers and resolvers.

The only importer of dnspython.  dns-01 (:mod:`certkeeper.issuers.challenges`) and the TLSA rollover
(:mod:`certkeeper.dane.publish`) both publish through :func:`send_update` and confirm on every authoritative server
through :func:`query`; ``check --dane`` asks a validating resolver through :func:`query` with ``recursive=True``.
Callers see plain strings: owner names, record types and RDATA in master-file syntax.

Every failure to ask or to update raises :class:`~certkeeper.errors.DnsError` naming the server; a TSIG secret
never appears in a message.  Answers too large for UDP are asked again over TCP (RFC 7766).
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.update

from certkeeper.errors import DnsError, InputError
from certkeeper.values import frozen

# (owner name, record type, RDATA in master-file syntax), as RFC 2136 updates add and delete them.
Record = tuple[str, str, str]


@frozen
class TsigKey:
    """A TSIG key (RFC 8945) as ``tsig-keygen`` writes it; the secret is decoded."""

    name: str
    algorithm: str
    secret: bytes

    def _keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, self.algorithm)}


_KEY_CLAUSE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_KEY_ALGORITHM = re.compile(r"algorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;")
_KEY_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;')
_SUPPORTED_TSIG = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


def parse_tsig_key(text: str, where: str) -> TsigKey:
    """The first ``key "name" { algorithm ...; secret "..."; };`` of a BIND key file (``tsig-keygen`` output).

    Raises :class:`InputError` naming the file; the secret never appears in a message.
    """
    # Comments go, quoted strings stay: a base64 secret may well contain "//".
    text = re.sub(r'("[^"]*")|(?:#|//)[^\n]*', lambda m: m.group(1) or "", text)
    match = _KEY_CLAUSE.search(text)
    if not match:
        raise InputError(where, 'no key clause; expected BIND key-file format: key "name" { algorithm '
                                'hmac-sha256; secret "..."; }; (as written by tsig-keygen)')
    name, body = match.group(1), match.group(2)
    algorithm = _KEY_ALGORITHM.search(body)
    secret = _KEY_SECRET.search(body)
    if not algorithm or not secret:
        raise InputError(where, f"key {name!r} lacks an algorithm or a secret statement")
    alg = algorithm.group(1).lower()
    if alg not in _SUPPORTED_TSIG:
        raise InputError(where, f"key {name!r} uses algorithm {alg!r}; supported: {', '.join(_SUPPORTED_TSIG)}")
    try:
        decoded = base64.b64decode(secret.group(1), validate=True)
    except ValueError:
        raise InputError(where, f"the secret of key {name!r} is not base64") from None
    return TsigKey(name=name if name.endswith(".") else name + ".", algorithm=alg, secret=decoded)


def parse_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port); port 53 by default."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


def resolve_address(host: str) -> str:
    """The first address of a DNS server given by name (or the address itself)."""
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])
    except OSError:
        raise DnsError(host, "cannot resolve the DNS server name") from None


def default_resolver() -> str:
    """The first nameserver of ``/etc/resolv.conf``."""
    try:
        nameservers = dns.resolver.Resolver().nameservers
    except dns.exception.DNSException as exc:
        msg = "/etc/resolv.conf"
        raise DnsError(msg, f"no resolver configured ({exc}); pass --resolver") from None
    if not nameservers:
        msg = "/etc/resolv.conf"
        raise DnsError(msg, "no resolver configured; pass --resolver")
    return str(nameservers[0])


# What asking a server can raise: dnspython's own errors (malformed wire data is a FormError), the socket's, and
# EOFError, which dnspython raises when a server closes a TCP connection before its answer is complete.
_FAILURES = (dns.exception.DNSException, OSError, EOFError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the server closed the TCP connection before its answer was complete"
    return str(exc) or type(exc).__name__


@frozen
class Answer:
    """One server's answer for one name and type.

    ``values``: the RDATA of the answer's records of that type in master-file syntax, except TXT, whose values
    are the record's strings joined (what dns-01 and dns-persist-01 compare).  ``authenticated``: the AD bit
    (a validating resolver vouches for the answer, RFC 6840 section 5.7).
    """

    name: str
    rdtype: str
    values: tuple[str, ...]
    authenticated: bool
    rcode: str
    server: str


QUERY_TIMEOUT = 3.0  # seconds one query waits for its answer, unless told otherwise


def query(address: str, port: int, name: str, rdtype: str, *, recursive: bool = False,
          timeout: float = QUERY_TIMEOUT) -> Answer:
    """Ask one server.  Not recursive: the server's own data (RD clear), as asked of authoritative servers.
    Recursive: RD and AD set, as asked of a (validating) resolver."""
    wanted = dns.rdatatype.from_text(rdtype)
    message = dns.message.make_query(dns.name.from_text(name), wanted)
    if recursive:
        message.flags |= dns.flags.AD
    else:
        message.flags &= ~dns.flags.RD
    try:
        reply, _ = dns.query.udp_with_fallback(message, address, port=port, timeout=timeout)
    except dns.exception.Timeout:
        msg = f"{address}:{port}"
        raise DnsError(msg, f"the query {name} {rdtype} failed: no answer within {timeout:g} s") from None
    except _FAILURES as exc:
        msg = f"{address}:{port}"
        raise DnsError(msg, f"the query {name} {rdtype} failed: {_describe(exc)}") from None
    values: list[str] = []
    for rrset in reply.answer:
        if rrset.rdtype != wanted:
            continue
        for rdata in rrset:
            if wanted == dns.rdatatype.TXT:
                values.append(b"".join(rdata.strings).decode(errors="replace"))
            else:
                values.append(rdata.to_text())
    return Answer(dns.name.from_text(name).to_text(), rdtype, tuple(values), bool(reply.flags & dns.flags.AD),
                  dns.rcode.to_text(reply.rcode()), f"{address}:{port}")


def find_zone(address: str, port: int, name: str) -> str:
    """The zone holding ``name``: the owner of the SOA in the answer or authority section (RFC 1034 4.3.2)."""
    candidate = dns.name.from_text(name)
    while True:
        message = dns.message.make_query(candidate, dns.rdatatype.SOA)
        message.flags &= ~dns.flags.RD
        try:
            reply, _ = dns.query.udp_with_fallback(message, address, port=port, timeout=3)
        except _FAILURES as exc:
            msg = f"{address}:{port}"
            raise DnsError(msg, f"the query {candidate} SOA failed: {_describe(exc)}") from None
        for section in (reply.answer, reply.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name.to_text())
        if candidate == dns.name.root:
            msg = f"{address}:{port}"
            raise DnsError(msg, f"the server knows no zone holding {name}; set the zone")
        candidate = candidate.parent()


def authoritative_addresses(address: str, port: int, zone: str) -> list[str]:
    """Every address (A and AAAA) of the zone's NS hosts, as ``address`` answers; ``address`` itself if none."""
    found: list[str] = []
    for host in query(address, port, zone, "NS").values:
        for rdtype in ("A", "AAAA"):
            found += query(address, port, host, rdtype).values
    return list(dict.fromkeys(found)) or [address]


_UPDATE_HINTS = {
    "REFUSED": "check allow-update for the TSIG key in the zone's configuration",
    "NOTAUTH": "the TSIG key was not accepted (name, algorithm or secret) or the server is not the zone's primary",
    "NOTZONE": "the record is not inside the zone; check the zone setting",
}


def send_update(address: str, port: int, zone: str, key: TsigKey, *, ttl: int, add: Sequence[Record] = (),
                delete: Sequence[Record] = (), replace: Sequence[Record] = ()) -> None:
    """One TSIG-signed update of ``zone``: delete these values, add those (any record type, ``ttl``); ``replace``
    makes each value the only record of its name and type (MTA-STS: exactly one ``v=STSv1`` TXT record).

    One message, so the primary applies all of it or none (RFC 2136 section 3.7); DANE's TLSA rollover relies on
    that as much as dns-01 does.
    """
    update = dns.update.UpdateMessage(dns.name.from_text(zone), keyring=key._keyring(),
                                      keyname=dns.name.from_text(key.name), keyalgorithm=key.algorithm)
    for name, rdtype, value in delete:
        update.delete(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), value)
    for name, rdtype, value in add:
        update.add(dns.name.from_text(name), ttl, dns.rdatatype.from_text(rdtype), value)
    for name, rdtype, value in replace:
        update.replace(dns.name.from_text(name), ttl, dns.rdatatype.from_text(rdtype), value)
    try:
        reply = dns.query.tcp(update, address, port=port, timeout=10)
    except dns.tsig.PeerError as exc:  # BADKEY, BADSIG, BADTIME: the server did not accept the signature
        msg = f"{address}:{port}"
        raise DnsError(msg, f"refused the signature of the update of zone {zone} ({exc}): "
                            f"{_UPDATE_HINTS['NOTAUTH']}") from None
    except _FAILURES as exc:
        msg = f"{address}:{port}"
        raise DnsError(msg, f"the dynamic update of zone {zone} failed: {_describe(exc)}") from None
    if reply.rcode() != dns.rcode.NOERROR:
        code = dns.rcode.to_text(reply.rcode())
        msg = f"{address}:{port}"
        raise DnsError(msg, f"answered {code} to the update of zone {zone}: "
                                            f"{_UPDATE_HINTS.get(code, 'see the server log')}")
