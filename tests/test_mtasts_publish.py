"""Publishing MTA-STS: the policy in a webroot behind real nginx or from certkeeper's own HTTPS server, the TXT
records in real BIND through RFC 2136, a new id whenever the text changes, widen before narrowing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from certkeeper.config import MtaStsConfig
from certkeeper.mtasts.fetch import fetch_policy
from certkeeper.mtasts.policy import Policy, parse_policy, policy_id, render_policy
from certkeeper.mtasts.publish import DnsTarget, Publisher, load_state
from certkeeper.mtasts.serve import Site, start_policy_server
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.nginx import Nginx
from certkeeper.testbed.server import allocate_address

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DOMAIN = "example.test"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("certkeeper MTA-STS publish test CA")


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with Bind(tmp_path_factory.mktemp("bind"), zone=DOMAIN) as server:
        yield server


def txt(bind: Bind, name: str) -> list[str]:
    reply = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), bind.address, port=bind.port, timeout=5)
    return sorted(b"".join(r.strings).decode() for rrset in reply.answer for r in rrset)


def test_webroot_policy_behind_nginx_and_txt_id_change_with_the_text(tmp_path: Path, ca: TestCA,
                                                                     bind: Bind) -> None:
    key, cert = ca.issue([f"mta-sts.{DOMAIN}"]).write(tmp_path / "tls", "web")
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    with Nginx(tmp_path / "nginx", cert_file=cert, key_file=key, server_name=f"mta-sts.{DOMAIN}") as nginx:
        mta = MtaStsConfig(DOMAIN, mode="testing", webroot=nginx.webroot, rua=("mailto:tlsrpt@example.test",))
        target = DnsTarget(bind.nameserver, bind.tsig_key_file, DOMAIN, ttl=60)
        bind.update(add=['_mta-sts TXT "v=STSv1; id=handmade1"'])  # a record published by hand before
        publisher = Publisher(mta, tmp_path / "state", target)
        first = publisher.publish(Policy("testing", 86400, ("mail.example.test",)), T0)
        fetched = fetch_policy(DOMAIN, [nginx.address], ca_file=ca_file, timeout=5)
        assert fetched.finding is None and fetched.body is not None
        assert parse_policy(fetched.body).policy == Policy("testing", 86400, ("mail.example.test",))
        assert txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={first.policy_id}"]  # replaced, not added
        assert first.policy_id == policy_id(fetched.body.decode())
        assert txt(bind, f"_smtp._tls.{DOMAIN}") == ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"]

        again = publisher.publish(Policy("testing", 86400, ("mail.example.test",)), T0 + timedelta(hours=1))
        assert (again.policy_id, again.changed, again.dns_updated) == (first.policy_id, False, False)

        enforced = publisher.publish(Policy("enforce", 86400, ("mail.example.test",)), T0 + timedelta(hours=2))
        assert enforced.changed and enforced.policy_id != first.policy_id
        assert txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={enforced.policy_id}"]
        fetched = fetch_policy(DOMAIN, [nginx.address], ca_file=ca_file, timeout=5)
        assert fetched.body is not None and b"mode: enforce" in fetched.body
        policy_file = nginx.webroot / ".well-known" / "mta-sts.txt"
        assert policy_file.stat().st_mode & 0o777 == 0o644

        bind.update(delete=["_mta-sts TXT"], add=['_mta-sts TXT "v=STSv1; id=edited"'])  # changed by hand
        repaired = publisher.publish(Policy("enforce", 86400, ("mail.example.test",)), T0 + timedelta(hours=3))
        assert (repaired.changed, repaired.dns_updated) == (False, True)
        assert txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={enforced.policy_id}"]


def test_moving_the_mx_widens_first_and_narrows_only_after_max_age(tmp_path: Path, bind: Bind) -> None:
    webroot = tmp_path / "webroot"
    mta = MtaStsConfig(DOMAIN, mode="enforce", webroot=webroot, max_age=86400)
    publisher = Publisher(mta, tmp_path / "state", DnsTarget(bind.nameserver, bind.tsig_key_file, DOMAIN))
    old = Policy("enforce", 86400, ("mail.example.test",))
    new = Policy("enforce", 86400, ("mx2.example.test",))
    publisher.publish(old, T0)
    widened = publisher.publish(new, T0 + timedelta(days=2))
    assert widened.decision.policy.mx == ("mail.example.test", "mx2.example.test") and widened.changed
    assert txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={widened.policy_id}"]
    early = publisher.publish(new, T0 + timedelta(days=2, hours=23))
    assert early.decision.policy == widened.decision.policy and not early.changed
    narrowed = publisher.publish(new, T0 + timedelta(days=3))
    assert narrowed.decision.policy == new and narrowed.changed
    assert (webroot / ".well-known" / "mta-sts.txt").read_bytes() == render_policy(new).encode()
    assert txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={narrowed.policy_id}"]
    state = load_state(tmp_path / "state", DOMAIN)
    assert state.publication is not None and state.publication.mx_since == T0 + timedelta(days=3)


def test_the_daemons_own_server_serves_the_policy_and_a_renewed_certificate_without_restart(
        tmp_path: Path, ca: TestCA) -> None:
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    versions = tmp_path / "certs" / "mta-sts" / "versions"
    for version in ("1", "2"):
        key, chain = ca.issue([f"mta-sts.{DOMAIN}"]).write(versions / version, "pair")
        key.rename(versions / version / "privkey.pem")
        chain.rename(versions / version / "fullchain.pem")
    current = tmp_path / "certs" / "mta-sts" / "current"
    current.symlink_to("versions/1")
    policy = render_policy(Policy("enforce", 86400, ("mail.example.test",)))
    sites = {f"mta-sts.{DOMAIN}": Site(policy, current / "fullchain.pem", current / "privkey.pem")}
    address = allocate_address([443])
    server = start_policy_server(f"{address}:443", lambda: sites)
    try:
        fetched = fetch_policy(DOMAIN, [address], ca_file=ca_file, timeout=5)
        assert fetched.finding is None and fetched.body == policy.encode()
        served_before = _served_fingerprint(address, ca_file)
        (tmp_path / "certs" / "mta-sts" / "next").symlink_to("versions/2")
        (tmp_path / "certs" / "mta-sts" / "next").replace(current)  # the install flip
        assert _served_fingerprint(address, ca_file) != served_before
        other = fetch_policy("other.test", [address], ca_file=ca_file, timeout=5)
        assert other.finding is not None and other.finding.code == "sts-webpki-invalid"
    finally:
        server.stop()


def _served_fingerprint(address: str, ca_file: Path) -> bytes:
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((address, 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=f"mta-sts.{DOMAIN}") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
