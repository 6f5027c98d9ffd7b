"""The test bed's servers answer, over loopback, with real TLS, before anything relies on them."""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.dovecot import PASSWORD, USER, Dovecot
from certkeeper.testbed.pebble import TODAYS_PROFILES, Pebble
from certkeeper.testbed.postfix import HOSTNAME, Postfix
from certkeeper.testbed.server import ServerStartError
from certkeeper.testbed.smtp_sink import SmtpSink
from tests.conftest import SINK_PASSWORD, SINK_USERNAME

pytestmark = pytest.mark.testbed


def client_context(ca_file: Path) -> ssl.SSLContext:
    """Verify the peer against the test CA only, as certkeeper's probe will."""
    return ssl.create_default_context(cafile=str(ca_file))


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition``: reloads take effect as the daemons replace their worker processes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def served_names(sock: ssl.SSLSocket) -> list[str]:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return names.value.get_values_for_type(x509.DNSName)


# --- Pebble ------------------------------------------------------------------------------


def test_pebble_directory_offers_renewal_info_over_verified_https(pebble: Pebble) -> None:
    with urllib.request.urlopen(pebble.directory_url, context=client_context(pebble.ca_file)) as response:
        directory = json.load(response)

    assert {"newAccount", "newNonce", "newOrder", "revokeCert", "renewalInfo"} <= directory.keys()
    assert directory["renewalInfo"].startswith(f"https://127.0.0.1:{pebble.port}/")


def test_pebble_https_is_not_trusted_by_the_system_bundle(pebble: Pebble) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(pebble.directory_url, context=ssl.create_default_context())


def test_acme_client_env_overrides_the_machine_bundle(acme_client_env: dict[str, str], pebble: Pebble) -> None:
    assert acme_client_env["REQUESTS_CA_BUNDLE"] == str(pebble.ca_file)


def test_pebble_makes_a_new_issuer_chain_on_restart(pebble_factory: Callable[..., Pebble]) -> None:
    pebble = pebble_factory(nonce_reject_percent=0, validity_seconds=3600)
    before = x509.load_pem_x509_certificates(pebble.fetch_issuer_chain())
    url = pebble.directory_url

    pebble.restart()

    after = x509.load_pem_x509_certificates(pebble.fetch_issuer_chain())
    assert len(before) == len(after) == 2  # intermediate, root
    assert before[1].fingerprint(hashes.SHA256()) != after[1].fingerprint(hashes.SHA256())
    assert pebble.directory_url == url


def test_pebble_with_eab_requires_external_account(pebble_factory: Callable[..., Pebble]) -> None:
    pebble = pebble_factory(eab_keys={"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"})

    assert pebble.fetch_directory()["meta"] == {
        "externalAccountRequired": True,
        "termsOfService": "data:text/plain,Do%20what%20thou%20wilt",
        "profiles": {"default": "the one profile"},
        "caaIdentities": ["pebble.letsencrypt.org"],
    }


def test_pebble_offers_todays_profiles_when_asked(pebble_factory: Callable[..., Pebble]) -> None:
    pebble = pebble_factory(profiles=TODAYS_PROFILES)

    assert pebble.fetch_directory()["meta"]["profiles"] == {  # type: ignore[index]
        name: profile.description for name, profile in TODAYS_PROFILES.items()}


def test_pebble_refuses_a_request_without_user_agent(pebble: Pebble) -> None:
    request = urllib.request.Request(pebble.directory_url, headers={"User-Agent": ""})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=client_context(pebble.ca_file))

    assert "User-Agent" in json.loads(refused.value.read())["detail"]


# --- BIND --------------------------------------------------------------------------------


def test_bind_resolves_test_names_to_loopback(bind: Bind) -> None:
    reply = dns.query.udp(dns.message.make_query(f"mail.{bind.zone}", "A"), bind.address, port=bind.port, timeout=2)

    assert [rdata.address for rrset in reply.answer for rdata in rrset] == ["127.0.0.1"]


def test_bind_applies_a_tsig_signed_update(bind: Bind) -> None:
    keyring = dns.tsigkeyring.from_text({bind.tsig_key_name: (bind.tsig_algorithm, bind.tsig_secret)})
    update = dns.update.UpdateMessage(
        bind.zone, keyring=keyring, keyname=dns.name.from_text(bind.tsig_key_name), keyalgorithm=bind.tsig_algorithm
    )
    update.replace("_acme-challenge.signed", 60, "TXT", '"token-123"')

    answer = dns.query.tcp(update, bind.address, port=bind.port, timeout=5)
    reply = dns.query.tcp(
        dns.message.make_query(f"_acme-challenge.signed.{bind.zone}", "TXT"), bind.address, port=bind.port, timeout=5
    )

    assert answer.rcode() == dns.rcode.NOERROR
    assert [rdata.strings for rrset in reply.answer for rdata in rrset] == [(b"token-123",)]


def test_bind_refuses_an_unsigned_update(bind: Bind) -> None:
    update = dns.update.UpdateMessage(bind.zone)
    update.replace("_acme-challenge.unsigned", 60, "TXT", '"forged"')

    answer = dns.query.tcp(update, bind.address, port=bind.port, timeout=5)

    assert answer.rcode() == dns.rcode.REFUSED


def test_bind_key_file_is_in_bind_format(bind: Bind) -> None:
    assert bind.tsig_key_file.read_text() == (
        f'key "{bind.tsig_key_name}" {{\n    algorithm hmac-sha256;\n    secret "{bind.tsig_secret}";\n}};\n'
    )


# --- Postfix -----------------------------------------------------------------------------


def test_postfix_smtp_offers_starttls(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.ports["smtp"], timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")


def test_postfix_submission_starttls_verifies_against_test_ca(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.ports["submission"], timeout=5) as smtp:
        smtp.starttls(context=client_context(postfix.ca_file))
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert HOSTNAME in served_names(smtp.sock)


def test_postfix_submission_refuses_mail_before_starttls(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.ports["submission"], timeout=5) as smtp:
        code, message = smtp.mail("someone@example.test")
    assert code == 530 and b"STARTTLS" in message


def test_postfix_submissions_speaks_implicit_tls(postfix: Postfix) -> None:
    context = client_context(postfix.ca_file)
    with smtplib.SMTP_SSL("127.0.0.1", postfix.ports["submissions"], timeout=5, context=context) as smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert HOSTNAME in served_names(smtp.sock)
        assert smtp.noop()[0] == 250


def test_postfix_serves_a_new_certificate_after_reload(postfix_factory: Callable[..., Postfix], tmp_path: Path) -> None:
    postfix = postfix_factory()
    key_file, fullchain_file = postfix.ca.issue(["renewed.example.test"]).write(tmp_path, "renewed")

    postfix.use_certificate(key_file, fullchain_file)
    postfix.reload()

    def renewed_is_served() -> bool:
        context = client_context(postfix.ca_file)
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", postfix.ports["submissions"], timeout=5, context=context) as smtp:
            assert isinstance(smtp.sock, ssl.SSLSocket)
            return served_names(smtp.sock) == ["renewed.example.test"]

    assert eventually(renewed_is_served)


def test_postfix_reloads_with_a_mismatched_key_then_fails_every_handshake(
    postfix_factory: Callable[..., Postfix], tmp_path: Path
) -> None:
    """The failure certkeeper must prevent: reload succeeds, every client then fails."""
    postfix = postfix_factory()
    leaf = postfix.ca.issue([HOSTNAME])
    other_key, _ = postfix.ca.issue([HOSTNAME]).write(tmp_path, "other")
    _, fullchain_file = leaf.write(tmp_path, "leaf")

    postfix.use_certificate(other_key, fullchain_file)
    postfix.reload()  # no error: Postfix does not check the pair

    def handshake_fails() -> bool:
        try:
            with smtplib.SMTP_SSL(
                "127.0.0.1", postfix.ports["submissions"], timeout=5, context=client_context(postfix.ca_file)
            ):
                return False
        except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError):
            return True

    assert eventually(handshake_fails)
    assert eventually(lambda: "private key mismatch" in postfix.log_path.read_text())


def test_postfix_broken_config_fails_with_its_log(postfix_factory: Callable[..., Postfix]) -> None:
    with pytest.raises(ServerStartError, match=r'(?s)Postfix did not start.*unknown inet_protocols value "ipv5"'):
        postfix_factory(main_cf={"inet_protocols": "ipv5"})


# --- Dovecot -----------------------------------------------------------------------------


def test_dovecot_imaps_handshake_and_login(dovecot: Dovecot) -> None:
    imap = imaplib.IMAP4_SSL("127.0.0.1", dovecot.ports["imaps"], ssl_context=client_context(dovecot.ca_file))
    try:
        assert isinstance(imap.sock, ssl.SSLSocket)
        assert "mail.example.test" in served_names(imap.sock)
        assert imap.login(USER, PASSWORD)[0] == "OK"
    finally:
        imap.logout()


def test_dovecot_imap_starttls(dovecot: Dovecot) -> None:
    imap = imaplib.IMAP4("127.0.0.1", dovecot.ports["imap"])
    try:
        assert imap.starttls(ssl_context=client_context(dovecot.ca_file))[0] == "OK"
        assert isinstance(imap.sock, ssl.SSLSocket)
    finally:
        imap.logout()


def test_dovecot_pop3s_and_pop3_stls(dovecot: Dovecot) -> None:
    context = client_context(dovecot.ca_file)
    pop3s = poplib.POP3_SSL("127.0.0.1", dovecot.ports["pop3s"], context=context)
    pop3s.quit()
    pop3 = poplib.POP3("127.0.0.1", dovecot.ports["pop3"])
    assert pop3.stls(context=context).startswith(b"+OK")
    pop3.quit()


def test_dovecot_managesieve_offers_starttls(dovecot: Dovecot) -> None:
    with socket.create_connection(("127.0.0.1", dovecot.ports["sieve"]), timeout=5) as sieve:
        greeting = sieve.makefile("rb")
        lines = [greeting.readline()]  # capabilities, one per line, then OK
        while not lines[-1].startswith(b"OK"):
            lines.append(greeting.readline())
    assert b'"STARTTLS"\r\n' in lines


def test_dovecot_reloads_with_a_mismatched_key_then_fails_every_handshake(
    dovecot_factory: Callable[..., Dovecot], tmp_path: Path
) -> None:
    dovecot = dovecot_factory()
    _, fullchain_file = dovecot.ca.issue([HOSTNAME]).write(tmp_path, "leaf")
    other_key, _ = dovecot.ca.issue([HOSTNAME]).write(tmp_path, "other")

    dovecot.use_certificate(fullchain_file, other_key)
    dovecot.reload()  # no error: Dovecot does not check the pair

    def handshake_fails() -> bool:
        try:
            imaplib.IMAP4_SSL("127.0.0.1", dovecot.ports["imaps"], ssl_context=client_context(dovecot.ca_file)).logout()
        except (ssl.SSLError, imaplib.IMAP4.abort, ConnectionError):
            return True
        return False

    assert eventually(handshake_fails)


# --- SMTP sink ---------------------------------------------------------------------------


def test_smtp_sink_records_mail_over_starttls_with_auth(smtp_sink_inbox: SmtpSink, testbed_ca_file: Path) -> None:
    sink = smtp_sink_inbox
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
        smtp.starttls(context=client_context(testbed_ca_file))
        smtp.login(SINK_USERNAME, SINK_PASSWORD)
        smtp.sendmail("certkeeper@example.test", ["postmaster@example.test"], "Subject: expiring\n\nsoon\n")

    (delivery,) = sink.wait_for_deliveries(1)
    assert delivery.message["Subject"] == "expiring"
    assert delivery.recipients == ("postmaster@example.test",)
    assert delivery.tls and delivery.login == SINK_USERNAME


def test_smtp_sink_refuses_mail_without_auth(smtp_sink_inbox: SmtpSink, testbed_ca_file: Path) -> None:
    context = client_context(testbed_ca_file)
    with smtplib.SMTP_SSL("127.0.0.1", smtp_sink_inbox.tls_port, timeout=5, context=context) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused, match="Authentication required"):
            smtp.sendmail("certkeeper@example.test", ["postmaster@example.test"], "Subject: x\n\nx\n")
    assert smtp_sink_inbox.messages == []


def test_smtp_sink_takes_mail_again_after_a_restart_on_the_same_port(tmp_path: Path, testbed_ca: TestCA) -> None:
    key_file, cert_file = testbed_ca.issue(["127.0.0.1"]).write(tmp_path, "sink")
    with SmtpSink(tmp_path, cert_file=cert_file, key_file=key_file) as sink:
        port = sink.port
        sink.stop()
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP("127.0.0.1", port, timeout=5)

        sink.start()
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
            smtp.sendmail("certkeeper@example.test", ["postmaster@example.test"], "Subject: late\n\nx\n")

        assert sink.port == port
        assert [message["Subject"] for message in sink.messages] == ["late"]
        assert not sink.deliveries[0].tls and sink.deliveries[0].login is None


def test_test_ca_makes_expired_and_not_yet_valid_certificates(testbed_ca: TestCA) -> None:
    now = datetime.now(UTC)
    expired = testbed_ca.issue(
        ["old.example.test"], not_before=now - timedelta(days=90), not_after=now - timedelta(days=1)
    )
    future = testbed_ca.issue(["new.example.test"], key_type="rsa-2048", not_before=now + timedelta(days=1))
    intermediate = testbed_ca.intermediate()
    chained = intermediate.issue(["chained.example.test"])

    assert expired.certificate.not_valid_after_utc < now < future.certificate.not_valid_before_utc
    assert isinstance(future.key, rsa.RSAPrivateKey)
    assert chained.intermediates == (intermediate.certificate,)
    assert chained.fullchain_pem.count(b"BEGIN CERTIFICATE") == 2
