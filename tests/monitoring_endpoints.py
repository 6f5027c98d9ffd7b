"""The endpoints the monitoring parity tests probe with certkeeper and with the tools people already run.

Good, expiring, expired, wrong host, untrusted, missing-intermediate and SHA-1-signed certificates on small implicit-TLS
servers of our own (real TLS, real certificates), and real Postfix (STARTTLS on its 25 and 587 listeners,
465) and Dovecot (IMAP STARTTLS, IMAPS) with their seed certificates.  Every certificate names
``mail.example.test``; every trusted one chains to a root in :attr:`Endpoints.ca_file`.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.postfix import Postfix
from tests.probe_servers import Pki, ServerLoop, _hold

HOST = "mail.example.test"


@dataclass(frozen=True)
class Endpoint:
    label: str
    port: int
    protocol: str  # check_ssl_cert's -P
    exit_code: int  # with -w 20 -c 15, asserted too: two tools agreeing on a wrong answer must not pass

    @property
    def verifies(self) -> bool:
        """A handshake verified against the roots and the name: what blackbox calls probe_success."""
        return self.exit_code < 2 or self.label.startswith("expiring")

    @property
    def certkeeper_target(self) -> str:
        return f"{self.protocol}://127.0.0.1:{self.port}"

    @property
    def blackbox_module(self) -> str:
        return {"smtp": "smtp_starttls", "imap": "imap_starttls"}.get(self.protocol, "tls")


@dataclass(frozen=True)
class Endpoints:
    items: tuple[Endpoint, ...]
    ca_file: Path


def sha1_signed(directory: Path) -> tuple[Path, Path, Path]:
    """(root, leaf, key): a leaf for HOST signed with SHA-1 by a root of its own.  Made with the openssl command
    because cryptography refuses to sign with SHA-1 at all."""
    directory.mkdir()
    (directory / "ext").write_text(f"subjectAltName=DNS:{HOST}\nextendedKeyUsage=serverAuth\n"
                                   "basicConstraints=critical,CA:FALSE\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj",
         "/CN=SHA-1 Test Root", "-days", "3650", "-sha256", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "leaf.pem", "-days", "90", "-sha1", "-extfile", "ext"],
    ):
        subprocess.run(["openssl", *command], cwd=directory, capture_output=True, check=True, timeout=60)
    return directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"


@pytest.fixture(scope="module")
def mail_endpoints(tmp_path_factory: pytest.TempPathFactory, testbed_ca: TestCA) -> Iterator[Endpoints]:
    directory = tmp_path_factory.mktemp("endpoints")
    pki = Pki.create(directory)
    (directory / "other").mkdir()
    stranger = Pki.create(directory / "other", name="Unknown Root")
    sha1_root, sha1_leaf, sha1_key = sha1_signed(directory / "sha1")
    ca_file = directory / "roots.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes() + testbed_ca.cert_pem + sha1_root.read_bytes())
    sha1_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sha1_context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL refuses to serve a SHA-1 certificate above level 0
    sha1_context.load_cert_chain(sha1_leaf, sha1_key)
    loop = ServerLoop()
    postfix = Postfix(directory / "postfix", ca=testbed_ca)
    dovecot = Dovecot(directory / "dovecot", ca=testbed_ca)
    try:
        def serve(**leaf: object) -> int:
            with_chain = bool(leaf.pop("with_chain", True))
            names = leaf.pop("names", (HOST,))
            issuer = leaf.pop("pki", pki)
            assert isinstance(issuer, Pki) and isinstance(names, tuple)
            return loop.serve(_hold, issuer.context(issuer.leaf(*names, **leaf),  # type: ignore[arg-type]
                                                    with_chain=with_chain))

        items = [
            Endpoint("good", serve(), "smtps", 0),
            Endpoint("expiring (warning)", serve(days_before=70, days_after=18), "smtps", 1),
            Endpoint("expiring (critical)", serve(days_before=80, days_after=10), "smtps", 2),
            Endpoint("expired", serve(days_before=100, days_after=-1), "smtps", 2),
            Endpoint("wrong host", serve(names=("other.example.test",)), "smtps", 2),
            Endpoint("untrusted", serve(pki=stranger), "smtps", 2),
            Endpoint("missing intermediate", serve(with_chain=False), "smtps", 2),
            Endpoint("signed with SHA-1", loop.serve(_hold, sha1_context), "smtps", 2),
        ]
        postfix.start()
        dovecot.start()
        items += [
            Endpoint("postfix STARTTLS (25)", postfix.ports["smtp"], "smtp", 0),
            Endpoint("postfix STARTTLS (587)", postfix.ports["submission"], "smtp", 0),
            Endpoint("postfix 465", postfix.ports["submissions"], "smtps", 0),
            Endpoint("dovecot IMAP STARTTLS", dovecot.ports["imap"], "imap", 0),
            Endpoint("dovecot IMAPS", dovecot.ports["imaps"], "imaps", 0),
        ]
        yield Endpoints(tuple(items), ca_file)
    finally:
        dovecot.stop()
        postfix.stop()
        loop.close()
