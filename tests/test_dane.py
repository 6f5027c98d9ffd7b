"""DANE-safe key rollover (RFC 7672): the pure state machine, and renewals against the test bed's BIND (RFC 2136
with TSIG), Pebble and a real Postfix, probed continuously while the key changes."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper import dnsclient, pki
from certkeeper.alerts.notifier import AlertContent
from certkeeper.app import App, build_app
from certkeeper.config import AcmeIssuerConfig, CertificateConfig, Config, DaneConfig, load_config
from certkeeper.dane import records as dane
from certkeeper.dane.judge import (
    WITH_SNI,
    WITHOUT_SNI,
    LookupResult,
    Mismatch,
    PresentedChain,
    ServedView,
    judge_tlsa,
    outcome_findings,
)
from certkeeper.dane.observe import DaneWatch, dane_watch_for, tlsa_events
from certkeeper.dane.publish import DnsSettings, TlsaPublisher, dns_settings
from certkeeper.dane.records import Presented, RolloverState, TlsaParameters, TlsaRecord, decide_rollover, gate_renewal
from certkeeper.dnsclient import parse_tsig_key
from certkeeper.errors import ConfigError
from certkeeper.events import (
    Event,
    RenewalWaitingForTlsa,
    TlsaMatchRecovered,
    TlsaMismatchObserved,
    TlsaUpdateFailed,
    UnsafeKeyRollover,
)
from certkeeper.model import KeyType
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store import AlertRecord
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix
from certkeeper.values import replace

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NAME = "_25._tcp.mx.example.org."


# Alerts are queued in the store and checked there; port 9 (discard) is never delivered to.
UNDELIVERABLE_ALERTS = textwrap.dedent("""
    [alerts]
    to = ["postmaster@example.test"]
    from = "certkeeper@example.test"
    smtp_host = "127.0.0.1"
    smtp_port = 9
    smtp_security = "none"
    """)


def record(data: str, usage: int = 3) -> TlsaRecord:
    return TlsaRecord(NAME, usage, 1, 1, data)


CURRENT, NEXT, OLD = record("aa" * 32), record("bb" * 32), record("cc" * 32)


# -- the pure core --------------------------------------------------------------------------------------------


def test_record_names_are_per_mx_host_and_port_and_skip_wildcards() -> None:
    assert dane.record_names(["mx.example.org", "MX2.example.org.", "*.example.org"], [25, 465]) == [
        "_25._tcp.mx.example.org.", "_465._tcp.mx.example.org.", "_25._tcp.mx2.example.org.",
        "_465._tcp.mx2.example.org."]


def test_3_1_1_names_the_leaf_key_and_2_1_1_the_intermediate_not_the_root() -> None:
    root = TestCA("dane test root")
    intermediate = root.intermediate("dane test intermediate")
    issued = intermediate.issue(["mx.example.org"])
    parameters = [TlsaParameters.parse("3 1 1"), TlsaParameters.parse("2 1 1")]
    cas = dane.issuing_cas([*issued.intermediates, root.certificate])
    records = dane.records_for(parameters, [NAME], issuing_cas=cas, end_entities=[
        dane.EndEntity(dane.certificate_spki_der(issued.certificate), dane.certificate_der(issued.certificate))])
    assert {r.rdata for r in records} == {f"3 1 1 {pki.spki_sha256(issued.certificate)}",
                                          f"2 1 1 {pki.spki_sha256(intermediate.certificate)}"}


def test_a_next_key_without_a_certificate_gets_no_selector_0_record() -> None:
    key = pki.generate_key(KeyType.ECDSA_P256)
    records = dane.records_for([TlsaParameters.parse("3 1 1"), TlsaParameters(3, 0, 1)], [NAME],
                               end_entities=[dane.EndEntity(pki.public_key_der(key))], issuing_cas=[])
    assert [r.rdata for r in records] == [f"3 1 1 {hashlib.sha256(pki.public_key_der(key)).hexdigest()}"]


def test_pkix_usages_are_refused_for_smtp() -> None:
    with pytest.raises(ValueError, match=r"unusable for SMTP \(RFC 7672 section 3.1.3\)"):
        TlsaParameters.parse("1 1 1")


def test_new_records_are_published_first() -> None:
    step = decide_rollover(RolloverState(), desired=frozenset({CURRENT, NEXT}), needed=frozenset({NEXT}),
                           current=frozenset({CURRENT}), now=T0, ttl=60)
    assert (step.phase, step.action) == ("unpublished", "publish")
    assert (step.add, step.remove) == (frozenset({CURRENT, NEXT}), frozenset())


def test_published_records_are_confirmed_on_every_authoritative_server() -> None:
    state = RolloverState(frozenset({CURRENT, NEXT}), {CURRENT: T0})
    step = decide_rollover(state, desired=frozenset({CURRENT, NEXT}), needed=frozenset({NEXT}),
                           current=frozenset({CURRENT}), now=T0, ttl=60)
    assert (step.phase, step.action) == ("next-published", "confirm")


def test_the_next_key_is_ready_two_ttls_after_its_records_became_visible() -> None:
    state = RolloverState(frozenset({CURRENT, NEXT}), {CURRENT: T0 - timedelta(days=9), NEXT: T0})
    kwargs = {"desired": frozenset({CURRENT, NEXT}), "needed": frozenset({NEXT}), "current": frozenset({CURRENT}),
              "ttl": 60}
    waiting = decide_rollover(state, now=T0 + timedelta(seconds=119), **kwargs)  # type: ignore[arg-type]
    assert (waiting.phase, waiting.action, waiting.until) == ("next-published", "wait", T0 + timedelta(seconds=120))
    ready = decide_rollover(state, now=T0 + timedelta(seconds=120), **kwargs)  # type: ignore[arg-type]
    assert ready.phase == "ready"


def test_after_the_rollover_the_old_key_retires_and_is_removed_only_once_retired() -> None:
    newer = record("dd" * 32)
    state = RolloverState(frozenset({OLD, CURRENT}), {OLD: T0, CURRENT: T0})
    kwargs: dict[str, Any] = {"desired": frozenset({CURRENT, newer}), "needed": frozenset({newer}),
                              "current": frozenset({CURRENT}), "now": T0, "ttl": 60}
    step = decide_rollover(state, **kwargs)
    assert (step.phase, step.add, step.remove, step.retiring) == ("unpublished", frozenset({newer}), frozenset(),
                                                                  frozenset({OLD}))
    step = decide_rollover(state, retired=frozenset({OLD}), **kwargs)
    assert (step.phase, step.add, step.remove) == ("cleanup", frozenset({newer}), frozenset({OLD}))


def test_reusing_the_key_is_stable_at_once() -> None:
    step = decide_rollover(RolloverState(frozenset({CURRENT}), {CURRENT: T0}), desired=frozenset({CURRENT}),
                           needed=frozenset({CURRENT}), current=frozenset({CURRENT}), now=T0, ttl=3600)
    assert (step.phase, step.action) == ("stable", "none")


@given(visible=st.integers(0, 10_000), ttl=st.integers(1, 86_400), elapsed=st.integers(0, 200_000))
def test_a_key_is_never_ready_before_two_ttls_of_visibility(visible: int, ttl: int, elapsed: int) -> None:
    seen = T0 + timedelta(seconds=visible)
    state = RolloverState(frozenset({CURRENT, NEXT}), {CURRENT: T0, NEXT: seen})
    step = decide_rollover(state, desired=frozenset({CURRENT, NEXT}), needed=frozenset({NEXT}),
                           current=frozenset({CURRENT}), now=seen + timedelta(seconds=elapsed), ttl=ttl)
    assert (step.phase == "ready") == (elapsed >= 2 * ttl)


def test_a_renewal_waits_while_the_served_certificate_is_safe_and_goes_unsafe_near_expiry() -> None:
    step = decide_rollover(RolloverState(), desired=frozenset({CURRENT, NEXT}), needed=frozenset({NEXT}),
                           current=frozenset({CURRENT}), now=T0, ttl=60)
    not_after = T0 + timedelta(days=10)
    wait = gate_renewal(step, now=T0, not_after=not_after, unsafe_rollover_days=3)
    assert (wait.proceed, wait.unsafe, wait.retry_at) == (False, False, T0 + timedelta(minutes=5))
    unsafe = gate_renewal(step, now=not_after - timedelta(days=3), not_after=not_after, unsafe_rollover_days=3)
    assert (unsafe.proceed, unsafe.unsafe) == (True, True)
    assert "closer than unsafe_rollover_days (3)" in unsafe.reason
    assert gate_renewal(step, now=T0, not_after=None, unsafe_rollover_days=3).proceed


def test_a_presented_chain_matches_ee_records_on_the_leaf_and_ta_records_above_it() -> None:
    leaf, intermediate = dane.Presented("11" * 32, "22" * 32), dane.Presented("33" * 32, "44" * 32)
    ee, ta, wrong = record("11" * 32), record("33" * 32, usage=2), record("33" * 32)
    match = dane.match_presented({ee, ta, wrong}, leaf, [intermediate])
    assert set(match.matched) == {ee, ta}


def test_3_0_1_is_refused_in_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(f"""\
        [certkeeper]
        state_dir = "{tmp_path}"
        [issuers.ca]
        type = "ca"
        ca_dir = "{tmp_path / "ca"}"
        [certificates.mail]
        issuer = "ca"
        domains = ["mx.example.org"]
        dane = {{ tlsa = ["3 0 1"] }}
        """))
    with pytest.raises(ConfigError, match=r"certificates\.mail\.dane\.tlsa\[0\].*cannot be published before"):
        load_config(path)


def test_dns_settings_default_to_the_acme_issuers_rfc2136_settings() -> None:
    issuer = AcmeIssuerConfig(name="le", directory="https://acme.example/dir", challenge="dns-01",
                              dns_server="192.0.2.53", tsig_key_file=Path("/etc/certkeeper/tsig.key"),
                              dns_zone="example.org")
    assert dns_settings(DaneConfig(), issuer) == DnsSettings("192.0.2.53", Path("/etc/certkeeper/tsig.key"),
                                                             "example.org")
    own = DaneConfig(dns_server="198.51.100.53", zone="mail.example.org")
    assert dns_settings(own, issuer) == DnsSettings("198.51.100.53", Path("/etc/certkeeper/tsig.key"),
                                                    "mail.example.org")
    assert dns_settings(DaneConfig(), None) is None  # no dynamic DNS: `certkeeper dane show` for the operator


# -- the daemon's probes: served certificate against published records ----------------------------------------

LEAF, INTERMEDIATE = Presented("11" * 32, "12" * 32), Presented("21" * 32, "22" * 32)
OTHER_LEAF = Presented("31" * 32, "32" * 32)


def lookup(*records: TlsaRecord) -> LookupResult:
    return LookupResult(NAME, frozenset(records), authenticated=False, resolver="192.0.2.53:53")


def view(leaf: Presented, name: str = WITH_SNI, above: tuple[Presented, ...] | None = (INTERMEDIATE,)) -> ServedView:
    return ServedView(name, (PresentedChain(leaf, above),))


def test_a_leaf_matching_a_published_record_is_tlsa_valid() -> None:
    outcome = judge_tlsa([lookup(record(LEAF.spki_sha256), NEXT)], [view(LEAF), view(LEAF, WITHOUT_SNI)])
    assert (outcome.status, outcome.mismatches, outcome.dnssec_validated) == ("tlsa-valid", (), False)
    assert "not DNSSEC-validated" in outcome.message


def test_a_leaf_matching_no_record_is_tlsa_invalid_once_however_many_handshakes_presented_it() -> None:
    outcome = judge_tlsa([lookup(CURRENT, NEXT)], [view(LEAF), view(LEAF, WITHOUT_SNI)])
    assert outcome.status == "tlsa-invalid"
    assert outcome.mismatches == (Mismatch(NAME, LEAF.spki_sha256, (WITH_SNI, WITHOUT_SNI),
                                           (CURRENT.rdata, NEXT.rdata)),)


def test_another_certificate_without_sni_is_judged_on_its_own() -> None:
    outcome = judge_tlsa([lookup(record(LEAF.spki_sha256))], [view(LEAF), view(OTHER_LEAF, WITHOUT_SNI)])
    assert [(m.spki_sha256, m.views) for m in outcome.mismatches] == [(OTHER_LEAF.spki_sha256, (WITHOUT_SNI,))]


def test_dane_ta_records_match_the_ca_sent_above_and_are_not_judged_without_that_chain() -> None:
    ta = record(INTERMEDIATE.spki_sha256, usage=2)
    assert judge_tlsa([lookup(ta)], [view(LEAF)]).status == "tlsa-valid"
    assert judge_tlsa([lookup(ta)], [view(LEAF, above=())]).status == "tlsa-invalid"
    second_key_type = ServedView(WITH_SNI, (PresentedChain(LEAF, (INTERMEDIATE,)), PresentedChain(OTHER_LEAF, None)))
    assert judge_tlsa([lookup(ta)], [second_key_type]).status == "tlsa-valid"


def test_no_records_a_failed_lookup_or_no_certificate_are_no_mismatch() -> None:
    assert judge_tlsa([lookup()], [view(LEAF)]).status == "tlsa-missing"
    failed = LookupResult(NAME, error="the TLSA query timed out")
    assert judge_tlsa([failed], [view(LEAF)]).status == "tlsa-lookup-failed"
    assert judge_tlsa([lookup(CURRENT)], [ServedView(WITH_SNI, ())]).status == "not-checked"


def test_a_record_of_a_matching_type_certkeeper_cannot_check_is_reported_unchecked() -> None:
    sha512 = TlsaRecord(NAME, 3, 1, 2, "ab" * 64)
    outcome = judge_tlsa([lookup(record(LEAF.spki_sha256), sha512)], [view(LEAF)])
    assert (outcome.status, outcome.unchecked) == ("tlsa-valid", (sha512,))
    [warning] = [f for f in outcome_findings(outcome) if f.code == "not-checked"]
    assert warning.severity == "WARNING" and f"1 TLSA record(s) at {NAME} (3 1 2)" in warning.message
    assert judge_tlsa([lookup(sha512)], [view(LEAF)]).status != "tlsa-invalid"  # never a mismatch
    assert outcome.to_json()["unchecked"] == [{"name": NAME, "rdata": sha512.rdata}]


def test_a_mismatch_is_reported_every_pass_and_a_match_after_anything_else_is_a_recovery() -> None:
    invalid = judge_tlsa([lookup(CURRENT)], [view(LEAF)])
    valid = judge_tlsa([lookup(record(LEAF.spki_sha256))], [view(LEAF)])
    [event] = tlsa_events("mail", "smtp://mx:25", invalid, invalid.to_json(), T0)
    assert event == TlsaMismatchObserved(T0, "mail", "smtp://mx:25", NAME, LEAF.spki_sha256, (CURRENT.rdata,),
                                         WITH_SNI, False)
    assert tlsa_events("mail", "smtp://mx:25", valid, invalid.to_json(), T0) == [
        TlsaMatchRecovered(T0, "mail", "smtp://mx:25", valid.message)]
    assert tlsa_events("mail", "smtp://mx:25", valid, {"status": "tlsa-lookup-failed"}, T0) != []
    assert tlsa_events("mail", "smtp://mx:25", valid, valid.to_json(), T0) == []
    assert tlsa_events("mail", "smtp://mx:25", valid, None, T0) == []


def test_endpoints_on_dane_ports_are_watched_by_their_host_name_and_smtp_ones_without_sni_too() -> None:
    issuer = AcmeIssuerConfig(name="le", directory="https://acme.example/dir", challenge="dns-01",
                              dns_server="192.0.2.53", tsig_key_file=Path("/etc/certkeeper/tsig.key"))
    certificate = CertificateConfig("mail", "le", ("mx.example.org", "*.example.org"), dane=DaneConfig(ports=(25,)))
    by_name = dane_watch_for(certificate, parse_target("smtp://mx2.example.org:25"), issuer)
    assert by_name == DaneWatch(("_25._tcp.mx2.example.org.",), "192.0.2.53", without_sni=True)
    by_address = dane_watch_for(certificate, parse_target("smtp://192.0.2.25:25"), None)
    assert by_address == DaneWatch(("_25._tcp.mx.example.org.",), None, without_sni=True)  # the system resolver
    assert dane_watch_for(certificate, parse_target("smtps://mx.example.org:465"), issuer) is None
    assert dane_watch_for(replace(certificate, dane=None), parse_target("smtp://mx.example.org:25"), issuer) is None


# -- against BIND, Pebble and Postfix ---------------------------------------------------------------------------

class Clock:
    """The renewer's clock: real time plus an offset the test moves forward (the "two TTLs" wait)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return pki.now_utc() + self.offset


def tlsa_data(bind: Bind, name: str) -> set[str]:
    """The 3 1 1 association data BIND answers for ``name`` right now."""
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TLSA), bind.address, port=bind.port, timeout=2)
    return {r.cert.hex() for rrset in reply.answer for r in rrset if r.usage == 3 and r.selector == 1}


def updates_of(bind: Bind, host: str) -> int:
    """How many RRs BIND's log says were added or deleted at ``host``'s TLSA names."""
    return sum(1 for line in bind.log_path.read_text().splitlines()
               if "updating zone" in line and f"._tcp.{host}" in line)


def write_acme_config(tmp_path: Path, pebble: Pebble, certificate: str, *, extra: str = "") -> Config:
    trust = pebble.write_issuer_chain(tmp_path / "pebble-chain.pem")
    path = tmp_path / "certkeeper.toml"
    path.write_text(textwrap.dedent(f"""\
        [certkeeper]
        state_dir = "{tmp_path / "state"}"
        verify_timeout = "15s"
        hook_timeout = "20s"
        lock_timeout = "1s"

        [issuers.pebble]
        type = "acme"
        directory = "{pebble.directory_url}"
        ca_bundle = "{pebble.ca_file}"
        trust_roots = "{trust}"
        challenge = "http-01"
        http_port = {pebble.http_port}
        http_address = "127.0.0.1"
        timeout = "60s"
        """) + extra + textwrap.dedent(certificate))
    return load_config(path)


def certificate_table(host: str, bind: Bind, *, dane_extra: str = "", postfix: Postfix | None = None,
                      tsig_key_file: Path | None = None, reuse_key: bool = False, with_dane: bool = True,
                      ports: tuple[int, ...] = (25,)) -> str:
    key_file = tsig_key_file or bind.tsig_key_file
    lines = ["[certificates.mail]", 'issuer = "pebble"', f'domains = ["{host}"]',
             f"reuse_key = {str(reuse_key).lower()}"]
    if with_dane:
        lines.append(f'dane = {{ tlsa = ["3 1 1"], ports = {list(ports)}, dns_server = "{bind.nameserver}", '
                     f'tsig_key_file = "{key_file}", ttl = 30{dane_extra} }}')
    if postfix is not None:
        lines += ['reload = ["postfix"]', f'hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}',
                  f'endpoints = ["smtp://127.0.0.1:{postfix.ports["smtp"]}"]']
    return "\n" + "\n".join(lines) + "\n"


def served_spki(postfix: Postfix) -> str:
    [result] = probe_sync([parse_target(f"smtp://127.0.0.1:{postfix.ports['smtp']}")], ProbeOptions(timeout=5),
                          now=pki.now_utc())
    assert result.certificate is not None, result.message
    return result.certificate.spki_sha256


def current_spki(home: CertificateHome) -> str:
    version = home.current()
    assert version is not None
    return pki.spki_sha256(home.load_pair_certificate(version.pairs[0]))


def next_spki(home: CertificateHome) -> str:
    key = pki.load_key((home.root / "next" / "ecdsa-p256.key").read_bytes())
    return hashlib.sha256(pki.public_key_der(key)).hexdigest()


@dataclass
class RolloverWatcher:
    """Probes Postfix's port-25 listener again and again, and checks each presented key against the TLSA records
    BIND answered when the connection was opened: a DANE sender looks its records up before connecting, so a
    session opened before a reload that completes its handshake with the old key later is still judged by
    what its sender saw (the old record, which stays until the dwell is over: certkeeper.dane.retire)."""

    postfix: Postfix
    bind: Bind
    name: str
    samples: list[tuple[str, set[str], set[str]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        target = parse_target(f"smtp://127.0.0.1:{self.postfix.ports['smtp']}")
        while not self.stop.is_set():
            before = tlsa_data(self.bind, self.name)
            [result] = probe_sync([target], ProbeOptions(timeout=5), now=pki.now_utc())
            after = tlsa_data(self.bind, self.name)
            if result.certificate is None:
                self.failures.append(result.message)
            else:
                self.samples.append((result.certificate.spki_sha256, before, after))

    def wait_for(self, spki: str, timeout: float = 30) -> None:
        """Until a handshake after this call presented ``spki`` (the watcher's view lags the test's by one probe)."""
        deadline = time.monotonic() + timeout
        start = len(self.samples)
        while not any(s[0] == spki for s in self.samples[start:]) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def mismatches(self) -> list[tuple[str, set[str], set[str]]]:
        return [s for s in self.samples if s[0] not in s[1]]


@pytest.fixture
def watching() -> Iterator[Callable[[Postfix, Bind, str], RolloverWatcher]]:
    started: list[tuple[RolloverWatcher, threading.Thread]] = []

    def start(postfix: Postfix, bind: Bind, name: str) -> RolloverWatcher:
        watcher = RolloverWatcher(postfix, bind, name)
        thread = threading.Thread(target=watcher.run, name="rollover watcher", daemon=True)
        thread.start()
        started.append((watcher, thread))
        return watcher

    yield start
    for watcher, thread in started:
        watcher.stop.set()
        thread.join(timeout=30)


def unique_host(bind: Bind) -> str:
    """A fresh MX host name with its own A record: once ``_25._tcp.<host>`` exists, ``<host>`` is an empty
    non-terminal that the zone's wildcard A no longer covers (RFC 4592 section 2.2.2), and Pebble must resolve it."""
    host = f"mx-{secrets.token_hex(4)}.{bind.zone}"
    key = parse_tsig_key(bind.tsig_key_file.read_text(), "bind")
    dnsclient.send_update(bind.address, bind.port, bind.zone, key, ttl=60, add=[(host, "A", "127.0.0.1")])
    return host.rstrip(".")


def install_and_serve(tmp_path: Path, pebble: Pebble, bind: Bind, postfix: Postfix, host: str,
                      *, with_dane: bool = True, ports: tuple[int, ...] = (25,)) -> CertificateHome:
    """The first install (nothing served yet), then Postfix pointed at certkeeper's ``current``."""
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, with_dane=with_dane, ports=ports))
    [outcome] = build_app(config).run_pass()
    assert outcome.result == "renewed", outcome.detail
    home = CertificateHome(tmp_path / "state", "mail")
    postfix.use_certificate(home.current_link / "privkey.pem", home.current_link / "fullchain.pem")
    postfix.reload()
    return home


def app_with(config: Config, clock: Clock) -> tuple[App, list[Event]]:
    app = build_app(config, clock=clock)
    events: list[Event] = []
    app.bus.subscribe(events.append)
    return app, events


@pytest.mark.testbed
@pytest.mark.slow
def test_a_new_key_is_published_before_it_is_served_and_every_served_key_matches_a_visible_record(
        tmp_path: Path, pebble: Pebble, bind: Bind, postfix_factory: Callable[..., Postfix],
        watching: Callable[[Postfix, Bind, str], RolloverWatcher]) -> None:
    host = unique_host(bind)
    name = f"_25._tcp.{host}."
    postfix = postfix_factory()
    home = install_and_serve(tmp_path, pebble, bind, postfix, host)
    first_key, second_key = current_spki(home), next_spki(home)
    assert served_spki(postfix) == first_key
    assert tlsa_data(bind, name) == {first_key, second_key}  # current + next, before any renewal
    watcher = watching(postfix, bind, name)

    clock = Clock()
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, postfix=postfix))
    app, events = app_with(config, clock)
    [waiting] = app.run_pass(force=True)
    assert waiting.result == "waiting", waiting.detail
    assert "waiting two TTLs (60 s)" in waiting.detail
    assert any(isinstance(e, RenewalWaitingForTlsa) for e in events)
    assert current_spki(home) == first_key

    clock.offset = timedelta(seconds=61)  # two TTLs of 30 s have passed
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail
    third_key = next_spki(home)
    assert current_spki(home) == second_key == served_spki(postfix)
    assert tlsa_data(bind, name) == {first_key, second_key, third_key}  # the old key's record is retiring

    watcher.wait_for(second_key)
    watcher.stop.set()
    assert {spki for spki, _, _ in watcher.samples} == {first_key, second_key}
    assert watcher.mismatches == [] and watcher.failures == []
    assert len(watcher.samples) > 5

    shown = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config.path), "dane", "show", "mail"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"{name} 30 IN TLSA 3 1 1 {second_key} ; current" in shown.stdout.splitlines()
    assert f"{name} 30 IN TLSA 3 1 1 {third_key} ; next" in shown.stdout.splitlines()
    assert f"{name} 30 IN TLSA 3 1 1 {first_key} ; retiring" in shown.stdout.splitlines()


@pytest.mark.testbed
@pytest.mark.slow
def test_renewals_that_reuse_the_key_change_nothing_in_dns(tmp_path: Path, pebble: Pebble, bind: Bind) -> None:
    host = unique_host(bind)
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, reuse_key=True))
    app = build_app(config)
    [first] = app.run_pass()
    assert first.result == "renewed", first.detail
    home = CertificateHome(tmp_path / "state", "mail")
    key = current_spki(home)
    assert tlsa_data(bind, f"_25._tcp.{host}.") == {key}
    assert not (home.root / "next" / "ecdsa-p256.key").exists()  # no next key: the key stays
    updates = updates_of(bind, host)
    for _ in range(2):
        [again] = app.run_pass(force=True)
        assert again.result == "renewed", again.detail
    assert current_spki(home) == key
    assert updates_of(bind, host) == updates == 1


@pytest.mark.testbed
@pytest.mark.slow
def test_a_broken_dns_update_blocks_the_rollover_and_alerts_until_expiry_comes_too_close(
        tmp_path: Path, pebble: Pebble, bind: Bind, postfix_factory: Callable[..., Postfix]) -> None:
    host = unique_host(bind)
    postfix = postfix_factory()
    home = install_and_serve(tmp_path, pebble, bind, postfix, host, with_dane=False)
    first = home.current()
    assert first is not None
    wrong_key = tmp_path / "wrong-tsig.key"
    wrong_key.write_text(bind.tsig_key_file.read_text().replace(bind.tsig_secret, "c2VjcmV0IG5vdCBrbm93biB0byBCSU5E"))
    alerts = UNDELIVERABLE_ALERTS
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, postfix=postfix,
                                                                   tsig_key_file=wrong_key), extra=alerts)
    clock = Clock()
    app, events = app_with(config, clock)
    [blocked] = app.run_pass(force=True)
    assert blocked.result == "waiting", blocked.detail
    failures = [e for e in events if isinstance(e, TlsaUpdateFailed)]
    assert failures and "didn't like the signature" in failures[0].error
    assert home.current() == first and served_spki(postfix) == current_spki(home)
    assert tlsa_data(bind, f"_25._tcp.{host}.") == set()
    assert any("TLSA records of mail not published" in a.subject for a in app.store.pending_alerts())

    clock.offset = first.not_after - pki.now_utc() - timedelta(days=1)  # expiry within unsafe_rollover_days (3)
    [forced] = app.run_pass(force=True)
    assert forced.result == "renewed", forced.detail
    assert any(isinstance(e, UnsafeKeyRollover) for e in events)
    assert any(a.severity == "CRITICAL" and "before its TLSA records were ready" in a.subject
               for a in app.store.pending_alerts())
    assert served_spki(postfix) == current_spki(home) != pki.spki_sha256(home.load_pair_certificate(first.pairs[0]))


@pytest.mark.testbed
@pytest.mark.slow
def test_check_dane_reports_a_match_and_tlsa_invalid(bind: Bind, postfix: Postfix, testbed_ca_file: Path) -> None:
    host = unique_host(bind)
    port = postfix.ports["smtp"]
    name = f"_{port}._tcp.{host}."
    served = served_spki(postfix)
    publisher = TlsaPublisher(DnsSettings(bind.nameserver, bind.tsig_key_file), ttl=30, timeout=10)
    right, wrong = TlsaRecord(name, 3, 1, 1, served), TlsaRecord(name, 3, 1, 1, "ab" * 32)

    def check() -> tuple[int, dict[str, object]]:
        result = subprocess.run(
            [sys.executable, "-m", "certkeeper", "check", f"smtp://127.0.0.1:{port}", "--servername", host,
             "--ca-file", str(testbed_ca_file), "--dane", "--resolver", bind.nameserver, "--json"],
            capture_output=True, text=True, timeout=60)
        [document] = json.loads(result.stdout)
        return result.returncode, document

    publisher.publish([right], [])
    _, matched = check()
    codes = {f["code"]: f for f in matched["findings"]}  # type: ignore[attr-defined]
    assert "tlsa-valid" in codes and "tlsa-invalid" not in codes
    assert "not DNSSEC-validated" in codes["dnssec-not-validated"]["message"]  # BIND's test zone is unsigned

    publisher.publish([wrong], [right])
    status, mismatched = check()
    invalid = [f for f in mismatched["findings"] if f["code"] == "tlsa-invalid"]  # type: ignore[attr-defined]
    assert status == 2 and mismatched["status"] == "CRITICAL"
    assert [f["message"].startswith("[no SNI]") for f in invalid] == [False, True]  # with SNI, and without
    publisher.publish([], [wrong])


@pytest.mark.testbed
@pytest.mark.slow
def test_the_pass_alerts_when_the_served_certificate_matches_no_published_tlsa_record_and_again_when_fixed(
        tmp_path: Path, pebble: Pebble, bind: Bind, postfix_factory: Callable[..., Postfix]) -> None:
    host = unique_host(bind)
    postfix = postfix_factory()
    port = postfix.ports["smtp"]  # stands for port 25: the test bed's Postfix listens on a free port
    name = f"_{port}._tcp.{host}."
    home = install_and_serve(tmp_path, pebble, bind, postfix, host, ports=(port,))
    alerts = UNDELIVERABLE_ALERTS
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, postfix=postfix, ports=(port,)),
                               extra=alerts)
    app, events = app_with(config, Clock())
    publisher = TlsaPublisher(DnsSettings(bind.nameserver, bind.tsig_key_file), ttl=30, timeout=10)
    published = publisher.published([name])
    assert current_spki(home) in {r.data for r in published}

    def dane_details() -> dict[str, Any]:
        [endpoint] = app.store.endpoints()
        return endpoint.details["dane"]  # type: ignore[no-any-return]

    def tlsa_alerts() -> list[AlertRecord]:
        return [a for a in app.store.pending_alerts() if "TLSA record" in a.subject]

    [quiet] = app.run_pass()
    assert quiet.result == "not-due", quiet.detail
    assert not any(isinstance(e, TlsaMismatchObserved) for e in events) and tlsa_alerts() == []
    assert dane_details()["status"] == "tlsa-valid"
    assert [v["view"] for v in dane_details()["served"]] == ["with SNI", "without SNI"]

    wrong = TlsaRecord(name, 3, 1, 1, "ab" * 32)
    publisher.publish([wrong], published)
    for _ in range(2):  # a second pass while it lasts raises no second alert
        app.run_pass()
    mismatches = [e for e in events if isinstance(e, TlsaMismatchObserved)]
    assert len(mismatches) == 2 and mismatches[0].tlsa_name == name
    assert (mismatches[0].served_spki_sha256, mismatches[0].published) == (current_spki(home), (wrong.rdata,))
    assert mismatches[0].handshakes == "with SNI, without SNI"
    [critical] = tlsa_alerts()
    assert critical.severity == "CRITICAL" and critical.subject.startswith(f"smtp://127.0.0.1:{port} matches no")
    content = AlertContent.from_body(critical.body)
    assert ("served SPKI sha256", current_spki(home)) in content.facts
    assert ("published", wrong.rdata) in content.facts
    assert content.next_step == "certkeeper dane show mail"
    assert dane_details()["status"] == "tlsa-invalid"

    publisher.publish(published, [wrong])
    app.run_pass()
    assert any(isinstance(e, TlsaMatchRecovered) for e in events)
    assert dane_details()["status"] == "tlsa-valid"
    assert [a.severity for a in tlsa_alerts() if "again" in a.subject] == ["INFO"]


@pytest.mark.testbed
@pytest.mark.slow
def test_a_certificate_presented_only_without_sni_that_matches_no_record_is_reported(
        tmp_path: Path, pebble: Pebble, bind: Bind, postfix_factory: Callable[..., Postfix]) -> None:
    host = unique_host(bind)
    postfix = postfix_factory()
    port = postfix.ports["smtp"]
    home = install_and_serve(tmp_path, pebble, bind, postfix, host, ports=(port,))
    # Postfix presents certkeeper's certificate to clients asking for the host by SNI, and its seed certificate
    # to those that send no SNI: the mistake senders without SNI would pay for.
    sni_map = tmp_path / "sni"
    sni_map.write_text(f"{host} {home.current_link / 'privkey.pem'} {home.current_link / 'fullchain.pem'}\n")
    subprocess.run(["/usr/sbin/postmap", "-F", "-c", str(postfix.config_dir), f"hash:{sni_map}"], check=True,
                   capture_output=True, timeout=30)
    postfix.postconf(smtpd_tls_chain_files=f"{postfix.key_file}, {postfix.fullchain_file}",
                     tls_server_sni_maps=f"hash:{sni_map}")
    postfix.reload()
    config = write_acme_config(tmp_path, pebble, certificate_table(host, bind, postfix=postfix, ports=(port,)))
    app, events = app_with(config, Clock())
    app.observe_endpoints()
    [mismatch] = [e for e in events if isinstance(e, TlsaMismatchObserved)]
    assert mismatch.handshakes == "without SNI"
    assert mismatch.served_spki_sha256 == pki.spki_sha256(pki.load_certificates(postfix.fullchain_file.read_bytes())[0])
    assert mismatch.served_spki_sha256 != current_spki(home)
