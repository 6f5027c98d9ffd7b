"""Ports: an http-01 port held by another certkeeper process is waited for (issue 21.6); the test bed's ports are
unique within a run and across concurrent runs (issue 21, "the test bed")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from certkeeper.errors import ChallengeFailed
from certkeeper.issuers.challenges import ChallengeAnswer, Http01Listeners, StandaloneHttp01
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.server import allocate_port
from tests.lifecycle_helpers import write_config


def hold_port(port: int, seconds: float) -> subprocess.Popen[str]:
    """Another process listening on ``port`` for ``seconds``: what a second `certkeeper renew` validating
    another certificate does."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import socket, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port}))
        s.listen()
        print("listening", flush=True)
        time.sleep({seconds})
        """)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "listening\n"
    return process


def stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    assert process.stdout is not None
    process.stdout.close()


def test_an_http01_port_held_by_another_process_is_waited_for() -> None:
    port = allocate_port()
    holder = hold_port(port, 1.0)
    try:
        answer = ChallengeAnswer("mail.example.test", "tok", "tok.thumb")
        with StandaloneHttp01("127.0.0.1", port, Http01Listeners(), wait=30).published([answer]):
            assert holder.poll() is not None  # bound only once the other process let go
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/acme-challenge/tok", timeout=5) as r:
                assert r.read() == b"tok.thumb"
    finally:
        stop(holder)


def test_a_port_held_past_the_wait_is_reported_with_the_wait() -> None:
    port = allocate_port()
    holder = hold_port(port, 30.0)
    try:
        with pytest.raises(ChallengeFailed, match=rf"cannot listen on 127.0.0.1:{port} for http-01 \(Address "
                                                  r"already in use for 0.3 s\)"):
            with StandaloneHttp01("127.0.0.1", port, Http01Listeners(), wait=0.3).published([]):
                pass
    finally:
        stop(holder)


def test_twenty_test_bed_ports_are_unique_here_and_across_two_processes() -> None:
    mine = [allocate_port() for _ in range(20)]
    assert len(set(mine)) == 20
    other = subprocess.run([sys.executable, "-c", "from certkeeper.testbed.server import allocate_port\n"
                            "print(' '.join(str(allocate_port()) for _ in range(20)))"],
                           capture_output=True, text=True, check=True, timeout=60)
    theirs = [int(p) for p in other.stdout.split()]
    assert len(set(theirs)) == 20 and not set(mine) & set(theirs)


@pytest.mark.testbed
def test_two_processes_renewing_two_http01_certificates_at_once_both_succeed(tmp_path: Path, pebble: Pebble) -> None:
    """`renew --force mail & renew --force other` (issue 21.6): the second process waits for the port."""
    trust = pebble.write_issuer_chain(tmp_path / "pebble-chain.pem")
    config = write_config(tmp_path, f"""
        [issuers.pebble]
        type = "acme"
        directory = "{pebble.directory_url}"
        ca_bundle = "{pebble.ca_file}"
        trust_roots = "{trust}"
        challenge = "http-01"
        http_address = "127.0.0.1"
        http_port = {pebble.http_port}
        timeout = "60s"

        [certificates.mail]
        issuer = "pebble"
        domains = ["mail.example.test"]

        [certificates.other]
        issuer = "pebble"
        domains = ["other.example.test"]
        """)
    for _ in range(2):
        runs = [subprocess.Popen([sys.executable, "-m", "certkeeper", "-c", str(config.path), "renew", "--force",
                                  name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for name in ("mail", "other")]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        assert not any("cannot listen" in output for output in outputs), outputs
