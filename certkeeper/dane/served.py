"""What every address of the MX hosts presents, for the retirement of the old key's TLSA records.

The shell around :mod:`certkeeper.dane.retire`: resolve each MX host name (A and AAAA) the way a sender would,
through the validating resolver (``dane.resolver``) when there is one, else by asking the DNS server the records
are published on, else the system resolver; probe each address on each DANE port, with SNI and without; and
tell for each probe point whether what it presented is *clean*: no retiring record matches it and a record kept
does (:func:`presented_clean`, pure).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from certkeeper import dnsclient
from certkeeper.dane.records import Presented, ProbePoint, TlsaRecord, match_presented
from certkeeper.errors import DnsError
from certkeeper.probe import ProbeOptions, ProbeResult, probe_target
from certkeeper.targets import parse_target

IMPLICIT_TLS_PORTS = frozenset({465})


def presented_clean(result: ProbeResult, *, retiring: Iterable[TlsaRecord], kept: Iterable[TlsaRecord],
                    own: Iterable[TlsaRecord] | None = None) -> bool:
    """Pure: every leaf presented (one per key type) matches a kept record and no retiring one.  A probe that
    presented nothing proves nothing.

    ``own``: the kept records of the retiring key's type, when the records retire per key: then no leaf may
    match a retiring record and one leaf must match ``own`` (the new key of that type is served; none when the
    key type was dropped); the other key type's leaves are its own retirement's business."""
    leaves = result.served or ((result.certificate,) if result.certificate else ())
    if not leaves:
        return False
    retiring, kept = list(retiring), list(kept)
    above = [Presented(s.spki_sha256, s.fingerprint_sha256) for s in result.chain[1:]]
    # The probe keeps the chain of the first handshake only; DANE-TA records are judged on that one.
    presented = [(Presented(leaf.spki_sha256, leaf.fingerprint_sha256), above if leaf == result.certificate else [])
                 for leaf in leaves]
    if any(match_presented(retiring, leaf, chain).matched for leaf, chain in presented):
        return False
    if own is not None:
        own = list(own)
        return not own or any(match_presented(own, leaf, chain).matched for leaf, chain in presented)
    return all(match_presented(kept, leaf, chain).matched for leaf, chain in presented)


def resolve_addresses(hosts: Sequence[str], *, resolver: str | None, dns_server: str | None,
                      timeout: float) -> dict[str, list[str]]:
    """Every IPv4 and IPv6 address of each host; a host that does not resolve has none."""
    found: dict[str, list[str]] = {}
    for host in dict.fromkeys(hosts):
        server = resolver or dns_server
        if server is None:
            try:
                infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            found[host] = list(dict.fromkeys(str(info[4][0]) for info in infos))
            continue
        address, port = dnsclient.parse_server(server)
        found[host] = [a for rdtype in ("A", "AAAA")
                       for a in _ask(address, port, host, rdtype, recursive=resolver is not None, timeout=timeout)]
    return found


def _ask(server: str, port: int, host: str, rdtype: str, *, recursive: bool, timeout: float) -> list[str]:
    try:
        return list(dnsclient.query(server, port, host.rstrip(".") + ".", rdtype, recursive=recursive,
                                    timeout=timeout).values)
    except DnsError:
        return []


def probe_points(points: Sequence[ProbePoint], *, now: datetime, timeout: float, ca_file: Path | None,
                 dual: bool) -> dict[ProbePoint, ProbeResult]:
    """One handshake per point (both key types of a dual certificate), all at once."""
    async def all_points() -> list[ProbeResult]:
        return list(await asyncio.gather(*(_probe(point, now, timeout, ca_file, dual) for point in points)))
    return dict(zip(points, asyncio.run(all_points()), strict=True))


async def _probe(point: ProbePoint, now: datetime, timeout: float, ca_file: Path | None, dual: bool) -> ProbeResult:
    scheme = "smtps" if point.port in IMPLICIT_TLS_PORTS else "smtp"
    options = ProbeOptions(timeout=timeout, ca_file=ca_file, sni=point.sni, key_type="all" if dual else None)
    return await probe_target(parse_target(f"{scheme}://{point.host.rstrip('.')}:{point.port}"), options, now=now,
                              address=point.address)


def clean_samples(results: Mapping[ProbePoint, ProbeResult], *, retiring: frozenset[TlsaRecord],
                  kept: frozenset[TlsaRecord], own: frozenset[TlsaRecord] | None = None) -> dict[ProbePoint, bool]:
    """Each point's verdict against the records at its own TLSA name (``_<port>._tcp.<host>``); ``own``: see
    :func:`presented_clean`."""
    verdicts: dict[ProbePoint, bool] = {}
    for point, result in results.items():
        name = f"_{point.port}._tcp.{point.host.rstrip('.').lower()}."
        verdicts[point] = presented_clean(result, retiring=[r for r in retiring if r.name == name],
                                          kept=[r for r in kept if r.name == name],
                                          own=None if own is None else [r for r in own if r.name == name])
    return verdicts
