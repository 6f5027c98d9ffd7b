"""The ACME issuer against real Pebble 2.10 and BIND from the test bed: every challenge, ARI, EAB, chaos.

Servers come from the suite's ``bind``/``pebble`` fixtures when a conftest provides them, otherwise this module
starts its own from :mod:`certkeeper.testbed`; instances with special settings (EAB, nonce rejection, restarts,
a second DNS view) are always started here.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import secrets
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certkeeper import pki
from certkeeper.config import AcmeIssuerConfig
from certkeeper.errors import CaUnavailable, IssuanceError
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.issuers.acme_rules import PollPolicy, ari_certificate_id
from certkeeper.issuers.base import IssueRequest, RenewalInfoSource, Revoker
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble, finds_by_ari
from certkeeper.values import replace

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

PebbleFactory = Callable[..., Pebble]


@pytest.fixture(scope="module")
def dns_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    try:
        shared = request.getfixturevalue("bind")
    except pytest.FixtureLookupError:
        pass
    else:
        yield shared
        return
    with Bind(tmp_path_factory.mktemp("bind")) as server:
        yield server


@pytest.fixture(scope="module")
def acme_server(request: pytest.FixtureRequest, dns_server: Bind,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    try:
        shared = request.getfixturevalue("pebble")
    except pytest.FixtureLookupError:
        pass
    else:
        yield shared
        return
    with Pebble(tmp_path_factory.mktemp("pebble"), bind=dns_server) as server:
        yield server


@pytest.fixture
def own_pebble(dns_server: Bind, tmp_path: Path) -> Iterator[PebbleFactory]:
    started: list[Pebble] = []

    def start(**options: Any) -> Pebble:
        server = Pebble(tmp_path / f"pebble-{len(started)}", bind=options.pop("bind", dns_server), **options)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def make_issuer(pebble: Pebble, state: Path, **overrides: Any) -> AcmeIssuer:
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              contact=("mailto:hostmaster@example.test",), http_address="127.0.0.1",
                              http_port=pebble.http_port, timeout=timedelta(seconds=60))
    return AcmeIssuer(replace(config, **overrides), state)


def request_for(*domains: str, **options: Any) -> IssueRequest:
    return IssueRequest(certificate="mail", domains=domains, key=pki.generate_key(KeyType.ECDSA_P256),
                        key_type=KeyType.ECDSA_P256, **options)


def assert_valid(issued: Any, request: IssueRequest, pebble: Pebble) -> None:
    roots = pki.load_certificates(pebble.fetch_issuer_chain())[-1:]
    assert pki.key_matches(request.key, issued.certificate)
    assert sorted(pki.subject_alternative_names(issued.certificate)) == sorted(request.domains)
    check = pki.verify_chain(issued.certificate, issued.chain, roots, at=pki.now_utc())
    assert check.valid, check.error


def txt_values(bind: Bind, name: str) -> set[str]:
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), bind.address, port=bind.port, timeout=2)
    return {b"".join(r.strings).decode() for rrset in reply.answer for r in rrset}


def test_http01_standalone_issues_a_certificate_that_verifies(acme_server: Pebble, tmp_path: Path) -> None:
    issuer = make_issuer(acme_server, tmp_path)
    request = request_for("mail.example.test", "smtp.example.test")
    assert_valid(issuer.issue(request), request, acme_server)
    account_key = next((tmp_path / "accounts" / "pebble").glob("*/account.key"))
    assert account_key.stat().st_mode & 0o777 == 0o600


def test_account_key_is_reused_and_kept_apart_per_directory(acme_server: Pebble, tmp_path: Path) -> None:
    make_issuer(acme_server, tmp_path).issue(request_for("a.example.test"))
    first = next((tmp_path / "accounts" / "pebble").glob("*/account.key")).read_bytes()
    make_issuer(acme_server, tmp_path).issue(request_for("b.example.test"))
    assert [p.read_bytes() for p in (tmp_path / "accounts" / "pebble").glob("*/account.key")] == [first]


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """A web server's file handler that keeps the test output clean."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http01_webroot_serves_the_answer_from_files(acme_server: Pebble, tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    webroot.mkdir()
    handler = partial(QuietFileHandler, directory=str(webroot))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", acme_server.http_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        issuer = make_issuer(acme_server, tmp_path / "state", webroot=webroot)
        request = request_for("www.example.test")
        assert_valid(issuer.issue(request), request, acme_server)
    finally:
        server.shutdown()
        server.server_close()
    assert list((webroot / ".well-known" / "acme-challenge").iterdir()) == []


def test_dns01_rfc2136_with_a_wildcard_and_its_base_name(acme_server: Pebble, dns_server: Bind,
                                                          tmp_path: Path) -> None:
    issuer = make_issuer(acme_server, tmp_path, challenge="dns-01", dns_server=dns_server.nameserver,
                         tsig_key_file=dns_server.tsig_key_file)
    request = request_for("example.test", "*.example.test")
    assert_valid(issuer.issue(request), request, acme_server)
    assert txt_values(dns_server, "_acme-challenge.example.test.") == set()


def test_dns01_through_a_hook_program(acme_server: Pebble, dns_server: Bind, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    hook = tmp_path / "dns-hook"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {calls}\n'
        'case "$1" in present) op=add;; cleanup) op=delete;; *) exit 2;; esac\n'
        f"printf 'server {dns_server.address} {dns_server.port}\\nupdate %s %s 60 TXT \"%s\"\\nsend\\n' "
        f'"$op" "$2" "$3" | nsupdate -k {dns_server.tsig_key_file}\n'
    )
    hook.chmod(0o755)
    issuer = make_issuer(acme_server, tmp_path / "state", challenge="dns-01", dns_hook=hook)
    request = request_for("hook.example.test")
    assert_valid(issuer.issue(request), request, acme_server)
    assert calls.read_text().split() == ["present", "_acme-challenge.hook.example.test.",
                                         "cleanup", "_acme-challenge.hook.example.test."]
    assert txt_values(dns_server, "_acme-challenge.hook.example.test.") == set()


def test_external_account_binding(own_pebble: PebbleFactory, tmp_path: Path) -> None:
    hmac_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    pebble = own_pebble(eab_keys={"kid-mail": hmac_key})
    key_file = tmp_path / "eab.key"
    key_file.write_text(hmac_key + "\n")
    with pytest.raises(IssuanceError, match="requires external account binding"):
        make_issuer(pebble, tmp_path / "no-eab").issue(request_for("eab.example.test"))
    issuer = make_issuer(pebble, tmp_path / "state", eab_kid="kid-mail", eab_hmac_key_file=key_file)
    request = request_for("eab.example.test")
    assert_valid(issuer.issue(request), request, pebble)


def test_unknown_profile_is_refused_clearly(acme_server: Pebble, tmp_path: Path) -> None:
    # The suite's Pebble offers its one profile, "default": any other is refused before ordering.
    issuer = make_issuer(acme_server, tmp_path, profile="shortlived")
    with pytest.raises(IssuanceError, match=r"does not offer the profile 'shortlived' \(it offers: default\)"):
        issuer.issue(request_for("mail.example.test"))


def test_ari_window_and_replaces_on_renewal(acme_server: Pebble, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(acme_server, tmp_path)
    assert isinstance(issuer, RenewalInfoSource)
    first = issuer.issue(request_for("ari.example.test")).certificate
    while not finds_by_ari(first.serial_number):  # one in 256: Pebble fails the order instead (the test below)
        first = issuer.issue(request_for("ari.example.test")).certificate
    now = pki.now_utc()
    window = issuer.renewal_window(first, now)
    assert window is not None
    assert pki.not_before(first) < window.start <= window.end < pki.not_after(first)
    assert window.retry_after > now
    renewed = issuer.issue(request_for("ari.example.test", replaces=first))
    assert renewed.certificate.serial_number != first.serial_number
    # Pebble accepts one replacement per certificate: a second order naming it is refused, which proves the first
    # carried it; the issuer then orders again without replaces (renewing matters more than the exemption).
    with caplog.at_level(logging.INFO, logger="certkeeper.issuers.acme"):
        again = issuer.issue(request_for("ari.example.test", replaces=first))
    assert again.certificate.serial_number not in (first.serial_number, renewed.certificate.serial_number)
    assert "the CA refused an order replacing" in caplog.text
    assert "(alreadyReplaced: certificate with serial" in caplog.text
    assert caplog.text.count("the CA refused an order replacing") == 1


def test_an_order_whose_replaces_the_ca_fails_on_is_placed_again_without_it(
        acme_server: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pebble 2.10 answers 500 "could not find an order for the given certificate" when it looks up the serial a
    ``replaces`` names and finds none.  It does so for about one in 256 of its own certificates (it keys them by the
    serial without the zero byte DER puts before a top bit that is set, and RFC 9773's identifier carries it): the
    suite once failed a renewal so.  Here, on demand, a certificate under Pebble's intermediate (its AKI) with such
    a serial that Pebble never issued; the issuer orders again without ``replaces``."""
    issuer = make_issuer(acme_server, tmp_path)
    first = issuer.issue(request_for("ari-500.example.test")).certificate
    key = pki.generate_key(KeyType.ECDSA_P256)
    serial = 0x80 << 48 | secrets.randbits(48)  # 7 bytes, top bit set: DER content octets 00 80 ...
    never_issued = (
        x509.CertificateBuilder().subject_name(first.subject).issuer_name(first.issuer).public_key(key.public_key())
        .serial_number(serial).not_valid_before(pki.not_before(first)).not_valid_after(pki.not_after(first))
        .add_extension(first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value, critical=False)
        .sign(key, hashes.SHA256()))
    assert not finds_by_ari(serial)
    named = ari_certificate_id(never_issued).split(".")[1]
    assert base64.urlsafe_b64decode(named + "=" * (-len(named) % 4)) == b"\x00" + serial.to_bytes(7, "big")
    with caplog.at_level(logging.INFO, logger="certkeeper.issuers.acme"):
        renewed = issuer.issue(request_for("ari-500.example.test", replaces=never_issued))
    assert renewed.certificate.serial_number not in (first.serial_number, serial)
    assert "the CA failed an order replacing" in caplog.text
    assert "could not find an order for the given certificate" in caplog.text
    assert caplog.text.count("ordering without replaces, once") == 1
    # Asked once more, not through the whole backoff (about 6 s): Pebble's answer does not change.
    assert caplog.text.count("order-plz failed (HTTP 500") == 1, caplog.text


def test_account_is_registered_again_after_the_ca_forgot_it(own_pebble: PebbleFactory, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    pebble = own_pebble()
    issuer = make_issuer(pebble, tmp_path)
    issuer.issue(request_for("mail.example.test"))
    pebble.restart()
    with caplog.at_level(logging.WARNING, logger="certkeeper.issuers.acme"):
        request = request_for("mail.example.test")
        assert_valid(issuer.issue(request), request, pebble)
    assert "no longer exists" in caplog.text and "registering a new account" in caplog.text
    # A fresh process (new issuer object) reads the re-registered account from disk and works at once.
    make_issuer(pebble, tmp_path).issue(request_for("mail.example.test"))


def test_revocation(acme_server: Pebble, tmp_path: Path) -> None:
    issuer = make_issuer(acme_server, tmp_path)
    assert isinstance(issuer, Revoker)
    certificate = issuer.issue(request_for("revoke.example.test")).certificate
    issuer.revoke(certificate, "superseded")
    status = json.loads(acme_server.fetch(
        f"{acme_server.management_url}/cert-status-by-serial/{pki.serial_hex(certificate)}"))
    assert status["Status"] == "Revoked"
    with pytest.raises(IssuanceError, match="already been revoked"):
        issuer.revoke(certificate, "keyCompromise")


def test_chaos_half_the_nonces_rejected_every_issuance_succeeds(own_pebble: PebbleFactory, tmp_path: Path) -> None:
    pebble = own_pebble(nonce_reject_percent=50)
    issuer = make_issuer(pebble, tmp_path)
    requests = [request_for(f"chaos{i}.example.test") for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        issued = list(pool.map(issuer.issue, requests))
    for certificate, request in zip(issued, requests, strict=True):
        assert_valid(certificate, request, pebble)


def test_the_retry_after_of_a_ca_is_honoured_when_polling(own_pebble: PebbleFactory, tmp_path: Path) -> None:
    pebble = own_pebble(retry_after=2)  # on a processing order (after finalize) and a pending authorization
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    issuer = make_issuer(pebble, tmp_path)
    issuer = AcmeIssuer(issuer.config, tmp_path, poll=PollPolicy(first=0.005, growth=2.0, cap=0.05), sleep=sleep)
    request = request_for("patient.example.test")
    assert_valid(issuer.issue(request), request, pebble)
    # The policy alone never waits longer than 0.05 s: a longer wait is the CA's (2 s, or an HTTP-date within it).
    assert max(waits) >= 1.0


def test_a_retry_after_beyond_the_order_timeout_fails_the_order_at_once(own_pebble: PebbleFactory,
                                                                         tmp_path: Path) -> None:
    pebble = own_pebble(retry_after=3600)
    issuer = make_issuer(pebble, tmp_path, timeout=timedelta(seconds=10))
    with pytest.raises(IssuanceError, match=r"did not finish .* within 10 s .*asked to look again in \d+"):
        issuer.issue(request_for("slow.example.test"))


def test_polling_starts_within_milliseconds_when_the_ca_names_no_retry_after(acme_server: Pebble,
                                                                            tmp_path: Path) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    issuer = AcmeIssuer(make_issuer(acme_server, tmp_path).config, tmp_path, sleep=sleep)
    request = request_for("eager.example.test")
    assert_valid(issuer.issue(request), request, acme_server)
    assert waits and waits[0] == pytest.approx(PollPolicy().first)


def test_unreachable_directory_is_ca_unavailable_with_the_url(tmp_path: Path) -> None:
    config = AcmeIssuerConfig(name="down", directory="https://127.0.0.1:9/dir", timeout=timedelta(seconds=2))
    with pytest.raises(CaUnavailable, match=r"the CA at https://127.0.0.1:9/dir could not be reached"):
        AcmeIssuer(config, tmp_path).issue(request_for("mail.example.test"))


def test_failed_http01_validation_names_the_identifier_and_the_ca_detail(acme_server: Pebble,
                                                                         tmp_path: Path) -> None:
    # Our listener on another port: Pebble connects to its http port and finds nothing there.
    wrong_port = acme_server.tls_port
    issuer = make_issuer(acme_server, tmp_path, http_port=wrong_port)
    with pytest.raises(IssuanceError, match=r"for fail\.example\.test: http-01 validation failed: .*connect") as info:
        issuer.issue(request_for("fail.example.test"))
    assert info.value.identifier == "fail.example.test"
    assert info.value.problem_type.endswith(":connection")


def test_dns_records_are_removed_after_a_failed_validation(own_pebble: PebbleFactory, dns_server: Bind,
                                                           tmp_path: Path) -> None:
    # Pebble asks a second BIND that never sees our update, so validation fails after we published.
    with Bind(tmp_path / "other-view") as other_view:
        pebble = own_pebble(bind=other_view)
        issuer = make_issuer(pebble, tmp_path / "state", challenge="dns-01", dns_server=dns_server.nameserver,
                             tsig_key_file=dns_server.tsig_key_file)
        with pytest.raises(IssuanceError, match=r"for gone\.example\.test: dns-01 validation failed"):
            issuer.issue(request_for("gone.example.test"))
        pebble.stop()
    assert txt_values(dns_server, "_acme-challenge.gone.example.test.") == set()


def test_an_untrusted_ca_certificate_is_not_retried_and_names_ca_bundle(acme_server: Pebble, tmp_path: Path) -> None:
    issuer = make_issuer(acme_server, tmp_path, ca_bundle=None)
    with pytest.raises(CaUnavailable, match="was not accepted .* check ca_bundle"):
        issuer.issue(request_for("mail.example.test"))


def test_dry_run_without_staging_directory_is_refused(acme_server: Pebble, tmp_path: Path) -> None:
    with pytest.raises(IssuanceError, match="needs staging_directory"):
        make_issuer(acme_server, tmp_path).issue(request_for("mail.example.test", dry_run=True))


def test_dry_run_uses_the_staging_directory_and_its_own_account(acme_server: Pebble, own_pebble: PebbleFactory,
                                                                tmp_path: Path) -> None:
    staging = own_pebble()
    bundle = tmp_path / "both.pem"
    bundle.write_bytes(acme_server.ca_file.read_bytes() + staging.ca_file.read_bytes())
    issuer = make_issuer(acme_server, tmp_path, staging_directory=staging.directory_url, ca_bundle=bundle,
                         http_port=staging.http_port)
    request = request_for("dry.example.test", dry_run=True)
    assert_valid(issuer.issue(request), request, staging)
    assert len(list((tmp_path / "accounts" / "pebble").glob("*/account.key"))) == 1
    with pytest.raises(urllib.error.HTTPError):  # production never saw it
        acme_server.fetch(f"{acme_server.management_url}/cert-status-by-serial/"
                          f"{pki.serial_hex(issuer.issue(request).certificate)}")


def test_cli_revoke_revokes_the_installed_certificate(acme_server: Pebble, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from certkeeper.cli import main
    from certkeeper.store.versions import CertificateHome, KeyPair

    state = tmp_path / "state"
    config = tmp_path / "certkeeper.toml"
    config.write_text(
        f'[certkeeper]\nstate_dir = "{state}"\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{acme_server.directory_url}"\n'
        f'ca_bundle = "{acme_server.ca_file}"\nhttp_address = "127.0.0.1"\nhttp_port = {acme_server.http_port}\n'
        '[certificates.mail]\nissuer = "pebble"\ndomains = ["cli.example.test"]\n')
    request = request_for("cli.example.test")
    issued = make_issuer(acme_server, state).issue(request)
    home = CertificateHome(state, "mail")
    home.activate(home.write_version([KeyPair(KeyType.ECDSA_P256, request.key, issued.certificate, issued.chain)],
                                     issuer="pebble", domains=request.domains, now=pki.now_utc()))
    assert main(["-c", str(config), "revoke", "mail", "--reason", "keyCompromise"]) == 0
    assert "revoked ecdsa-p256 certificate" in capsys.readouterr().out
    status = json.loads(acme_server.fetch(
        f"{acme_server.management_url}/cert-status-by-serial/{pki.serial_hex(issued.certificate)}"))
    assert status["Status"] == "Revoked"
    assert main(["-c", str(config), "revoke", "nosuch"]) == 64
