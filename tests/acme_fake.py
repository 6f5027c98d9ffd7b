"""A misbehaving ACME CA on loopback, for what no real CA does on request (Pebble cannot be made to redirect its
directory to plain HTTP, send a list for a renewal window or garbage for a certificate chain).

Enough of RFC 8555 for the acme library to get from the directory to a downloaded chain: every POST is
accepted without looking at its JWS, authorizations are already valid, finalize issues at once.  ``mode``
picks one misbehaviour; ``plain_hits`` lists what reached the plain-HTTP twin a redirect or a URL points to.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certkeeper.testbed.certs import TestCA

ARI_ANSWERS: dict[str, object] = {
    "ari-list": {"suggestedWindow": [1, 2]},
    "ari-int": {"suggestedWindow": {"start": 5, "end": 6}},
    "ari-not-an-object": [],
    "ari-naive": {"suggestedWindow": {"start": "2026-12-01T00:00:00", "end": "2026-12-02T00:00:00"}},
}


class FakeAcme:
    def __init__(self, directory: Path, mode: str) -> None:
        self.mode = mode
        self.ca = TestCA("fake ACME CA")
        self.tls = TestCA("fake ACME TLS")
        self.ca_file = self.tls.write_cert(directory / "fake-acme-tls.pem")
        self.roots_file = self.ca.write_cert(directory / "fake-acme-roots.pem")
        server_key, server_cert = self.tls.issue(["127.0.0.1"]).write(directory, "fake-acme-server")
        self.plain_hits: list[str] = []
        self.issued = b""
        self.https = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(secure=True))
        self.plain = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(secure=False))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server_cert, server_key)
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        for server in (self.https, self.plain):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.https.server_port}/dir"

    def close(self) -> None:
        for server in (self.https, self.plain):
            server.shutdown()
            server.server_close()

    def _handler(self, *, secure: bool) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                if not secure:
                    fake.plain_hits.append(f"GET {self.path}")
                fake._get(self)

            def do_POST(self) -> None:
                if not secure:
                    fake.plain_hits.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fake._post(self)

        return Handler

    def _nonce(self) -> str:
        """A fresh base64url nonce (RFC 8555 section 6.5.1), but in the modes that answer with an unusable one.

        (``nonce{monotonic_ns}`` was base64url only for some lengths: 17 characters, on a machine up between 100 s
        and 17 minutes, is not, and every run there met the newNonce loop the mode ``nonce-not-base64`` tests.)
        """
        if self.mode == "nonce-not-base64":
            return "not*base64"
        if self.mode == "nonce-repeated":
            return "c2FtZS1ub25jZQ"
        return secrets.token_urlsafe(16)

    def _base(self) -> str:
        return f"https://127.0.0.1:{self.https.server_port}"

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: Any, content_type: str = "application/json",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Replay-Nonce", self._nonce())
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def _drip(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/pem-certificate-chain")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Replay-Nonce", self._nonce())
        handler.end_headers()
        try:
            for byte in data[:60]:  # 30 s
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up, as it should
            pass

    @staticmethod
    def _drip_headers(handler: BaseHTTPRequestHandler) -> None:
        """The status line, then a header a byte every half second (30 s): each read answers well within any
        timeout, and the answer never gets past its headers."""
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            for _ in range(60):
                handler.wfile.write(b"a")
                handler.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up, as it should
            pass

    def _directory(self) -> dict[str, Any]:
        base = self._base()
        directory: dict[str, Any] = {"newNonce": f"{base}/nonce", "newAccount": f"{base}/acct",
                                     "newOrder": f"{base}/order", "revokeCert": f"{base}/revoke",
                                     "keyChange": f"{base}/kc", "renewalInfo": f"{base}/ari", "meta": {}}
        if self.mode == "http-urls":
            plain = f"http://127.0.0.1:{self.plain.server_port}"
            directory = {k: v.replace(base, plain) if isinstance(v, str) else v for k, v in directory.items()}
        if self.mode == "no-new-nonce":
            del directory["newNonce"]
        return directory

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        path, mode = handler.path, self.mode
        if path == "/dir":
            if mode == "dir-redirect-http":
                return self._send(handler, 302, b"", headers=(("Location", f"http://127.0.0.1:{self.plain.server_port}"
                                                                           "/dir"),))
            if mode == "dir-list":
                return self._send(handler, 200, [1, 2, 3])
            if mode == "dir-header-drip":
                return self._drip_headers(handler)
            if mode == "dir-huge":
                return self._send(handler, 200, b'{"pad": "' + b"A" * (3 << 20) + b'"}')
            return self._send(handler, 200, self._directory())
        if path.startswith("/ari/"):
            return self._send(handler, 200, ARI_ANSWERS.get(mode, {}))
        if path == "/nonce":
            return self._send(handler, 200, b"", "application/octet-stream")
        return self._send(handler, 404, {"type": "urn:ietf:params:acme:error:malformed", "detail": path})

    def _post(self, handler: BaseHTTPRequestHandler) -> None:  # noqa: PLR0911 - an answer per path and mode
        path, mode, base = handler.path, self.mode, self._base()
        if path == "/acct":
            return self._send(handler, 201, {"status": "valid"}, headers=(("Location", f"{base}/acct/1"),))
        if path == "/order":
            if mode == "order-500":
                return self._send(handler, 500, b"<html><body>Internal Server Error</body></html>", "text/html")
            order = {"status": "ready", "identifiers": [{"type": "dns", "value": "mail.example.test"}],
                     "authorizations": [f"{base}/authz/1"], "finalize": f"{base}/finalize/1"}
            return self._send(handler, 201, order, headers=(("Location", f"{base}/order/1"),))
        if path == "/authz/1":
            return self._send(handler, 200, {"status": "valid", "challenges": [],
                                             "identifier": {"type": "dns", "value": "mail.example.test"}})
        if path == "/order/1":
            return self._send(handler, 200, {"status": "ready", "identifiers": [], "finalize": f"{base}/finalize/1",
                                             "authorizations": [f"{base}/authz/1"]})
        if path == "/finalize/1":
            if mode == "final-error-string":
                return self._send(handler, 200, {"status": "invalid", "error": "boom", "identifiers": [],
                                                 "authorizations": [], "finalize": f"{base}/finalize/1"})
            leaf = self.ca.issue(["mail.example.test"], not_after=datetime.now(UTC) + timedelta(days=30))
            self.issued = leaf.certificate.public_bytes(serialization.Encoding.PEM) + \
                self.ca.certificate.public_bytes(serialization.Encoding.PEM)
            return self._send(handler, 200, {"status": "valid", "certificate": f"{base}/cert/1", "identifiers": [],
                                             "authorizations": [], "finalize": f"{base}/finalize/1"})
        if path == "/cert/1":
            chain = "application/pem-certificate-chain"
            if mode == "cert-garbage":
                return self._send(handler, 200, b"this is not a certificate\n", chain)
            if mode == "cert-huge":
                return self._send(handler, 200, self.issued + b"A" * (3 << 20), chain)
            if mode == "cert-drip":  # a byte every half second: each read answers well within any timeout
                return self._drip(handler, self.issued)
            return self._send(handler, 200, self.issued, chain)
        return self._send(handler, 404, {"type": "urn:ietf:params:acme:error:malformed", "detail": path})


def certificate_of(fake: FakeAcme) -> x509.Certificate:
    """A certificate as this CA would have issued it (for ARI's certificate identifier)."""
    return fake.ca.issue(["mail.example.test"]).certificate
