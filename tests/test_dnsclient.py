"""certkeeper's DNS client against the test bed's BIND: answers, zones, authoritative servers, and every way of
failing named with the server asked."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from certkeeper import dnsclient
from certkeeper.dnsclient import parse_tsig_key
from certkeeper.errors import DnsError
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.server import allocate_port

pytestmark = pytest.mark.testbed


def test_a_record_published_by_update_is_answered_and_removed(bind: Bind) -> None:
    key = parse_tsig_key(bind.tsig_key_file.read_text(), "bind")
    name = f"_dnsclient-test.{bind.zone}"
    dnsclient.send_update(bind.address, bind.port, bind.zone, key, ttl=60, add=[(name, "TXT", '"one two"')])
    answer = dnsclient.query(bind.address, bind.port, name, "TXT")
    assert answer.values == ("one two",) and answer.rcode == "NOERROR" and not answer.authenticated
    assert dnsclient.find_zone(bind.address, bind.port, name) == bind.zone
    assert dnsclient.authoritative_addresses(bind.address, bind.port, bind.zone)
    dnsclient.send_update(bind.address, bind.port, bind.zone, key, ttl=60, delete=[(name, "TXT", '"one two"')])
    assert dnsclient.query(bind.address, bind.port, name, "TXT").values == ()


def test_an_update_with_a_key_the_server_does_not_know_is_refused_with_a_hint(bind: Bind) -> None:
    stranger = parse_tsig_key('key "stranger." { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0"; };', "k")
    with pytest.raises(DnsError, match=r"refused the signature of the update of zone .*TSIG key was not accepted"):
        dnsclient.send_update(bind.address, bind.port, bind.zone, stranger, ttl=60,
                              add=[(f"x.{bind.zone}", "TXT", '"x"')])


def test_a_name_outside_every_zone_of_the_server_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a UDP port that never answers
        silent.bind(("127.0.0.1", allocate_port(udp_too=True)))
        port = silent.getsockname()[1]
        with pytest.raises(DnsError, match=rf"DNS server 127\.0\.0\.1:{port}: the query example\.test\. SOA failed"):
            dnsclient.find_zone("127.0.0.1", port, "example.test")
        with pytest.raises(DnsError, match=rf"127\.0\.0\.1:{port}: the query mx\.example\.test TXT failed"):
            dnsclient.query("127.0.0.1", port, "mx.example.test", "TXT", timeout=0.5)


def test_a_server_name_that_does_not_resolve_is_named() -> None:
    with pytest.raises(DnsError, match=r"DNS server ns\.invalid: cannot resolve the DNS server name"):
        dnsclient.resolve_address("ns.invalid")


def test_a_server_that_closes_the_tcp_connection_is_named() -> None:
    """UDP answers are truncated (TC), and TCP is closed before an answer: dnspython raises EOFError, which
    escaped as "unexpected error" (exit 70).  A Python server: no real one does this on purpose."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", allocate_port(udp_too=True)))
    port = udp.getsockname()[1]
    tcp = socket.create_server(("127.0.0.1", port))

    def truncate() -> None:
        with contextlib.suppress(OSError):
            while True:
                query, peer = udp.recvfrom(512)
                udp.sendto(query[:2] + bytes([query[2] | 0x82]) + query[3:12], peer)  # QR and TC, header only

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = tcp.accept()
                connection.recv(512)
                connection.close()

    threading.Thread(target=truncate, daemon=True).start()
    threading.Thread(target=hang_up, daemon=True).start()
    closed = "the server closed the TCP connection before its answer was complete"
    key = parse_tsig_key('key "k." { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0"; };', "k")
    try:
        with pytest.raises(DnsError, match=rf"DNS server 127\.0\.0\.1:{port}: the query mx\.example\.test TXT "
                                           rf"failed: {closed}"):
            dnsclient.query("127.0.0.1", port, "mx.example.test", "TXT")
        with pytest.raises(DnsError, match=rf"127\.0\.0\.1:{port}: the query example\.test\. SOA failed: {closed}"):
            dnsclient.find_zone("127.0.0.1", port, "example.test")
        with pytest.raises(DnsError, match=rf"127\.0\.0\.1:{port}: the dynamic update of zone example\.test "
                                           rf"failed: {closed}"):
            dnsclient.send_update("127.0.0.1", port, "example.test", key, ttl=60, add=[("x.example.test", "TXT",
                                                                                        '"x"')])
    finally:
        udp.close()
        tcp.close()
