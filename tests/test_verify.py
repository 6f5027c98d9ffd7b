"""Where verification looks: every address of a name, and port 25 without SNI as sending MTAs connect."""

from __future__ import annotations

import socket

from certkeeper.renewal.verify import probe_points
from certkeeper.targets import parse_target


def test_a_name_expands_to_each_of_its_addresses() -> None:
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", 465, type=socket.SOCK_STREAM)}
    points = probe_points([parse_target("smtps://localhost:465")])
    assert {p.address for p in points} == expected
    assert all(p.sni for p in points)


def test_port_25_is_probed_with_and_without_sni() -> None:
    points = probe_points([parse_target("smtp://127.0.0.1:25")])
    assert [(p.address, p.sni) for p in points] == [("127.0.0.1", True), ("127.0.0.1", False)]
    assert points[1].describe() == "smtp://127.0.0.1:25 without SNI"


def test_an_unresolvable_name_is_kept_so_probing_reports_it() -> None:
    [point] = probe_points([parse_target("imaps://no-such-host.invalid:993")])
    assert point.address == ""
