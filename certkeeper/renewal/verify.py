"""Verification from the outside: is the installed certificate what every endpoint really serves?

"Every" means every address the host name resolves to (IPv4 and IPv6), and port 25 both with and without SNI,
because sending MTAs connect without it.  The probe does the TLS work; this module decides where to look and
waits, with a deadline, until each place serves the expected fingerprints.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from certkeeper.targets import Target
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.probe import ProbeResult

POLL_INTERVAL = 0.5


@frozen
class ProbePoint:
    """One place a client may land: an endpoint, one of its addresses, with or without SNI."""

    target: Target
    address: str
    sni: bool = True

    def describe(self) -> str:
        where = self.target.text
        if self.address and self.address != self.target.host:
            where += f" at {self.address}"
        return where + ("" if self.sni else " without SNI")


@frozen
class Seen:
    """What one probe point served."""

    point: ProbePoint
    fingerprints: frozenset[str]
    status: str
    message: str

    def describe(self) -> str:
        if not self.fingerprints:
            return f"{self.point.describe()}: {self.message}"
        shown = ", ".join(sorted(f[:16] for f in self.fingerprints))
        return f"{self.point.describe()}: serves {shown}"


def probe_points(targets: Sequence[Target]) -> list[ProbePoint]:
    """Expand endpoints into the places clients reach; unresolvable names stay, and fail when probed."""
    points: list[ProbePoint] = []
    for target in targets:
        for address in _addresses(target):
            points.append(ProbePoint(target, address))
            if target.port == 25:
                points.append(ProbePoint(target, address, sni=False))
    return points


def _addresses(target: Target) -> list[str]:
    if target.is_ip_literal:
        return [target.host]
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        return [""]  # probing without an address resolves again and reports the failure in words
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _served(result: ProbeResult) -> frozenset[str]:
    summaries = result.served or ((result.certificate,) if result.certificate else ())
    return frozenset(s.fingerprint_sha256 for s in summaries)


async def look(points: Sequence[ProbePoint], *, dual: bool, timeout: float, now: datetime) -> list[Seen]:
    """One round: what every point serves right now."""
    # Here, not at the top: an install with no endpoints to verify loads neither the prober nor asyncio (startup
    # is measured, issue 23).
    import asyncio

    from certkeeper.probe import ProbeOptions, probe_target

    options = ProbeOptions(timeout=timeout, key_type="all" if dual else None)
    without_sni = ProbeOptions(timeout=timeout, key_type="all" if dual else None, sni=False)

    async def one(point: ProbePoint) -> Seen:
        result = await probe_target(point.target, options if point.sni else without_sni, now=now,
                                    address=point.address or None)
        return Seen(point, _served(result), result.status, result.message)

    return list(await asyncio.gather(*(one(p) for p in points)))


@frozen
class Verification:
    ok: bool
    seen: tuple[Seen, ...]

    def wrong(self, expected: frozenset[str]) -> list[Seen]:
        return [s for s in self.seen if not expected <= s.fingerprints]


async def wait_until_served(points: Sequence[ProbePoint], expected: frozenset[str], *, dual: bool,
                            deadline: float, clock: Callable[[], datetime],
                            monotonic: Callable[[], float] = time.monotonic) -> Verification:
    """Probe until every point serves all of ``expected`` or ``deadline`` seconds pass; the last round wins."""
    if not points:
        return Verification(True, ())
    end = monotonic() + deadline
    while True:
        remaining = max(1.0, end - monotonic())
        seen = await look(points, dual=dual, timeout=min(10.0, remaining), now=clock())
        if all(expected <= s.fingerprints for s in seen):
            return Verification(True, tuple(seen))
        if monotonic() + POLL_INTERVAL >= end:
            return Verification(False, tuple(seen))
        import asyncio  # see look()

        await asyncio.sleep(POLL_INTERVAL)
