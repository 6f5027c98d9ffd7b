"""Every ACME request carries ``User-Agent: certkeeper/<version>`` (RFC 8555 section 6.1; Pebble 2.10 demands one)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from certkeeper import __version__, pki
from certkeeper.config import AcmeIssuerConfig
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.testbed.certs import TestCA


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A directory that is not a CA: it records the User-Agent of every request (no real CA shows headers)."""

    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("User-Agent", ""))
        base = f"https://{self.headers['Host']}"
        body = json.dumps({"newNonce": f"{base}/nonce", "newAccount": f"{base}/acct", "newOrder": f"{base}/order",
                           "meta": {"profiles": {"shortlived": "160 hours"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recording_directory(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    ca = TestCA("user agent test")
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    key_file, cert_file = ca.issue(["127.0.0.1"]).write(tmp_path, "https")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield f"https://127.0.0.1:{server.server_address[1]}/dir", ca_file, cert_file
    server.shutdown()
    server.server_close()


def test_directory_and_profile_requests_carry_certkeepers_user_agent(recording_directory: tuple[str, Path, Path],
                                                                      tmp_path: Path) -> None:
    url, ca_file, leaf_file = recording_directory
    issuer = AcmeIssuer(AcmeIssuerConfig(name="ua", directory=url, ca_bundle=ca_file, profile="shortlived",
                                         timeout=timedelta(seconds=10)), tmp_path)

    issuer.check_profile()  # the quick GET of config check
    certificate = pki.load_certificates(leaf_file.read_bytes())[0]
    issuer.renewal_window(certificate, pki.now_utc())  # the issuer's ACME network (no renewalInfo: no ARI)

    assert _Recorder.seen == [f"certkeeper/{__version__}"] * 2
