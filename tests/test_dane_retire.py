"""The DANE rollover's pure decisions beyond the two-TTL wait: when the old key's records may go (the dwell
after every address served the new key), and when published records count as visible everywhere."""

from __future__ import annotations

import base64
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from certkeeper.dane.propagation import ResolverAnswer, ServerAnswer, judge_visibility
from certkeeper.dane.publish import DnsSettings, TlsaPublisher
from certkeeper.dane.records import ProbePoint, Retirement, TlsaRecord
from certkeeper.dane.retire import (
    begin_retirement,
    decide_retirement,
    note_probes,
    points_for,
    retire_dwell,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NAME = "_25._tcp.mx.example.org."
OLD, CURRENT, NEXT = (TlsaRecord(NAME, 3, 1, 1, c * 64) for c in "abc")
POINTS = points_for(["mx.example.org"], [25], {"mx.example.org": ["192.0.2.25", "2001:db8::25"]})
DWELL = timedelta(seconds=60)


def probed(retirement: Retirement, at: datetime, clean: bool = True) -> Retirement:
    return note_probes(retirement, dict.fromkeys(POINTS, clean), at)


def test_every_address_is_probed_with_and_without_sni() -> None:
    assert [p.label for p in POINTS] == [
        "mx.example.org 192.0.2.25:25 with SNI", "mx.example.org 192.0.2.25:25 without SNI",
        "mx.example.org [2001:db8::25]:25 with SNI", "mx.example.org [2001:db8::25]:25 without SNI"]
    assert ProbePoint.from_key(POINTS[2].key) == POINTS[2]


def test_the_dwell_is_two_ttls_by_default_and_never_shorter_than_the_server_processes_life() -> None:
    assert retire_dwell(ttl=30, retire_after=None, process_lifetime=None) == timedelta(seconds=60)
    assert retire_dwell(ttl=30, retire_after=timedelta(seconds=5), process_lifetime=None) == timedelta(seconds=5)
    assert retire_dwell(ttl=30, retire_after=None, process_lifetime=timedelta(seconds=100)) == timedelta(seconds=100)


def test_old_records_go_after_n_clean_probes_spread_over_the_dwell_on_every_point() -> None:
    retirement = begin_retirement(None, frozenset({OLD}), T0)
    assert retirement is not None
    for i in range(3):
        retirement = probed(retirement, T0 + i * DWELL / 2)
        step = decide_retirement(retirement, POINTS, now=T0 + i * DWELL / 2, dwell=DWELL, probes=3)
        assert step.done == (i == 2), step.reason
    assert not step.waiting_for


def test_three_quick_probes_are_not_enough_before_the_dwell_has_passed() -> None:
    retirement = begin_retirement(None, frozenset({OLD}), T0)
    assert retirement is not None
    for i in range(5):
        retirement = probed(retirement, T0 + timedelta(seconds=i))
    step = decide_retirement(retirement, POINTS, now=T0 + timedelta(seconds=5), dwell=DWELL, probes=3)
    assert not step.done and "5 of 3 probes over 60 s" in step.reason
    assert step.probe_at == T0 + timedelta(seconds=35)


def test_one_point_serving_the_old_key_starts_its_count_over_and_is_named() -> None:
    retirement = begin_retirement(None, frozenset({OLD}), T0)
    assert retirement is not None
    retirement = probed(retirement, T0)
    samples = dict.fromkeys(POINTS, True) | {POINTS[3]: False}
    retirement = note_probes(retirement, samples, T0 + DWELL)
    retirement = probed(retirement, T0 + DWELL * 2)
    step = decide_retirement(retirement, POINTS, now=T0 + DWELL * 2, dwell=DWELL, probes=3)
    assert not step.done
    assert step.waiting_for == ("mx.example.org [2001:db8::25]:25 without SNI: 1 of 3 probes over 60 s",)


def test_a_record_joining_the_retiring_set_starts_the_retirement_over() -> None:
    first = begin_retirement(None, frozenset({OLD}), T0)
    assert first is not None
    first = probed(first, T0)
    assert begin_retirement(first, frozenset({OLD}), T0 + DWELL) == first
    again = begin_retirement(first, frozenset({OLD, CURRENT}), T0 + DWELL)
    assert again is not None and (again.since, again.streaks) == (T0 + DWELL, {})
    assert begin_retirement(first, frozenset(), T0) is None


def test_no_address_to_probe_is_never_proof() -> None:
    retirement = begin_retirement(None, frozenset({OLD}), T0)
    assert retirement is not None
    assert not decide_retirement(retirement, [], now=T0 + DWELL * 10, dwell=DWELL).done


@given(times=st.lists(st.integers(0, 500), min_size=1, max_size=8), probes=st.integers(1, 5),
       dwell=st.integers(1, 300))
def test_records_never_go_before_the_dwell_nor_with_fewer_probes(times: list[int], probes: int, dwell: int) -> None:
    retirement = begin_retirement(None, frozenset({OLD}), T0)
    assert retirement is not None
    moments = sorted(T0 + timedelta(seconds=t) for t in times)
    for moment in moments:
        retirement = probed(retirement, moment)
    step = decide_retirement(retirement, POINTS, now=moments[-1], dwell=timedelta(seconds=dwell), probes=probes)
    if step.done:
        assert len(moments) >= probes and moments[-1] - moments[0] >= timedelta(seconds=dwell)


def server(name: str, serial: int, *records: TlsaRecord) -> ServerAnswer:
    return ServerAnswer(name, serial, {NAME: frozenset(records)})


def test_a_record_is_visible_only_when_every_server_answers_it_and_the_lagging_one_is_named() -> None:
    wanted = frozenset({CURRENT, NEXT})
    seen = judge_visibility(wanted, [server("ns1. 192.0.2.53:53", 8, CURRENT, NEXT),
                                     server("ns2. [2001:db8::53]:53", 7, CURRENT)], None)
    assert seen.visible == {CURRENT}
    assert seen.lagging_servers == ("ns2. [2001:db8::53]:53",)
    assert seen.lagging[0].startswith("ns2. [2001:db8::53]:53: serial 7, 8 on another server; 1 TLSA record(s)")
    everywhere = judge_visibility(wanted, [server("ns1.", 8, CURRENT, NEXT), server("ns2.", 8, CURRENT, NEXT)], None)
    assert (everywhere.visible, everywhere.lagging) == (wanted, ())


def test_with_a_validating_resolver_only_an_authenticated_answer_counts() -> None:
    wanted = frozenset({NEXT})
    servers = [server("ns1.", 8, NEXT)]
    unsigned = ResolverAnswer(NAME, frozenset(), False, "SERVFAIL", "127.0.0.1:5353")
    seen = judge_visibility(wanted, servers, [unsigned])
    assert seen.visible == frozenset() and "without the AD bit" in seen.lagging[0]
    cached = ResolverAnswer(NAME, frozenset({CURRENT}), True, "NOERROR", "127.0.0.1:5353")
    assert "its cache holds the old RRset" in judge_visibility(wanted, servers, [cached]).lagging[0]
    validated = ResolverAnswer(NAME, frozenset({NEXT}), True, "NOERROR", "127.0.0.1:5353")
    assert judge_visibility(wanted, servers, [validated]).visible == wanted


def test_a_server_that_cannot_be_asked_hides_every_record() -> None:
    seen = judge_visibility(frozenset({NEXT}), [server("ns1.", 8, NEXT), ServerAnswer("ns2.", None, error="timeout")],
                            None)
    assert seen.visible == frozenset() and seen.lagging == ("ns2.: timeout",)


def test_a_server_that_never_answers_holds_the_wait_no_longer_than_its_timeout(tmp_path: Path) -> None:
    """The wait's deadline was looked at only between sweeps, and each query waited its own 3 s: a primary or
    secondary that never answers (what a stopped or firewalled BIND does on the wire; a bound socket that reads
    and never replies stands for it) held ``wait_visible(timeout=0.5)`` for a whole sweep of 3 s queries."""
    key = tmp_path / "tsig.key"
    secret = base64.b64encode(b"k" * 32).decode()
    key.write_text(f'key "ck" {{\n    algorithm hmac-sha256;\n    secret "{secret}";\n}};\n')
    key.chmod(0o600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        publisher = TlsaPublisher(DnsSettings(address, key, "example.test."), ttl=30, timeout=10)
        started = time.monotonic()
        seen = publisher.wait_visible([NEXT], timeout=0.5)
        waited = time.monotonic() - started
    assert seen.visible == frozenset() and seen.lagging and address in seen.lagging[0], seen
    assert waited < 2.0, waited  # 3 s and more before
