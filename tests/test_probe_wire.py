"""The probe's connection (certkeeper.probe.wire), where its callbacks differ from streams: a socket given up at
the deadline leaves nothing registered with the event loop, a bug in a callback is reported at once, and what the
socket does not take is sent later.  The servers are real loopback sockets; the dialects, hostile servers and
results are in test_probe_servers and test_probe_hostile."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from certkeeper.cli.check import _write_json_array
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.probe import wire as wire_module
from certkeeper.probe.conversation import Progress
from certkeeper.targets import parse_target
from tests.probe_servers import NOW, Pki, ServerLoop, _hold, smtp_server


@pytest.fixture
def unanswered() -> Iterator[int]:
    """A port whose listen queue is full: a connect to it waits for ever (the SYN is dropped)."""
    with socket.socket() as listener, socket.socket() as holder:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        holder.connect(listener.getsockname())  # takes the queue's one place; never accepted
        yield int(listener.getsockname()[1])


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_sockets_given_up_at_the_deadline_leave_nothing_behind(servers: ServerLoop, pki: Pki, unanswered: int,
                                                               silent: int) -> None:
    """Probes cut off while connecting (a writer registered) and in the dialogue (a reader) are followed, in the
    same loop, by probes whose sockets take the freed descriptor numbers: a registration left behind would make
    those fail (asyncio refuses a descriptor it still holds, or hands its events to the old callback)."""
    good = servers.serve(smtp_server(pki.context(pki.leaf("mail.test"))))
    texts = [f"smtp://127.0.0.1:{unanswered}", f"smtp://127.0.0.1:{silent}"] * 2 + [f"smtp://127.0.0.1:{good}"] * 6
    options = ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=0.5)
    results = probe_sync([parse_target(text) for text in texts], options, now=NOW, concurrency=2)
    cut_off = [result.findings[0] for result in results[:4]]
    assert [finding.code for finding in cut_off] == ["timeout"] * 4, cut_off
    assert "connecting" in cut_off[0].message and "never spoke" in cut_off[1].message, cut_off
    assert [result.status for result in results[4:]] == ["OK"] * 6, [r.findings for r in results[4:]]


def test_an_ipv6_literal_and_a_host_name_are_connected_to(servers: ServerLoop, pki: Pki) -> None:
    """An address literal is connected to without a lookup, IPv6 too; a name is looked up (localhost: the hosts
    file, no DNS), and where it asks is what the lines name."""
    context = pki.context(pki.leaf("mail.test"))

    async def start() -> asyncio.Server:
        return await asyncio.start_server(_hold, "::1", 0, ssl=context)

    server = asyncio.run_coroutine_threadsafe(start(), servers.loop).result(5)
    servers.servers.append(server)
    v6 = int(server.sockets[0].getsockname()[1])
    v4 = servers.serve(_hold, context)
    options = ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=5)
    results = probe_sync([parse_target(f"smtps://[::1]:{v6}"), parse_target(f"smtps://localhost:{v4}")], options,
                         now=NOW)
    assert [result.status for result in results] == ["OK", "OK"], [result.findings for result in results]
    with socket.socket(socket.AF_INET6) as closed:
        closed.bind(("::1", 0))
        refused = closed.getsockname()[1]
    result = probe_sync([parse_target(f"smtps://[::1]:{refused}")], options, now=NOW)[0]
    assert result.findings[0].code == "connection-failed", result.findings
    assert result.message.endswith(f"cannot connect to [::1]:{refused}: Connection refused"), result.message


def test_a_bug_in_a_callback_is_an_internal_error_at_once(servers: ServerLoop, pki: Pki,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in certkeeper's own code inside an event-loop callback ends the probe as UNKNOWN, as one in
    a coroutine does, instead of leaving the future unresolved until the deadline."""
    port = servers.serve(smtp_server(pki.context(pki.leaf("mail.test"))))

    def broken(sockname: object) -> str:
        msg = "a bug"
        raise RuntimeError(msg)

    monkeypatch.setattr(wire_module, "ehlo_name", broken)
    options = ProbeOptions(ca_file=pki.ca_file, servername="mail.test", timeout=10)
    result = probe_sync([parse_target(f"smtp://127.0.0.1:{port}")], options, now=NOW)[0]
    assert result.status == "UNKNOWN" and result.findings[0].code == "internal-error", result.findings
    assert "a bug" in result.message
    assert result.elapsed_ms < 5000


def test_what_the_socket_does_not_take_now_is_sent_when_it_can() -> None:
    """A send larger than the socket's buffers while the server is not reading: the rest goes out in order once
    it reads, and a failure to send later is the fetch's failure, not a lost write."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        data = bytes(range(256)) * 40_000  # 10 MB: more than loopback's buffers hold
        ehlo = b"EHLO [127.0.0.1]\r\n"  # the dialogue's own first line, sent before
        received = bytearray()

        def server() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"220 ready\r\n")
                threading.Event().wait(0.3)  # not reading yet: the client's send stops short
                while len(received) < len(ehlo) + len(data):
                    chunk = connection.recv(1 << 20)
                    if not chunk:
                        break
                    received.extend(chunk)

        thread = threading.Thread(target=server, daemon=True)
        thread.start()

        async def run() -> bool:
            loop = asyncio.get_running_loop()
            addresses = wire_module.numeric_addresses("127.0.0.1", port)
            assert addresses is not None
            wire = wire_module.Wire(loop, addresses, where="test", dialect="smtp", key_type=None, server_name=None,
                                    context=wire_module.client_context(None), progress=Progress())
            while wire._sock is None or not wire.progress.received:  # the greeting read: the dialogue has begun
                await asyncio.sleep(0.01)
            assert wire._send(data)
            stopped_short = bool(wire._pending)
            for _ in range(1000):
                if not wire._pending:
                    break
                await asyncio.sleep(0.01)
            wire.close()
            return stopped_short

        assert asyncio.run(run()), "the socket took 10 MB at once: the test did not reach the deferred send"
        thread.join(10)
        assert bytes(received) == ehlo + data


def test_a_long_json_array_is_written_whole_in_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    """--json's array, one object per line, whatever the number of writes it takes."""
    objects = [{"target": f"smtps://host-{index}.test:465", "padding": "x" * 700} for index in range(300)]
    _write_json_array(objects)
    output = capsys.readouterr().out
    assert json.loads(output) == objects
    lines = output.splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == objects
    _write_json_array([])
    assert json.loads(capsys.readouterr().out) == []
