"""When the old key's TLSA records may go: pure, ``now`` passed in.

Verification sees the new key once and the rollover could remove the old key's records at that moment; DANE
operators do not (Viktor Dukhovni on postfix-users and dane-users; the internet.nl "DANE for SMTP how-to";
danebot).  A server process started before the reload keeps presenting the old key until it exits: Postfix's
smtpd serves the session it has, then lives up to ``max_idle`` waiting for the next one, and a session opened
just before ``postfix reload`` completes its handshake with the old key after verification is over.  A sender
whose resolver fetched the TLSA RRset just before that handshake has the old record; one that fetches after the
removal does not, and defers.

So records no longer wanted are *retiring*: still published, removed only when every probe point (every address,
IPv4 and IPv6, of every MX host name, on every DANE port, with and without SNI) has presented no retiring key on
``probes`` consecutive probes spread over the dwell time (``dane.retire_after``, default two TTLs, at least the
server processes' lifetime).  A probe that fails, or presents a retiring key, starts that point's count over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from certkeeper.dane.records import ProbePoint, Retirement, Streak, TlsaRecord
from certkeeper.values import frozen, replace

DEFAULT_RETIRE_PROBES = 3


@frozen
class RetireStep:
    """``done``: remove ``records`` now.  Otherwise probe again at ``probe_at``; ``waiting_for`` names the
    points not yet proven (their labels, with what is missing)."""

    done: bool
    reason: str
    probe_at: datetime | None = None
    waiting_for: tuple[str, ...] = ()


def retire_dwell(*, ttl: int, retire_after: timedelta | None, process_lifetime: timedelta | None) -> timedelta:
    """The dwell time: ``retire_after`` (default two TTLs), and never shorter than the server processes' life."""
    dwell = retire_after if retire_after is not None else timedelta(seconds=2 * ttl)
    return max(dwell, process_lifetime) if process_lifetime is not None else dwell


def begin_retirement(previous: Retirement | None, stale: frozenset[TlsaRecord], now: datetime) -> Retirement | None:
    """The retirement of ``stale`` (published, no longer wanted).  A record joining the retiring set starts the
    count over: probes before it stopped being wanted say nothing about it being gone."""
    if not stale:
        return None
    if previous is not None and stale <= previous.records:
        return previous if stale == previous.records else replace(previous, records=stale)
    return Retirement(stale, now)


def begin_retirements(previous: Sequence[Retirement], stale: frozenset[TlsaRecord], owners: Mapping[TlsaRecord, str],
                      now: datetime) -> tuple[Retirement, ...]:
    """One retirement per key (``owners``: each record's key type, or CA), each begun and counted on its own: the
    old ECDSA key's records go once every address presents the new ECDSA key, however the RSA side lags."""
    groups: dict[str, set[TlsaRecord]] = {}
    for record in stale:
        groups.setdefault(owners.get(record, ""), set()).add(record)
    before = {retirement.key: retirement for retirement in previous}
    found = []
    for key, records in sorted(groups.items()):
        retirement = begin_retirement(before.get(key), frozenset(records), now)
        if retirement is not None:
            found.append(replace(retirement, key=key))
    return tuple(found)


def note_probes(retirement: Retirement, samples: Mapping[ProbePoint, bool], now: datetime) -> Retirement:
    """The streaks after one probe of each point: ``True`` when it presented no retiring key (and a current one).

    A point that was not probed this time (its address went away) drops out; a new one starts at zero.
    """
    streaks: dict[ProbePoint, Streak] = {}
    for point, clean in samples.items():
        if not clean:
            continue
        before = retirement.streaks.get(point)
        streaks[point] = Streak(before.count + 1, before.first_at) if before else Streak(1, now)
    return replace(retirement, streaks=streaks)


def decide_retirement(retirement: Retirement, points: Iterable[ProbePoint], *, now: datetime, dwell: timedelta,
                      probes: int = DEFAULT_RETIRE_PROBES) -> RetireStep:
    """Whether the retiring records may be removed at ``now``.

    Yes when every point has a streak of at least ``probes`` probes whose first ran ``dwell`` or longer ago, and
    the retirement itself began ``dwell`` or longer ago.  No probe point at all (no address for any MX host) is
    never proof: the records stay.
    """
    expected = sorted(set(points))
    if not expected:
        return RetireStep(False, "no address of the MX hosts to probe: the retiring TLSA records stay",
                          now + dwell / max(probes - 1, 1), ("no probe point",))
    # Probes spaced so that ``probes`` of them span the dwell time.
    interval = dwell / max(probes - 1, 1)
    waiting: list[str] = []
    for point in expected:
        streak = retirement.streaks.get(point)
        if streak is None:
            waiting.append(f"{point.label}: no probe without the old key yet")
        elif streak.count < probes or now - streak.first_at < dwell:
            waiting.append(f"{point.label}: {streak.count} of {probes} probes over {dwell.total_seconds():g} s")
    settled = retirement.since + dwell
    if not waiting and now >= settled:
        return RetireStep(True, f"every address presented the new key on {probes} probes over "
                                f"{dwell.total_seconds():g} s")
    if waiting:
        return RetireStep(False, f"the old key's TLSA records are retiring: {waiting[0]}", now + interval,
                          tuple(waiting))
    return RetireStep(False, f"the old key's TLSA records are retiring until {settled:%H:%M:%S} UTC", settled)

def points_for(hosts: Sequence[str], ports: Sequence[int], addresses: Mapping[str, Sequence[str]]) -> list[ProbePoint]:
    """Every (host, address, port) twice, with and without SNI: many senders send none on port 25 (RFC 7672
    requires SNI of DANE senders only)."""
    return [ProbePoint(host, address, port, sni) for host in dict.fromkeys(hosts)
            for address in dict.fromkeys(addresses.get(host, ())) for port in dict.fromkeys(ports)
            for sni in (True, False)]
