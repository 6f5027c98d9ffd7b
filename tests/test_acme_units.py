"""The ACME issuer's pure decisions and its challenge responders, on loopback, without a CA."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.opcode
import dns.rdatatype
import dns.rrset
import dns.tsigkeyring
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certkeeper.dnsclient import parse_server, parse_tsig_key
from certkeeper.errors import ChallengeFailed, InputError
from certkeeper.issuers.acme_rules import (
    PollPolicy,
    RetryPolicy,
    ari_certificate_id,
    describe_validation_failure,
    may_order_without_replaces,
    next_poll_delay,
    parse_retry_after,
    retry_delay,
    server_error_may_spare_replaces,
)
from certkeeper.issuers.challenges import (
    ChallengeAnswer,
    HookDns01,
    Http01Listeners,
    Rfc2136Dns01,
    StandaloneHttp01,
    WebrootHttp01,
)
from certkeeper.testbed.server import allocate_port

NOW = datetime(2026, 1, 1, tzinfo=UTC)




def fetch(port: int, token: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
        return status, b""


def test_retry_after_takes_seconds_and_http_dates() -> None:
    assert parse_retry_after("7", NOW) == 7
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", NOW) == 30
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_backoff_grows_with_jitter_and_stops_at_the_attempt_and_time_bounds() -> None:
    policy = RetryPolicy(attempts=5, base=0.2, cap=1.0, budget=10.0)
    assert retry_delay(policy, 1, 0.0, None, jitter=0.0) == pytest.approx(0.1)
    assert retry_delay(policy, 1, 0.0, None, jitter=0.999) == pytest.approx(0.2, abs=1e-3)
    assert retry_delay(policy, 4, 0.0, None, jitter=0.999) == pytest.approx(1.0, abs=1e-2)  # capped
    assert retry_delay(policy, 5, 0.0, None, jitter=0.5) is None
    assert retry_delay(policy, 1, 9.95, None, jitter=0.5) is None


def test_fewer_server_error_attempts_bound_only_server_errors() -> None:
    """A newOrder naming ``replaces`` asks again once after a 5xx (then orders without it); a rate limit or no
    answer keeps the whole policy."""
    policy = RetryPolicy(attempts=5, budget=10.0, server_error_attempts=2)
    assert retry_delay(policy, 1, 0.0, None, jitter=0.0, status=500) is not None
    assert retry_delay(policy, 2, 0.0, None, jitter=0.0, status=503) is None
    assert retry_delay(policy, 2, 0.0, None, jitter=0.0, status=429) is not None
    assert retry_delay(policy, 2, 0.0, None, jitter=0.0, status=None) is not None
    assert retry_delay(RetryPolicy(attempts=5), 2, 0.0, None, jitter=0.0, status=500) is not None


def test_retry_after_from_the_server_wins_unless_it_exceeds_the_budget() -> None:
    policy = RetryPolicy(attempts=5, budget=10.0)
    assert retry_delay(policy, 1, 0.0, 3.0, jitter=0.0) == 3.0
    assert retry_delay(policy, 1, 0.0, 3600.0, jitter=0.0) is None


def test_polling_starts_at_milliseconds_and_grows_geometrically_to_its_cap() -> None:
    policy = PollPolicy()
    delays = [next_poll_delay(policy, waited, None, remaining=60.0) for waited in range(8)]
    assert delays[0] == pytest.approx(0.005)
    assert delays[1] == pytest.approx(0.015)
    assert delays[-1] == 3.0
    assert all(b is not None and a is not None and b >= a for a, b in itertools.pairwise(delays))


def test_polling_never_looks_more_than_five_times_in_a_second_or_once_a_second_later() -> None:
    policy = PollPolicy()
    looks, clock = [], 0.0
    for waited in range(40):
        delay = next_poll_delay(policy, waited, None, remaining=3600.0)
        assert delay is not None
        clock += delay
        looks.append(clock)
    assert max(sum(1 for t in looks if start <= t < start + 1.0) for start in looks) <= 5
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(looks[6:]))


def test_retry_after_is_always_honoured_but_never_below_the_first_wait() -> None:
    policy = PollPolicy()
    assert next_poll_delay(policy, 0, 1.0, remaining=60.0) == 1.0  # even on the first look
    assert next_poll_delay(policy, 7, 0.5, remaining=60.0) == 0.5  # even when the adaptive wait is longer
    assert next_poll_delay(policy, 0, 0.0, remaining=60.0) == pytest.approx(0.005)  # no busy loop


def test_polling_stops_when_the_wait_would_pass_the_order_deadline() -> None:
    policy = PollPolicy()
    assert next_poll_delay(policy, 0, 30.0, remaining=10.0) is None
    assert next_poll_delay(policy, 20, None, remaining=2.0) is None
    assert next_poll_delay(policy, 0, None, remaining=0.004) is None


def test_an_order_refused_for_its_replaces_field_is_placed_again_without_it() -> None:
    prefix = "urn:ietf:params:acme:error:"
    assert may_order_without_replaces(prefix + "alreadyReplaced", "certificate already replaced")
    assert may_order_without_replaces(
        prefix + "unauthorized", "requester account did not request the certificate being replaced by this order")
    assert not may_order_without_replaces(prefix + "unauthorized", "account is deactivated")
    assert not may_order_without_replaces(prefix + "rateLimited", "too many certificates (replacements included)")


def test_a_server_error_for_an_order_naming_replaces_allows_it_once_without() -> None:
    assert server_error_may_spare_replaces(500) and server_error_may_spare_replaces(503)
    assert not server_error_may_spare_replaces(429)  # a rate limit: an order without replaces is not exempt
    assert not server_error_may_spare_replaces(None)  # no answer at all: nothing says it was the field
    assert not server_error_may_spare_replaces(404)


def test_ari_certificate_id_is_aki_and_serial_der_base64url() -> None:
    # RFC 9773 section 4.1 example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 00:87:65:43:21 -> "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(0x87654321).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert ari_certificate_id(certificate) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_validation_failure_reads_as_advice_for_a_mail_admin() -> None:
    text = describe_validation_failure("urn:ietf:params:acme:error:connection", "Connection refused",
                                       "http-01", "mail.example.org", 80)
    assert "could not connect" in text and "Connection refused" in text and "mail.example.org:80" in text


def test_dns_value_and_name_follow_rfc8555_section_8_4() -> None:
    answer = ChallengeAnswer("*.example.org", "tok", "tok.thumb")
    expected = base64.urlsafe_b64encode(hashlib.sha256(b"tok.thumb").digest()).rstrip(b"=").decode()
    assert answer.dns_value == expected
    assert answer.dns_name == "_acme-challenge.example.org."


def test_tsig_key_file_in_bind_format_parses_and_errors_name_the_file() -> None:
    text = ('# made by tsig-keygen\nkey "certkeeper." {'
            '\n\talgorithm hmac-sha256;\n\tsecret "Pz8//z8/";  // a comment\n};\n')
    key = parse_tsig_key(text, "/etc/certkeeper/tsig.key")
    assert (key.name, key.algorithm, key.secret) == ("certkeeper.", "hmac-sha256", base64.b64decode("Pz8//z8/"))
    with pytest.raises(InputError, match=r"/k: no key clause"):
        parse_tsig_key("nothing here", "/k")
    with pytest.raises(InputError, match="not base64"):
        parse_tsig_key('key k { algorithm hmac-sha256; secret "@@@"; };', "/k")


def test_dns_server_spellings() -> None:
    assert parse_server("ns1.example.org") == ("ns1.example.org", 53)
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    assert parse_server("::1") == ("::1", 53)


def test_one_standalone_listener_serves_concurrent_orders_and_stops_after_the_last() -> None:
    listeners = Http01Listeners()
    port = allocate_port()
    first = StandaloneHttp01("127.0.0.1", port, listeners)
    second = StandaloneHttp01("127.0.0.1", port, listeners)
    with first.published([ChallengeAnswer("a.example", "tokA", "tokA.x")]):
        with second.published([ChallengeAnswer("b.example", "tokB", "tokB.x")]):
            assert listeners.active() == [("127.0.0.1", port)]
            assert fetch(port, "tokA") == (200, b"tokA.x")
            assert fetch(port, "tokB") == (200, b"tokB.x")
        assert fetch(port, "tokB")[0] == 404
        assert fetch(port, "tokA") == (200, b"tokA.x")
    assert listeners.active() == []
    with pytest.raises(urllib.error.URLError):
        fetch(port, "tokA")


def test_standalone_listener_survives_many_threads() -> None:
    listeners = Http01Listeners()
    port = allocate_port()
    failures: list[str] = []

    def order(i: int) -> None:
        with StandaloneHttp01("127.0.0.1", port, listeners).published([ChallengeAnswer("x", f"t{i}", f"t{i}.k")]):
            if fetch(port, f"t{i}") != (200, f"t{i}.k".encode()):
                failures.append(str(i))

    threads = [threading.Thread(target=order, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and listeners.active() == []


def test_the_standalone_listener_queues_a_burst_of_validators() -> None:
    """A CA validates each challenge from several vantage points at once (Pebble 2.10: three), so four orders in
    flight open a dozen connections together.  socketserver's default backlog of 5 dropped the SYNs beyond it,
    and each dropped SYN stalled a validation by the kernel's one-second retransmission (issue 23).  The queue
    length is the kernel's own figure for the listening socket (ss's Send-Q)."""
    port = allocate_port()
    with StandaloneHttp01("127.0.0.1", port, Http01Listeners()).published([ChallengeAnswer("x", "t", "k")]):
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
    backlog = int(listing.stdout.split()[2])  # State Recv-Q Send-Q ...: Send-Q is the backlog when listening
    assert backlog >= 64


def test_a_taken_port_is_reported_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ChallengeFailed, match=rf"cannot listen on 127.0.0.1:{port}"):
            with StandaloneHttp01("127.0.0.1", port, Http01Listeners()).published([ChallengeAnswer("x", "t", "k")]):
                pass


def test_webroot_files_are_written_and_removed_also_on_failure(tmp_path: Path) -> None:
    answer = ChallengeAnswer("mail.example", "tok", "tok.thumb")
    path = tmp_path / ".well-known" / "acme-challenge" / "tok"
    with pytest.raises(RuntimeError):
        with WebrootHttp01(tmp_path).published([answer]):
            assert path.read_text() == "tok.thumb"
            assert path.stat().st_mode & 0o777 == 0o644
            msg = "the CA said no"
            raise RuntimeError(msg)
    assert not path.exists()


def test_dns_hook_runs_without_shell_in_a_clean_environment_and_cleans_up(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/leak")
    log = tmp_path / "calls"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$1 $2 $3 ${{REQUESTS_CA_BUNDLE:-clean}}" >> {log}\n')
    hook.chmod(0o755)
    answer = ChallengeAnswer("*.example.org", "tok", "tok.thumb")
    with HookDns01(hook, timeout=5).published([answer]):
        pass
    lines = log.read_text().splitlines()
    assert lines == [f"present _acme-challenge.example.org. {answer.dns_value} clean",
                     f"cleanup _acme-challenge.example.org. {answer.dns_value} clean"]


def test_dns_hook_failure_and_timeout_are_reported(tmp_path: Path) -> None:
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'no API token' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(ChallengeFailed, match="exited with status 3: no API token"):
        with HookDns01(failing, timeout=5).published([ChallengeAnswer("a.example", "t", "k")]):
            pass
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 10\n")
    slow.chmod(0o755)
    with pytest.raises(ChallengeFailed, match=r"did not finish within 0.3 s"):
        with HookDns01(slow, timeout=0.3).published([ChallengeAnswer("a.example", "t", "k")]):
            pass


class BlackholedSecondaries:
    """A primary on 127.0.0.1 that takes TSIG-signed updates and names ``count`` secondaries (127.0.0.10 up) as
    the zone's NS hosts, each bound on the same port and never answering.  A Python server: BIND cannot be made
    to name secondaries that stay silent."""

    def __init__(self, count: int) -> None:
        self.keyring = dns.tsigkeyring.from_text({"certkeeper.": ("hmac-sha256", "c2VjcmV0c2VjcmV0")})
        self.port = allocate_port(udp_too=True)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.create_server(("127.0.0.1", self.port))
        self.silent = []
        for index in range(count):
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            silent.bind((f"127.0.0.{10 + index}", self.port))
            self.silent.append(silent)
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire, keyring=self.keyring)
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.UPDATE:
            name, rdtype = query.question[0].name, query.question[0].rdtype
            if rdtype == dns.rdatatype.NS:
                response.answer.append(dns.rrset.from_text_list(
                    name, 60, "IN", "NS", [f"ns{index}.example.test." for index in range(len(self.silent))]))
            elif rdtype == dns.rdatatype.A:
                index = int(name.labels[0][2:])
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", f"127.0.0.{10 + index}"))
        return response.to_wire()

    def _serve_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                wire, peer = self.udp.recvfrom(65535)
                self.udp.sendto(self._answer(wire), peer)

    def _serve_tcp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.tcp.accept()
                with connection, connection.makefile("rb") as stream:
                    (length,) = struct.unpack("!H", stream.read(2))
                    reply = self._answer(stream.read(length))
                    connection.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        for sock in (self.udp, self.tcp, *self.silent):
            sock.close()


def test_the_propagation_wait_ends_at_dns_timeout_however_many_secondaries_are_silent() -> None:
    """Five silent secondaries at 3 s a query held a dns_timeout of 2 s for 15 s (20 held 10 s for 60 s) and
    the message said "after 2 s"; the deadline is looked at before each query, and the message says the truth."""
    primary = BlackholedSecondaries(5)
    key = parse_tsig_key('key "certkeeper." { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0"; };', "k")
    responder = Rfc2136Dns01(f"127.0.0.1:{primary.port}", key, zone="example.test.", timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(ChallengeFailed, match=r"after 2\.\d s \(dns_timeout 2 s\) the TXT records for "
                                                  r"_acme-challenge\.mail\.example\.test\. are still missing on "
                                                  r"127\.0\.0\.10, 127\.0\.0\.11, 127\.0\.0\.12, 127\.0\.0\.13, "
                                                  r"127\.0\.0\.14 \(authoritative for example\.test\.\)"), \
                responder.published([ChallengeAnswer("mail.example.test", "tok", "tok.thumb")]):
            pass
        assert time.monotonic() - started < 6.0
    finally:
        primary.close()
