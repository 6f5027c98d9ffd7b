"""Reports POSTed over HTTPS, answered as RFC 8460 section 5.4 asks; hostile bodies refused, the endpoint stays up."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper.errors import ReportRefused, ReportSourceFailed, StoreError
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.server import wait_until
from certkeeper.tlsrpt.http import MAX_CONNECTIONS, ReportEndpoint, start_report_endpoint
from certkeeper.tlsrpt.report import TlsReport
from tests.tlsrpt_reports import RFC_EXAMPLE, encode, every_result_type, gzip_bomb, gzipped


class Received:
    def __init__(self) -> None:
        self.reports: dict[str, TlsReport] = {}
        self.refused: list[str] = []

    def accept(self, report: TlsReport, where: str) -> bool:
        new = report.report_id not in self.reports
        self.reports.setdefault(report.report_id, report)
        return new

    def refuse(self, refusal: ReportRefused) -> None:
        self.refused.append(str(refusal))


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("certkeeper test CA for the TLS report endpoint")


@pytest.fixture
def endpoint(tmp_path: Path, ca: TestCA) -> Iterator[tuple[ReportEndpoint, Received, ssl.SSLContext]]:
    key_file, cert_file = ca.issue(["127.0.0.1", "localhost"]).write(tmp_path, "endpoint")
    received = Received()
    running = start_report_endpoint("127.0.0.1", 0, cert_file, key_file, received.accept, received.refuse)
    client = ssl.create_default_context(cafile=str(ca.write_cert(tmp_path / "ca.pem")))
    yield running, received, client
    running.stop()


def post(endpoint: tuple[ReportEndpoint, Received, ssl.SSLContext], body: bytes,
         media_type: str = "application/tlsrpt+gzip", method: str = "POST") -> tuple[int, str]:
    running, _, context = endpoint
    connection = http.client.HTTPSConnection("127.0.0.1", running.port, context=context, timeout=30)
    try:
        connection.request(method, "/tlsrpt", body=body, headers={"Content-Type": media_type})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_a_report_is_stored_201_and_a_retry_answered_200(endpoint: tuple[ReportEndpoint, Received,
                                                                        ssl.SSLContext]) -> None:
    assert post(endpoint, gzipped(RFC_EXAMPLE)) == (201, f"report {RFC_EXAMPLE['report-id']} stored\n")
    assert post(endpoint, encode(RFC_EXAMPLE), "application/tlsrpt+json") == (
        200, f"report {RFC_EXAMPLE['report-id']} was already stored\n")
    for document in every_result_type():
        assert post(endpoint, gzipped(document))[0] == 201
    assert len(endpoint[1].reports) == 1 + len(every_result_type())


@pytest.mark.parametrize(("body", "media_type", "status", "text"), [
    (gzip_bomb(1), "application/tlsrpt+gzip", 400, "inflates to more than 20,971,520 bytes"),
    (gzipped(RFC_EXAMPLE)[:60], "application/tlsrpt+gzip", 400, "truncated gzip"),
    (b"[" * 100_000, "application/tlsrpt+json", 400, "nested too deeply"),
    (b'{"report-id": 5}', "application/tlsrpt+json", 400, "$.date-range: missing"),
    (b"\xff\xfe{}", "application/tlsrpt+json", 400, "not UTF-8"),
    (encode(RFC_EXAMPLE), "application/json", 415, "expected Content-Type application/tlsrpt+gzip"),
])
def test_hostile_bodies_are_refused_and_the_endpoint_keeps_serving(
        endpoint: tuple[ReportEndpoint, Received, ssl.SSLContext], body: bytes, media_type: str, status: int,
        text: str) -> None:
    answer = post(endpoint, body, media_type)
    assert answer[0] == status and text in answer[1]
    assert post(endpoint, gzipped(RFC_EXAMPLE))[0] == 201


def test_a_100_mb_body_is_refused_413_before_it_is_sent(endpoint: tuple[ReportEndpoint, Received,
                                                                        ssl.SSLContext]) -> None:
    running, received, context = endpoint
    with socket.create_connection(("127.0.0.1", running.port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/tlsrpt+json\r\n"
                    b"Content-Length: 104857600\r\n\r\n")
        chunks = []
        while chunk := tls.recv(4096):  # the server closes after a refusal
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 413 ")
    assert "104,857,600 bytes of application/tlsrpt+json, more than the 20,971,520 accepted" in answer
    assert received.refused and "104,857,600 bytes" in received.refused[-1]


def test_other_methods_are_told_to_post(endpoint: tuple[ReportEndpoint, Received, ssl.SSLContext]) -> None:
    assert post(endpoint, b"", method="GET")[0] == 405


def raw_post(endpoint: tuple[ReportEndpoint, Received, ssl.SSLContext], head: bytes) -> str:
    running, _, context = endpoint
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(head)
        chunks = []
        while chunk := tls.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_body_without_a_length_is_refused(endpoint: tuple[ReportEndpoint, Received, ssl.SSLContext]) -> None:
    chunked = raw_post(endpoint, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/tlsrpt+json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
    assert chunked.startswith("HTTP/1.1 411 ") and "a Content-Length is required" in chunked


def test_a_store_that_fails_answers_503_so_the_sender_retries(tmp_path: Path, ca: TestCA) -> None:
    key_file, cert_file = ca.issue(["127.0.0.1"]).write(tmp_path, "endpoint")

    def broken(report: TlsReport, where: str) -> bool:
        msg = "state.db: disk I/O error"
        raise StoreError(msg)

    running = start_report_endpoint("127.0.0.1", 0, cert_file, key_file, broken, Received().refuse)
    try:
        client = ssl.create_default_context(cafile=str(ca.write_cert(tmp_path / "ca.pem")))
        assert post((running, Received(), client), gzipped(RFC_EXAMPLE)) == (
            503, "the report could not be stored; please retry later\n")
    finally:
        running.stop()


def test_connections_beyond_the_limit_are_closed_at_once(endpoint: tuple[ReportEndpoint, Received,
                                                                         ssl.SSLContext]) -> None:
    running = endpoint[0]
    idle = [socket.create_connection(("127.0.0.1", running.port), timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        # Every slot is held by a client that never completes its handshake; one more is closed unanswered.
        extra = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        with extra:
            assert extra.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: post(endpoint, gzipped(RFC_EXAMPLE))[0] in (200, 201), timeout=30,
                      alive=lambda: True)


def test_a_certificate_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportSourceFailed, match=r"https://127\.0\.0\.1:0: cannot load the certificate "):
        start_report_endpoint("127.0.0.1", 0, tmp_path / "missing.pem", tmp_path / "missing.key",
                              Received().accept, Received().refuse)
