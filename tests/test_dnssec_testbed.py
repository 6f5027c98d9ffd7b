"""The signed test zone: a signing primary, a secondary by zone transfer that can be held back, a validating
resolver that trusts the zone's key, and an unsigned zone the resolver treats as bogus."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from certkeeper import dnsclient
from certkeeper.testbed.dnssec import SECONDARY, SignedZone
from certkeeper.testbed.server import LOOPBACK, wait_until
from tests.dane_fixtures import signed_zone

__all__ = ["signed_zone"]


def ask(address: str, port: int, name: str, rdtype: str, *, recursive: bool) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    if not recursive:
        query.flags &= ~dns.flags.RD
    query.flags |= dns.flags.AD
    return dns.query.udp(query, address, port=port, timeout=3)


def addresses(address: str, port: int, name: str) -> set[str]:
    reply = ask(address, port, name, "A", recursive=False)
    return {r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset}


def add_a(zone: SignedZone, origin: str, name: str, address: str) -> None:
    key = dnsclient.parse_tsig_key(zone.tsig_key_file.read_text(), "zone")
    dnsclient.send_update(LOOPBACK, zone.port, origin, key, ttl=30, add=[(name, "A", address)])


@pytest.mark.testbed
def test_updates_are_signed_transferred_and_validated_and_a_held_secondary_keeps_its_serial(
        signed_zone: SignedZone) -> None:
    zone = signed_zone
    assert zone.resolver is not None
    first = zone.serials()
    assert set(first) == {f"127.0.0.1:{zone.port}", f"[::1]:{zone.port}"} and len(set(first.values())) == 1

    zone.hold_transfers()
    add_a(zone, zone.zone, f"held.{zone.zone}", "127.0.0.7")
    assert wait_until(lambda: addresses(LOOPBACK, zone.port, f"held.{zone.zone}") == {"127.0.0.7"}, timeout=10,
                      alive=lambda: True)
    primary = ask(LOOPBACK, zone.port, f"held.{zone.zone}", "A", recursive=False)
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in primary.answer)  # signed inline on the primary
    held = zone.serials()
    assert held[f"127.0.0.1:{zone.port}"] != held[f"[::1]:{zone.port}"] == first[f"[::1]:{zone.port}"]
    assert addresses(SECONDARY, zone.port, f"held.{zone.zone}") == {"127.0.0.1"}  # the zone's wildcard, not ours

    zone.release_transfers()
    assert zone.wait_in_step(timeout=10), zone.serials()

    validated = ask(LOOPBACK, zone.resolver.port, f"held.{zone.zone}", "A", recursive=True)
    assert validated.rcode() == dns.rcode.NOERROR and validated.flags & dns.flags.AD


@pytest.mark.testbed
def test_the_unsigned_zone_is_answered_by_its_primary_but_bogus_through_the_resolver(
        signed_zone: SignedZone) -> None:
    zone = signed_zone
    assert zone.resolver is not None
    add_a(zone, zone.unsigned_zone, f"plain.{zone.unsigned_zone}", "127.0.0.8")
    primary = ask(LOOPBACK, zone.port, f"plain.{zone.unsigned_zone}", "A", recursive=False)
    assert primary.rcode() == dns.rcode.NOERROR and primary.answer
    assert not any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in primary.answer)
    through = ask(LOOPBACK, zone.resolver.port, f"plain.{zone.unsigned_zone}", "A", recursive=True)
    assert through.rcode() == dns.rcode.SERVFAIL and not through.flags & dns.flags.AD
