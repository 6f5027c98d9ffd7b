"""The HTTPS endpoint senders POST reports to (RFC 8460 section 5.4), usually behind the operator's reverse proxy.

Answers as the RFC asks: a report is ``POST``ed as ``application/tlsrpt+gzip`` or ``application/tlsrpt+json``,
and the receiver "MUST return a 'successful' response ... typically a 200 or 201"; other codes may make the sender
retry.  So: 201 for a report stored, 200 for one already stored (the sender retried; retrying again helps nobody),
400 with the reason for a report refused, 411/413/415 for a body without length, too big (refused unread), or of
another media type, 405 for any other method.  TLS is served with a certificate certkeeper manages, read again on
:meth:`ReportEndpoint.use_certificate` after each renewal.  Connections are bounded: each has a timeout, and at
most :data:`MAX_CONNECTIONS` are handled at once (more are closed at once).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from certkeeper import tls
from certkeeper.errors import ReportRefused, ReportSourceFailed
from certkeeper.tlsrpt.intake import GZIP_TYPE, JSON_TYPE, MAX_COMPRESSED_BYTES, read_body
from certkeeper.tlsrpt.report import MAX_JSON_BYTES, TlsReport

log = logging.getLogger("certkeeper.tlsrpt")

MAX_CONNECTIONS = 32
TIMEOUT = 15.0
_LIMITS = {GZIP_TYPE: MAX_COMPRESSED_BYTES, JSON_TYPE: MAX_JSON_BYTES}

# accept(report, where) -> True when it was new (201), False when already stored (200); may raise ReportRefused.
Accept = Callable[[TlsReport, str], bool]
Refused = Callable[[ReportRefused], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: tls.Context, accept: Accept, refused: Refused) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
        self.accept = accept
        self.refused = refused
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = self.socket.accept()
        sock.settimeout(TIMEOUT)
        # The handshake runs in the handler's thread (do_handshake_on_connect=False), so a client that never
        # completes one holds its own thread until the timeout, never the accepting loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), peer

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("TLS report endpoint: %d connections open, closing the one from %s", MAX_CONNECTIONS,
                        client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - socketserver's signature
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a failed handshake, a timeout, a client gone: theirs, not ours
            log.info("TLS report endpoint: connection from %s failed: %s", client_address[0], error)
        else:
            log.error("TLS report endpoint: connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "certkeeper-tlsrpt"
    sys_version = ""

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()

    def do_POST(self) -> None:
        media_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        where = f"POST {self.path} from {self.client_address[0]}"
        if media_type not in _LIMITS:
            self._answer(415, f"expected Content-Type {GZIP_TYPE} or {JSON_TYPE} (RFC 8460 section 5.4)")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._answer(411, "a Content-Length is required")
            return
        length = int(length_header)
        if length > _LIMITS[media_type]:
            self._refuse(413, ReportRefused(where, "", f"{length:,} bytes of {media_type}, more than the "
                                                       f"{_LIMITS[media_type]:,} accepted"))
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self._answer(400, f"the body ended after {len(body)} of {length} bytes")
            return
        try:
            report = read_body(body, media_type, where)
            new = self.server.accept(report, where)
        except ReportRefused as exc:
            self._refuse(400, exc)
            return
        except Exception:
            log.exception("TLS report endpoint: storing a report from %s failed", self.client_address[0])
            self._answer(503, "the report could not be stored; please retry later")
            return
        if new:
            self._answer(201, f"report {report.report_id} stored")
        else:
            self._answer(200, f"report {report.report_id} was already stored")

    def _refuse(self, status: int, refusal: ReportRefused) -> None:
        self.server.refused(refusal)
        self._answer(status, str(refusal), close=True)

    def do_GET(self) -> None:
        self._answer(405, "POST TLS reports here (RFC 8460 section 5.4)", allow=True)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _answer(self, status: int, text: str, *, allow: bool = False, close: bool = False) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", "POST")
        if close or status >= 400:
            # An unread body may follow a refusal: do not parse it as the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("TLS report endpoint: %s " + format, self.client_address[0], *args)


class ReportEndpoint:
    """A running endpoint; :meth:`stop` closes it and waits for its accepting thread."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def use_certificate(self, cert_file: Path, key_file: Path) -> None:
        """Serve another certificate from the next connection on (a renewal of the configured certificate)."""
        self._server.context = tls.server_context(cert_file, key_file)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def start_report_endpoint(host: str, port: int, cert_file: Path, key_file: Path, accept: Accept,
                          refused: Refused) -> ReportEndpoint:
    where = f"https://{host}:{port}"
    try:
        context = tls.server_context(cert_file, key_file)
    except (OSError, tls.TlsError) as exc:
        problem = f"cannot load the certificate {cert_file}: {exc}"
        raise ReportSourceFailed(where, problem) from None
    try:
        server = _Server((host, port), context, accept, refused)
    except OSError as exc:
        problem = f"cannot listen: {exc.strerror}"
        raise ReportSourceFailed(where, problem) from None
    thread = threading.Thread(target=server.serve_forever, name="tlsrpt-endpoint", daemon=True)
    thread.start()
    return ReportEndpoint(server, thread)
