"""DANE records per key and per issuing CA: a dual RSA + ECDSA certificate has current and next records for each
key, ``dane.issuers`` adds the CAs that may sign the next certificate, and a crowded name draws a warning."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.app import build_app
from certkeeper.config import load_config
from certkeeper.dane.records import ProbePoint, RolloverState, TlsaRecord, crowded_names, decide_rollover
from certkeeper.dane.retire import begin_retirements, decide_retirement, note_probes
from certkeeper.dane.rollover import DaneRollover
from certkeeper.dane.served import clean_samples, presented_clean
from certkeeper.errors import ConfigErrors
from certkeeper.mailserver.config import postfix_duration, server_process_lifetime
from certkeeper.probe.result import CertificateSummary, ProbeResult
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.certs import TestCA
from tests.lifecycle_helpers import run_cli, write_config

NAME = "_25._tcp.mx.example.test."
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def summary(spki: str) -> CertificateSummary:
    return CertificateSummary("CN=mx", "CN=ca", "01", T0, T0, 30.0, spki * 2, ("mx.example.test",), "ecdsa-p256",
                              21, 7, spki)


def test_each_key_of_a_dual_certificate_is_judged_on_its_own_leaf() -> None:
    rsa, ecdsa, old_rsa = "aa" * 32, "bb" * 32, "cc" * 32
    kept = [TlsaRecord(NAME, 3, 1, 1, rsa), TlsaRecord(NAME, 3, 1, 1, ecdsa)]
    retiring = [TlsaRecord(NAME, 3, 1, 1, old_rsa)]
    target = parse_target("smtp://mx.example.test:25")
    both_new = ProbeResult(target, "OK", "", certificate=summary(ecdsa), served=(summary(ecdsa), summary(rsa)))
    rsa_old = ProbeResult(target, "OK", "", certificate=summary(ecdsa), served=(summary(ecdsa), summary(old_rsa)))
    assert presented_clean(both_new, retiring=retiring, kept=kept)
    assert not presented_clean(rsa_old, retiring=retiring, kept=kept)  # the RSA key still serves the old one
    assert not presented_clean(ProbeResult(target, "CRITICAL", "refused"), retiring=retiring, kept=kept)


RSA, ECDSA = "rsa-2048", "ecdsa-p256"
OLD_RSA, NEW_RSA, NEXT_RSA, OLD_EC, NEW_EC, NEXT_EC = (TlsaRecord(NAME, 3, 1, 1, c * 64) for c in "123456")


def test_each_key_type_rolls_when_its_own_next_records_are_ready_and_the_other_keeps_its_key() -> None:
    state = RolloverState(frozenset({NEW_RSA, NEXT_RSA, NEW_EC, NEXT_EC}),
                          dict.fromkeys([NEW_RSA, NEXT_RSA, NEW_EC], T0) | {NEXT_EC: T0 + timedelta(seconds=100)})
    kwargs = {"desired": state.published, "needed": frozenset({NEXT_RSA, NEXT_EC}),
              "current": frozenset({NEW_RSA, NEW_EC}), "ttl": 60,
              "needed_by_key": {RSA: frozenset({NEXT_RSA}), ECDSA: frozenset({NEXT_EC})}}
    step = decide_rollover(state, now=T0 + timedelta(seconds=120), installed_keys=frozenset({RSA, ECDSA}),
                           **kwargs)  # type: ignore[arg-type]
    assert (step.phase, step.rolling) == ("ready", (RSA,))
    assert "ecdsa-p256 keeps its key this renewal" in step.reason
    # An ECDSA key not installed yet cannot be kept: the renewal waits for its records.
    step = decide_rollover(state, now=T0 + timedelta(seconds=120), installed_keys=frozenset({RSA}),
                           **kwargs)  # type: ignore[arg-type]
    assert (step.phase, step.until) == ("next-published", T0 + timedelta(seconds=220))
    both = decide_rollover(state, now=T0 + timedelta(seconds=220), installed_keys=frozenset({RSA, ECDSA}),
                           **kwargs)  # type: ignore[arg-type]
    assert (both.phase, both.rolling) == ("ready", ())


def test_each_key_types_old_records_retire_on_their_own_once_its_new_key_is_served_everywhere() -> None:
    owners = {OLD_RSA: RSA, NEW_RSA: RSA, OLD_EC: ECDSA, NEW_EC: ECDSA}
    [ec, rsa] = begin_retirements((), frozenset({OLD_RSA, OLD_EC}), owners, T0)
    assert (ec.key, ec.records, rsa.key, rsa.records) == (ECDSA, frozenset({OLD_EC}), RSA, frozenset({OLD_RSA}))
    assert begin_retirements((ec, rsa), frozenset({OLD_RSA, OLD_EC}), owners, T0 + timedelta(seconds=9)) == (ec, rsa)
    target = parse_target("smtp://mx.example.test:25")
    point = ProbePoint("mx.example.test", "::1", 25, sni=True)
    rsa_lags = {point: ProbeResult(target, "OK", "", certificate=summary(NEW_EC.data),
                                   served=(summary(NEW_EC.data), summary(OLD_RSA.data)))}
    kept = frozenset({NEW_RSA, NEW_EC})
    dwell = timedelta(seconds=10)
    for moment in (T0, T0 + dwell):
        ec = note_probes(ec, clean_samples(rsa_lags, retiring=ec.records, kept=kept, own=frozenset({NEW_EC})), moment)
        rsa = note_probes(rsa, clean_samples(rsa_lags, retiring=rsa.records, kept=kept, own=frozenset({NEW_RSA})),
                          moment)
    assert decide_retirement(ec, [point], now=T0 + dwell, dwell=dwell, probes=2).done
    held = decide_retirement(rsa, [point], now=T0 + dwell, dwell=dwell, probes=2)
    assert not held.done and "mx.example.test [::1]:25 with SNI: no probe without the old key yet" in held.reason
    # A key type dropped from the certificate: its records go once no address serves its old key.
    assert presented_clean(rsa_lags[point], retiring=[OLD_EC], kept=[NEW_RSA], own=[])


def test_a_dual_certificate_gets_current_and_next_records_per_key_and_the_listed_issuers(tmp_path: Path) -> None:
    extra = TestCA("next issuing root").intermediate("next issuing intermediate")
    issuer_file = extra.write_cert(tmp_path / "next-intermediate.pem")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mx.example.test"]
        key_types = ["ecdsa-p256", "rsa-2048"]
        dane = {{ tlsa = ["3 1 1", "2 1 1"], issuers = ["{issuer_file}"], ttl = 60 }}
        """)
    [outcome] = build_app(config).run_pass()
    assert outcome.result == "renewed", outcome.detail
    home = CertificateHome(config.settings.state_dir, "mail")
    version = home.current()
    assert version is not None
    served = {pki.spki_sha256(home.load_pair_certificate(pair)) for pair in version.pairs}
    nexts = {hashlib.sha256(pki.public_key_der(pki.load_key(p.read_bytes()))).hexdigest()
             for p in (home.root / "next").glob("*.key")}
    shown = run_cli(config, "dane", "show", "mail")
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if " IN TLSA " in line]
    current = {line.split()[7] for line in lines if line.endswith("; current")}
    upcoming = [line for line in lines if line.endswith("; next")]
    cas = {line.split()[7] for line in lines if line.endswith("; issuing CA")}
    assert current == served and len(served) == 2  # one record per key
    assert {line.split()[7] for line in upcoming} == nexts and len(nexts) == 2  # a next key per key type
    assert pki.spki_sha256(extra.certificate) in cas and len(cas) == 2  # the served chain's CA and the listed one
    assert shown.stderr == ""


def test_a_renewal_rolls_the_key_type_whose_next_records_are_ready_and_keeps_the_other_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mx.example.test"]
        key_types = ["ecdsa-p256", "rsa-2048"]
        dane = { tlsa = ["3 1 1"], ttl = 60 }
        """)
    app = build_app(config)
    assert app.run_pass()[0].result == "renewed"  # no DNS server: published by hand (`dane show`)
    home = CertificateHome(config.settings.state_dir, "mail")
    certificate = app.renewer.select(["mail"])[0]
    rollover = DaneRollover(certificate, home, None, lambda _: None, pki.now_utc, store=app.store)
    records = rollover.record_sets()
    long_ago, just_now = pki.now_utc() - timedelta(days=1), pki.now_utc()
    # The RSA key's next records have been visible for a day; the ECDSA key's only just.
    rollover.save_state(RolloverState(records.desired, {r: just_now if r in records.needed_by_key[ECDSA] else long_ago
                                                        for r in records.desired}))

    def key_of(key_type: str, *, installed: bool) -> bytes:
        version = home.current()
        assert version is not None
        [pair] = [p for p in version.pairs if p.key_type == key_type]
        key = home.load_pair_key(pair) if installed else pki.load_key((home.root / "next" / f"{key_type}.key")
                                                                      .read_bytes())
        return pki.public_key_der(key)

    ecdsa_installed, rsa_next = key_of(ECDSA, installed=True), key_of(RSA, installed=False)
    [renewed] = app.run_pass(force=True)
    assert renewed.result == "renewed", renewed.detail
    assert (key_of(ECDSA, installed=True), key_of(RSA, installed=True)) == (ecdsa_installed, rsa_next)


def test_a_retirement_stored_before_retirements_were_per_key_is_read_as_one_of_unknown_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mx.example.test"]
        dane = { tlsa = ["3 1 1"], ttl = 60 }
        """)
    app = build_app(config)
    certificate = app.renewer.select(["mail"])[0]
    app.store.put_dane_state("mail", {"published": [], "visible_since": [], "retiring": {
        "records": [{"name": NAME, "rdata": OLD_RSA.rdata}], "since": T0.isoformat(), "streaks": []}})
    rollover = DaneRollover(certificate, app.renewer.home(certificate), None, lambda _: None, pki.now_utc,
                            store=app.store)
    [retirement] = rollover.load_state().retirements
    assert (retirement.key, retirement.records, retirement.since) == ("", frozenset({OLD_RSA}), T0)


def test_a_name_with_more_than_eight_records_draws_a_warning(tmp_path: Path) -> None:
    files = [TestCA(f"root {i}").intermediate(f"intermediate {i}").write_cert(tmp_path / f"ca-{i}.pem")
             for i in range(6)]
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mx.example.test"]
        dane = {{ tlsa = ["3 1 1", "2 1 1"], issuers = {[str(f) for f in files]}, ttl = 60 }}
        """.replace("'", '"'))
    assert build_app(config).run_pass()[0].result == "renewed"
    shown = run_cli(config, "dane", "show", "mail")
    assert shown.returncode == 0, shown.stderr
    assert "warning: _25._tcp.mx.example.test. would carry 9 TLSA records, more than 8" in shown.stderr
    assert crowded_names([TlsaRecord(NAME, 3, 1, 1, f"{i:064x}") for i in range(8)]) == []


def test_the_new_dane_keys_parse_and_a_missing_issuer_file_is_located(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mx.example.test"]
        dane = { resolver = "127.0.0.1:5353", retire_after = "90s", retire_probes = 4 }
        """)
    dane = config.certificates["mail"].dane
    assert dane is not None
    assert (dane.resolver, dane.retire_after, dane.retire_probes, dane.issuers) == (
        "127.0.0.1:5353", timedelta(seconds=90), 4, ())
    bad = config.path.read_text().replace('retire_probes = 4', f'retire_probes = 0, issuers = ["{tmp_path}/nope.pem"]')
    config.path.write_text(bad)
    with pytest.raises(ConfigErrors) as raised:
        load_config(config.path)
    text = str(raised.value)
    assert "certificates.mail.dane.issuers[0]" in text and "nope.pem" in text
    assert "certificates.mail.dane.retire_probes" in text


def test_postfix_time_values_and_the_lifetime_only_with_a_postfix_reload_hook() -> None:
    assert [postfix_duration(v) for v in ("100s", "5m", "30", "1h")] == [
        timedelta(seconds=100), timedelta(minutes=5), timedelta(seconds=30), timedelta(hours=1)]
    with pytest.raises(ValueError, match="not a Postfix time value"):
        postfix_duration("soon")
    assert server_process_lifetime(("dovecot",), {}) is None
