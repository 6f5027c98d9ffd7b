"""The DANE key rollover against a DNSSEC-signed zone (signing primary, secondary by zone transfer, validating
resolver) and a real Postfix, watched by several DANE senders at once: each new connection is judged against the
TLSA records its sender's validating resolver returned when the connection was opened."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from certkeeper import dnsclient, pki
from certkeeper.app import App, build_app
from certkeeper.config import Config
from certkeeper.events import (
    Event,
    RenewalWaitingForTlsa,
    TlsaPropagationLagging,
    TlsaRecordsPublished,
    TlsaRecordsRetiring,
)
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.dnssec import SignedZone
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.server import IPV6_LOOPBACK, LOOPBACK
from tests.dane_fixtures import signed_zone
from tests.lifecycle_helpers import write_config

__all__ = ["signed_zone"]

TTL = 4
SENDERS = 3
# Alerts are queued in the store and checked there; port 9 (discard) is never delivered to.
QUEUED_ALERTS = '\n[alerts]\nto = ["postmaster@example.test"]\nfrom = "certkeeper@example.test"\n' \
                'smtp_host = "127.0.0.1"\nsmtp_port = 9\nsmtp_security = "none"\n'


class Clock:
    """The renewer's clock: real time plus an offset the test moves forward (the two-TTL wait)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> Any:
        return pki.now_utc() + self.offset


def add_host(zone: SignedZone, origin: str, *, ipv6: bool = False) -> str:
    """A fresh MX host name with its own A record, and AAAA ``::1`` with ``ipv6`` (``_25._tcp.<host>`` would make
    it an empty non-terminal, which the zone's wildcard A no longer covers: RFC 4592 section 2.2.2)."""
    host = f"mx-{secrets.token_hex(4)}.{origin}"
    key = dnsclient.parse_tsig_key(zone.tsig_key_file.read_text(), "zone")
    dnsclient.send_update(LOOPBACK, zone.port, origin, key, ttl=30,
                          add=[(host, "A", LOOPBACK)] + [(host, "AAAA", IPV6_LOOPBACK)] * ipv6)
    return host.rstrip(".")


def primary_tlsa(zone: SignedZone, name: str) -> set[str]:
    """The 3 1 1 association data the primary answers for ``name`` now."""
    query = dns.message.make_query(name, dns.rdatatype.TLSA)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, LOOPBACK, port=zone.port, timeout=2)
    return {r.cert.hex() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.TLSA for r in rrset}


def dane_config(tmp_path: Path, zone: SignedZone, host: str, postfix: Postfix | None, *, port: int,
                extra: str = "", settings: str = "", endpoints: bool = True, general: str = "") -> Config:
    """``settings``: more keys of the certificate's table; ``general``: of ``[certkeeper]``."""
    table = [
        "[certificates.mail]", 'issuer = "internal"', f'domains = ["{host}"]',
        f'dane = {{ tlsa = ["3 1 1"], ports = [{port}], dns_server = "{zone.nameserver}", '
        f'tsig_key_file = "{zone.tsig_key_file}", ttl = {TTL}, resolver = "{zone.resolver_address}"{extra} }}',
    ]
    if postfix is not None:
        table += ['reload = ["postfix"]', f'hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}']
        table += [f'endpoints = ["smtp://127.0.0.1:{port}"]'] * endpoints
    return write_config(tmp_path, "\n".join(table) + "\n" + settings, settings=general)


def app_with(config: Config, clock: Clock) -> tuple[App, list[Event]]:
    app = build_app(config, clock=clock)
    events: list[Event] = []
    app.bus.subscribe(events.append)
    return app, events


def current_spki(home: CertificateHome) -> str:
    version = home.current()
    assert version is not None
    return pki.spki_sha256(home.load_pair_certificate(version.pairs[0]))


def spki_of(home: CertificateHome, key_type: str) -> str:
    version = home.current()
    assert version is not None
    [pair] = [p for p in version.pairs if p.key_type == key_type]
    return pki.spki_sha256(home.load_pair_certificate(pair))


def retiring_reasons(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, TlsaRecordsRetiring)]


def next_spki(home: CertificateHome) -> str:
    return next_of(home, "ecdsa-p256")


def next_of(home: CertificateHome, key_type: str) -> str:
    key = pki.load_key((home.root / "next" / f"{key_type}.key").read_bytes())
    return hashlib.sha256(pki.public_key_der(key)).hexdigest()


@dataclass
class Senders:
    """:data:`SENDERS` processes of ``tests.dane_sender``, each writing its samples to a file of its own."""

    directory: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def stop_file(self) -> Path:
        return self.directory / "stop"

    def samples(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.directory.glob("samples-*.jsonl")):
            for line in path.read_text().splitlines():
                if line.endswith("}"):  # a line being written when read is left for the next read
                    found.append(json.loads(line))
        return found

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.samples()):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.stop_file.touch()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def start_senders(tmp_path: Path) -> Iterator[Callable[[str, str, int], Senders]]:
    started: list[Senders] = []

    def start(resolver: str, name: str, port: int) -> Senders:
        directory = tmp_path / "senders"
        directory.mkdir()
        processes = [subprocess.Popen([sys.executable, "-m", "tests.dane_sender", resolver, name, str(port),
                                       str(directory / f"samples-{i}.jsonl"), str(directory / "stop")],
                                      cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL)
                     for i in range(SENDERS)]
        senders = Senders(directory, processes)
        started.append(senders)
        return senders

    yield start
    for senders in started:
        senders.stop()


def run_passes_until(app: App, done: Callable[[], bool], *, limit: float = 90) -> int:
    """Passes as the daemon runs them, every half second, until ``done``; how many ran."""
    deadline = time.monotonic() + limit
    passes = 0
    while not done() and time.monotonic() < deadline:
        app.run_pass()
        passes += 1
        time.sleep(0.5)
    return passes


@pytest.mark.testbed
@pytest.mark.slow
def test_every_key_served_during_a_rollover_matches_a_record_its_sender_saw_validated_when_connecting(
        tmp_path: Path, signed_zone: SignedZone, postfix_factory: Callable[..., Postfix],
        start_senders: Callable[[str, str, int], Senders]) -> None:
    zone = signed_zone
    host = add_host(zone, zone.zone)
    postfix = postfix_factory()
    # smtpd processes live max_idle after their last session: the dwell is at least that long.
    postfix.postconf(max_idle="5s")
    port = postfix.ports["smtp"]  # stands for port 25: the test bed's Postfix listens on a free port
    name = f"_{port}._tcp.{host}."
    config = dane_config(tmp_path, zone, host, postfix, port=port, extra=', retire_after = "2s", retire_probes = 3')
    home = CertificateHome(config.settings.state_dir, "mail")
    # Postfix reads certkeeper's current pair from the first install on (the reload hook makes it).
    postfix.use_certificate(home.current_link / "privkey.pem", home.current_link / "fullchain.pem")
    clock = Clock()
    app, events = app_with(config, clock)
    [first] = app.run_pass()
    assert first.result == "renewed", first.detail
    first_key, second_key = current_spki(home), next_spki(home)
    assert primary_tlsa(zone, name) == {first_key, second_key}

    senders = start_senders(zone.resolver_address, name, port)
    assert senders.wait_for(lambda s: sum(x["served"] == first_key for x in s) >= SENDERS)

    clock.offset = timedelta(seconds=2 * TTL + 1)  # two TTLs after the records became visible
    renewed_at = clock()
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail
    third_key = next_spki(home)
    assert current_spki(home) == second_key
    assert primary_tlsa(zone, name) == {first_key, second_key, third_key}  # the old key's record stays

    shown = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), "dane", "show", "mail"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"{name} {TTL} IN TLSA 3 1 1 {first_key} ; retiring" in shown.stdout.splitlines()
    assert "has served the new key for 0:00:05" in shown.stdout  # max_idle (5 s) beats retire_after (2 s)
    status = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    [row] = json.loads(status.stdout)
    assert [r["rdata"] for r in row["dane"]["retiring"]] == [f"3 1 1 {first_key}"]

    passes = run_passes_until(app, lambda: first_key not in primary_tlsa(zone, name))
    assert first_key not in primary_tlsa(zone, name), (passes, app.store.get_state("mail"))
    [removal] = [e for e in events if isinstance(e, TlsaRecordsPublished) and e.removed]
    assert removal.removed == (f"3 1 1 {first_key}",)
    assert removal.at - renewed_at >= timedelta(seconds=5)  # the dwell: max_idle (5 s) beats retire_after (2 s)
    assert passes >= 2  # three probes spread over the dwell need more than one pass

    count = len(senders.samples())
    assert senders.wait_for(lambda s: len(s) >= count + 3 * SENDERS)  # senders after the removal too
    senders.stop()
    samples = senders.samples()
    served = {s["served"] for s in samples}
    assert served == {first_key, second_key}, served
    bad = [s for s in samples if s["error"] or not s["ad"] or s["served"] not in s["records"]]
    assert bad == [], bad[:5]
    assert len(samples) > 20


@pytest.mark.testbed
@pytest.mark.slow
def test_a_secondary_that_lags_delays_the_rollover_and_is_named(tmp_path: Path, signed_zone: SignedZone) -> None:
    zone = signed_zone
    host = add_host(zone, zone.zone)
    assert zone.wait_in_step(timeout=10)
    zone.hold_transfers()
    config = dane_config(tmp_path, zone, host, None, port=25, settings=QUEUED_ALERTS)
    clock = Clock()
    app, events = app_with(config, clock)
    app.run_pass()  # installs; the records reach the primary, not the held secondary
    home = CertificateHome(config.settings.state_dir, "mail")
    name = f"_25._tcp.{host}."
    assert primary_tlsa(zone, name) == {current_spki(home), next_spki(home)}

    clock.offset = timedelta(seconds=2 * TTL + 1)
    [waiting] = app.run_pass(force=True)
    assert waiting.result == "waiting", waiting.detail
    lagging = [e for e in events if isinstance(e, TlsaPropagationLagging)]
    # The resolver may lag too (it forwards to both servers and caches what ns2 answers); ns2 always does.
    secondary = f"ns2.{zone.zone} [::1]:{zone.port}"
    assert lagging and secondary in lagging[-1].servers and f"ns1.{zone.zone} 127.0.0.1:{zone.port}" not in \
        lagging[-1].servers
    assert f"{secondary}: serial" in lagging[-1].reason
    assert secondary in waiting.detail
    assert any(secondary in a.subject and secondary in a.body for a in app.store.pending_alerts())
    status = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    [row] = json.loads(status.stdout)
    assert secondary in row["dane"]["lagging"]

    zone.release_transfers()
    assert zone.wait_in_step(timeout=10)
    [confirmed] = app.run_pass(force=True)
    assert confirmed.result == "waiting" and "waiting two TTLs" in confirmed.detail  # the clock starts now
    clock.offset += timedelta(seconds=2 * TTL + 1)
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail


@pytest.mark.testbed
@pytest.mark.slow
def test_an_unsigned_answer_from_the_primary_is_not_counted_as_visible_until_it_signs(tmp_path: Path,
                                                                         signed_zone: SignedZone) -> None:
    zone = signed_zone
    host = add_host(zone, zone.unsigned_zone)
    config = dane_config(tmp_path, zone, host, None, port=25)
    clock = Clock()
    app, events = app_with(config, clock)
    app.run_pass()
    home = CertificateHome(config.settings.state_dir, "mail")
    assert primary_tlsa(zone, f"_25._tcp.{host}.") == {current_spki(home), next_spki(home)}  # on the primary
    clock.offset = timedelta(seconds=2 * TTL + 1)
    [waiting] = app.run_pass(force=True)
    assert waiting.result == "waiting", waiting.detail
    assert "without the AD bit" in waiting.detail
    assert any(isinstance(e, RenewalWaitingForTlsa) for e in events)
    assert current_spki(home) != next_spki(home)
    # The primary signs late: from then on the resolver validates, and the two-TTL wait starts.
    assert zone.sign_unsigned_zone()
    [confirmed] = app.run_pass(force=True)
    assert confirmed.result == "waiting" and "waiting two TTLs" in confirmed.detail, confirmed.detail
    clock.offset += timedelta(seconds=2 * TTL + 1)
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail


@pytest.mark.testbed
@pytest.mark.slow
def test_an_ipv6_address_still_serving_the_old_key_holds_the_retirement_back_and_is_named(
        tmp_path: Path, signed_zone: SignedZone, postfix_factory: Callable[..., Postfix]) -> None:
    zone = signed_zone
    host = add_host(zone, zone.zone, ipv6=True)  # A 127.0.0.1, AAAA ::1: two Postfix instances on one port
    lagging = postfix_factory(address=IPV6_LOOPBACK, listeners=["smtp"])  # not reloaded by certkeeper
    port = lagging.ports["smtp"]
    postfix = postfix_factory(listeners=["smtp"], fixed_ports={"smtp": port})
    postfix.postconf(max_idle="2s")
    config = dane_config(tmp_path, zone, host, postfix, port=port, extra=', retire_after = "2s", retire_probes = 2')
    home = CertificateHome(config.settings.state_dir, "mail")
    postfix.use_certificate(home.current_link / "privkey.pem", home.current_link / "fullchain.pem")
    clock = Clock()
    app, events = app_with(config, clock)
    [first] = app.run_pass()
    assert first.result == "renewed", first.detail
    old_key, version = current_spki(home), home.current()
    assert version is not None
    lagging.use_certificate(version.pairs[0].directory / "privkey.pem", version.pairs[0].directory / "fullchain.pem")
    lagging.reload()  # [::1] serves the first key, and keeps serving it after the rollover

    clock.offset = timedelta(seconds=2 * TTL + 1)
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail
    ipv6 = f"{host} [::1]:{port}"
    # Points are judged in order (127.0.0.1 before ::1): [::1] named first means IPv4 has served its dwell.
    run_passes_until(app, lambda: any(f"retiring: {ipv6}" in r for r in retiring_reasons(events)), limit=30)
    assert old_key in primary_tlsa(zone, f"_{port}._tcp.{host}."), retiring_reasons(events)[-3:]
    assert f"retiring: {ipv6} without SNI: no probe without the old key yet" in retiring_reasons(events)[-1]

    lagging.use_certificate(home.current_link / "privkey.pem", home.current_link / "fullchain.pem")
    lagging.reload()
    run_passes_until(app, lambda: old_key not in primary_tlsa(zone, f"_{port}._tcp.{host}."), limit=30)
    assert old_key not in primary_tlsa(zone, f"_{port}._tcp.{host}."), retiring_reasons(events)[-3:]


@pytest.mark.testbed
@pytest.mark.slow
def test_each_key_of_a_dual_certificate_retires_once_every_address_serves_its_new_key_whatever_the_other_does(
        tmp_path: Path, signed_zone: SignedZone, postfix_factory: Callable[..., Postfix]) -> None:
    zone = signed_zone
    host = add_host(zone, zone.zone, ipv6=True)
    postfix = postfix_factory(listeners=["smtp"], ipv6=True)  # 127.0.0.1 and [::1], both key types
    postfix.postconf(max_idle="2s")
    port = postfix.ports["smtp"]
    name = f"_{port}._tcp.{host}."
    # The endpoint is observed: the lagging RSA key makes each pass a reload of Postfix (a served key not installed
    # is a reload owed), which must not hold back the ECDSA key's retirement.  Such a pass waits out the
    # verification twice (the reload, then once more), hence a shorter verify_timeout than the tests' 15 s.
    config = dane_config(tmp_path, zone, host, postfix, port=port, extra=', retire_after = "3s", retire_probes = 2',
                         settings='key_types = ["ecdsa-p256", "rsa-2048"]\n', general='verify_timeout = "6s"')
    home = CertificateHome(config.settings.state_dir, "mail")

    def serve(ecdsa: Path, rsa: Path) -> None:
        postfix.postconf(smtpd_tls_chain_files=f"{ecdsa}/privkey.pem, {ecdsa}/fullchain.pem, "
                                               f"{rsa}/privkey.pem, {rsa}/fullchain.pem")

    serve(home.current_link / "ecdsa", home.current_link / "rsa")
    clock = Clock()
    app, events = app_with(config, clock)
    [first] = app.run_pass()
    assert first.result == "renewed", first.detail
    old_ecdsa, old_rsa, first_version = spki_of(home, "ecdsa-p256"), spki_of(home, "rsa-2048"), home.current()
    assert first_version is not None
    assert len(primary_tlsa(zone, name)) == 4  # current + next per key

    clock.offset = timedelta(seconds=2 * TTL + 1)
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail
    # Now the RSA side lags (an instance that was not updated): it serves the old RSA key on every address.
    serve(home.current_link / "ecdsa", first_version.path / "rsa")
    postfix.reload()
    run_passes_until(app, lambda: old_ecdsa not in primary_tlsa(zone, name), limit=30)
    published = primary_tlsa(zone, name)
    assert old_ecdsa not in published and old_rsa in published, retiring_reasons(events)[-3:]
    assert "rsa-2048 key: the old key's TLSA records are retiring" in retiring_reasons(events)[-1]

    serve(home.current_link / "ecdsa", home.current_link / "rsa")
    postfix.reload()
    run_passes_until(app, lambda: old_rsa not in primary_tlsa(zone, name), limit=30)
    assert primary_tlsa(zone, name) == {spki_of(home, "ecdsa-p256"), spki_of(home, "rsa-2048"),
                                        *(next_of(home, k) for k in ("ecdsa-p256", "rsa-2048"))}
