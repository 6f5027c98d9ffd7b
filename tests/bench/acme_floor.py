"""The floor of ACME issuance for issue 23: the ``acme`` library in one process, one order after another.

Run by :mod:`tests.bench.bench_issue_lego` as ``python -m tests.bench.acme_floor DIRECTORY CA_FILE HTTP_PORT
NAME...``: register an account, then for each name an order, its http-01 challenge answered by a bare HTTP
server in this process, polling every 5 ms, finalize, download.  Only the libraries it needs are imported
(acme, josepy, cryptography): interpreter start and those imports are part of the floor, as they are of
``certkeeper renew``.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FLOOR_POLL = 0.005  # issue 23: the floor polls every 5 ms


def _csr(domain: str) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))


class _Tokens(http.server.BaseHTTPRequestHandler):
    answers: dict[str, str] = {}

    def do_GET(self) -> None:
        body = self.answers.get(self.path.rsplit("/", 1)[-1], "").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _poll(acme: client.ClientV2, url: str, done: Any) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = acme._post_as_get(url).json()
        if done(body):
            return body
        time.sleep(FLOOR_POLL)


def floor_child(directory_url: str, ca_file: str, http_port: int, domains: Sequence[str]) -> None:
    """The floor, in its own process: register, then one order after another through the acme library."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _Tokens)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True).start()
    key = jose.jwk.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # requests takes a CA bundle path for verify; the library's annotation says bool only
    net = client.ClientNetwork(key, alg=jose.jwa.ES256, verify_ssl=ca_file, user_agent="floor")  # type: ignore[arg-type]
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
    try:
        acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    except errors.ConflictError as existing:
        net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
    for domain in domains:
        request = _csr(domain)
        order = acme.new_order(request.public_bytes(serialization.Encoding.PEM))
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = next(c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01))
            _Tokens.answers[challenge.chall.encode("token")] = challenge.chall.validation(key)
            acme.answer_challenge(challenge, challenge.chall.response(key))
            time.sleep(FLOOR_POLL)
            _poll(acme, authorization.uri, lambda b: b["status"] != "pending")
        _poll(acme, order.uri, lambda b: b["status"] != "pending")
        acme._post(order.body.finalize, messages.CertificateRequest(csr=request))
        time.sleep(FLOOR_POLL)
        body = _poll(acme, order.uri, lambda b: b["status"] not in ("ready", "processing"))
        if body["status"] != "valid":
            msg = f"floor: order for {domain} ended {body['status']}"
            raise SystemExit(msg)
        acme._post_as_get(body["certificate"])
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    if len(sys.argv) < 5:
        msg = "usage: python -m tests.bench.acme_floor DIRECTORY CA_FILE HTTP_PORT NAME..."
        raise SystemExit(msg)
    floor_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
