"""What an endpoint string means, and the reason a person gets when it means nothing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper.targets import PROTOCOLS, WELL_KNOWN_PORTS, Target, is_ip_literal, parse_target


@pytest.mark.parametrize(("text", "host", "port", "protocol"), [
    ("smtps://Mail.Example.org", "mail.example.org", 465, "smtps"),
    ("submission://mail.example.org", "mail.example.org", 25, "smtp"),
    ("submissions://mail.example.org:465/", "mail.example.org", 465, "smtps"),
    ("managesieve://[2001:db8::1]", "2001:db8::1", 4190, "sieve"),
    ("imap://[::1]:1143", "::1", 1143, "imap"),
    ("mail.example.org:587", "mail.example.org", 587, "smtp"),
    ("192.0.2.1:995", "192.0.2.1", 995, "pop3s"),
])
def test_urls_and_host_port_pairs_name_host_port_and_dialect(text: str, host: str, port: int, protocol: str) -> None:
    target = parse_target(text)
    assert (target.host, target.port, target.protocol) == (host, port, protocol)


def test_starttls_names_the_dialect_of_a_bare_port() -> None:
    assert parse_target("mx:2525", "smtp").protocol == "smtp"
    assert parse_target("mx:2465", "none").protocol == "tls"  # implicit TLS on a port with no protocol
    assert parse_target("mx:465", "none").protocol == "smtps"


@pytest.mark.parametrize(("text", "starttls", "reason"), [
    ("  ", "auto", "empty endpoint"),
    ("mx:25", "maybe", "--starttls must be one of"),
    ("gopher://mx", "auto", "unknown scheme 'gopher'"),
    ("tls://mx:2465", "auto", "unknown scheme 'tls'"),
    ("smtps://mx/inbox", "auto", "an endpoint has no path"),
    ("mx.example.org", "auto", "no port in 'mx.example.org'"),
    ("mx:2525", "auto", "port 2525 has no well-known mail protocol"),
    ("mx:70000", "auto", "port 70000 out of range"),
    ("smtp://mx:0", "auto", "port 0 out of range"),
    ("mx:x25", "auto", "port 'x25' is not a number"),
    ("[::1", "auto", "unclosed '['"),
    ("[mx]:25", "auto", "not an IPv6 address in brackets"),
    ("[::1]x", "auto", "unexpected 'x' after ']'"),
    ("2001:db8::1:25", "auto", "IPv6 addresses go in brackets"),
    (":25", "auto", "no host in ':25'"),
])
def test_a_bad_endpoint_is_refused_with_its_reason(text: str, starttls: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        parse_target(text, starttls)


@given(st.sampled_from(sorted(WELL_KNOWN_PORTS)), st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}",
                                                                 fullmatch=True))
def test_a_well_known_port_always_gets_its_protocol_and_round_trips(port: int, host: str) -> None:
    target = parse_target(f"{host}:{port}")
    assert target.protocol == WELL_KNOWN_PORTS[port]
    again = parse_target(f"{target.protocol}://{target.host}:{target.port}")
    assert (again.host, again.port, again.protocol) == (target.host, target.port, target.protocol)
    assert PROTOCOLS[target.protocol].tls in ("implicit", "starttls")


@pytest.mark.parametrize(("name", "literal"), [
    ("192.0.2.25", True), ("::1", True), ("2001:db8::25", True), ("fe80::1%eth0", True), ("::ffff:192.0.2.1", True),
    ("mail.example.org", False), ("mx1", False), ("1.2.3", False), ("192.0.2.256", False), ("2525", False),
    ("[2001:db8::25]", False), ("192.0.2.25.", False), ("", False), ("1e100.net", False), ("xn--bcher-kva.de", False),
])
def test_an_address_literal_is_told_from_a_host_name(name: str, literal: bool) -> None:
    assert is_ip_literal(name) is literal
    assert Target(name, name, 25, "smtp").is_ip_literal is literal


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdef-x", max_size=20)))
def test_the_shortcut_for_host_names_agrees_with_ipaddress(name: str) -> None:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        expected = False
    else:
        expected = True
    assert is_ip_literal(name) is expected
