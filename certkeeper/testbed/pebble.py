"""Pebble, Let's Encrypt's ACME test server, 2.10 from Debian testing: profiles, ARI, dns-persist-01, dns-account-01.

Pebble ships no certificate for its own HTTPS, so each instance makes a throwaway CA
(:attr:`Pebble.ca_file`) and a certificate for 127.0.0.1 and localhost. Clients must trust that
file instead of the system bundle: this machine sets ``REQUESTS_CA_BUNDLE`` globally, hence
:meth:`Pebble.client_env`.

Pebble keeps everything in memory and makes a new root and intermediate at every start: after
:meth:`Pebble.restart` accounts, orders and the issuing chain are gone; fetch the chain again
with :meth:`Pebble.fetch_issuer_chain`.

Profiles (``meta.profiles``): Pebble 2.10 ignores the old ``certificateValidityPeriod`` and takes
``profiles`` with a ``validityPeriod`` each. An order without a profile gets one picked at random
("in true Pebble chaos fashion", wfe.go), so an instance offers :data:`TODAYS_PROFILES` only when
asked (``profiles=TODAYS_PROFILES``); by default it has the one profile ``default`` (90 days, or
``validity_seconds``) and every certificate's lifetime is known. Pebble 2.10 answers any request
without a User-Agent with ``malformed``; :meth:`Pebble.fetch` sends one.

:meth:`Pebble.count_orders` counts the orders Pebble accepted, so a test can prove none was placed.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.install import pebble_binary
from certkeeper.testbed.server import LOOPBACK, Server, allocate_port, spawn, terminate, wait_until
from certkeeper.values import frozen


@frozen
class Profile:
    """One of Pebble's certificate profiles: what its directory says of it and the lifetime it issues."""

    description: str
    validity_seconds: int


DAY = 86400
# Let's Encrypt's profiles of 2026: the classic 90 days, tlsserver's 45 days, shortlived's 160 hours.
TODAYS_PROFILES: Mapping[str, Profile] = {
    "default": Profile("90-day certificates", 90 * DAY),
    "tlsserver": Profile("45-day certificates for TLS servers", 45 * DAY),
    "shortlived": Profile("160-hour certificates", 160 * 3600),
}
USER_AGENT = "certkeeper-testbed"


def finds_by_ari(serial: int) -> bool:
    """Whether Pebble 2.10 finds the certificate with ``serial`` by its ARI identifier (RFC 9773 section 4.1): not
    when the serial's DER content octets start with the zero byte a set top bit needs, since Pebble keys serials
    without it (and answers 500 for the one in 256 of its own certificates that have one)."""
    return serial.bit_length() % 8 != 0


class Pebble(Server):
    """One Pebble process with its own HTTPS CA, validating against :attr:`http_port`."""

    name = "Pebble"

    def __init__(
        self,
        directory: Path,
        *,
        bind: Bind | None = None,
        nonce_reject_percent: int | None = None,
        validity_seconds: int | None = None,
        profiles: Mapping[str, Profile] | None = None,
        caa_identities: tuple[str, ...] = ("pebble.letsencrypt.org",),
        eab_keys: Mapping[str, str] | None = None,
        binary: Path | None = None,
        start_timeout: float = 15.0,
        retry_after: int = 0,
    ) -> None:
        """Configure an instance; nothing runs until :meth:`start`.

        ``bind``: the DNS server Pebble resolves names with (``-dnsserver``); without it Pebble
        uses the system resolver, which knows nothing of ``example.test``.
        ``nonce_reject_percent``: share of good nonces rejected as ``badNonce`` (Pebble's default
        is 5; keep it, clients must retry). ``validity_seconds``: lifetime of issued certificates (the one
        ``default`` profile). ``profiles``: name -> :class:`Profile` instead (e.g. :data:`TODAYS_PROFILES`).
        ``caa_identities``: the issuer domain names of the CA (CAA, dns-persist-01's issuer-domain-name).
        ``eab_keys``: key ID -> base64url HMAC key; when given, external account binding is required.
        ``retry_after``: the seconds of the ``Retry-After`` Pebble sends with a pending authorization and a
        processing order (0: none; clients honour it, so the suite would pay it on every order).
        """
        super().__init__(directory)
        self.bind = bind
        self.nonce_reject_percent = nonce_reject_percent
        self.validity_seconds = validity_seconds
        if profiles is not None and validity_seconds is not None:
            msg = "give profiles or validity_seconds, not both"
            raise ValueError(msg)
        self.profiles = dict(profiles or {"default": Profile("the one profile", validity_seconds or 90 * DAY)})
        self.caa_identities = caa_identities
        self.eab_keys = dict(eab_keys or {})
        self.binary = binary or pebble_binary()
        self.start_timeout = start_timeout
        self.retry_after = retry_after
        self.ca_file = self.directory / "ca.pem"
        self.config_file = self.directory / "pebble-config.json"
        self.port = 0
        self.management_port = 0
        self.http_port = 0
        self.tls_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        ca = TestCA("certkeeper test CA for Pebble's HTTPS")
        ca.write_cert(self.ca_file)
        self._key_file, self._cert_file = ca.issue(["127.0.0.1", "localhost"]).write(self.directory, "https")

    @property
    def log_path(self) -> Path:
        return self.directory / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{LOOPBACK}:{self.management_port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that make HTTPS clients trust this Pebble and nothing else.

        Overrides the machine-wide ``REQUESTS_CA_BUNDLE`` (requests, and so the acme library)
        and ``SSL_CERT_FILE`` (Python's default context, urllib, curl via openssl).
        """
        return {"REQUESTS_CA_BUNDLE": str(self.ca_file), "SSL_CERT_FILE": str(self.ca_file)}

    def ssl_context(self) -> ssl.SSLContext:
        """A client context verifying Pebble's HTTPS against :attr:`ca_file` only."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def fetch(self, url: str) -> bytes:
        """GET ``url`` from Pebble over verified HTTPS (with a User-Agent: Pebble 2.10 refuses requests without)."""
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=5) as response:
            body: bytes = response.read()
            return body

    def fetch_directory(self) -> dict[str, object]:
        """The ACME directory object (RFC 8555 section 7.1.1)."""
        directory: dict[str, object] = json.loads(self.fetch(self.directory_url))
        return directory

    def fetch_issuer_chain(self) -> bytes:
        """The current intermediate and root (PEM), from the management API.

        Pebble makes new ones at every start, so fetch again after :meth:`restart`.
        """
        return self.fetch(f"{self.management_url}/intermediates/0") + self.fetch(f"{self.management_url}/roots/0")

    def count_orders(self) -> int:
        """How many orders this Pebble accepted, from every account, since it was first started."""
        # Pebble logs each order it stores (wfe.go: "Added order ... to the db"); its order listing needs a
        # signed request by the account, which a test that proves no order was placed may not have.
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines()
                   if "Added order" in line)

    def write_issuer_chain(self, path: Path) -> Path:
        """Write :meth:`fetch_issuer_chain` to ``path``: a trust file for certificates Pebble issued."""
        path.write_bytes(self.fetch_issuer_chain())
        return path

    def _allocate_ports(self) -> None:
        self.port = allocate_port()
        self.management_port = allocate_port()
        # Not listened on by Pebble: the ports it connects to when validating challenges.
        self.http_port = allocate_port()
        self.tls_port = allocate_port()

    def _write_config(self) -> None:
        settings: dict[str, object] = {
            "listenAddress": f"{LOOPBACK}:{self.port}",
            "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
            "certificate": str(self._cert_file),
            "privateKey": str(self._key_file),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
            "retryAfter": {"authz": self.retry_after, "order": self.retry_after},
        }
        if self.eab_keys:
            settings["externalAccountMACKeys"] = self.eab_keys
        settings["caaIdentities"] = list(self.caa_identities)
        settings["profiles"] = {name: {"description": profile.description,
                                       "validityPeriod": profile.validity_seconds}
                                for name, profile in self.profiles.items()}
        self.config_file.write_text(json.dumps({"pebble": settings}, indent=2))

    def _environment(self) -> dict[str, str]:
        environment = {**os.environ, "PEBBLE_VA_NOSLEEP": "1"}
        if self.nonce_reject_percent is not None:
            environment["PEBBLE_WFE_NONCEREJECT"] = str(self.nonce_reject_percent)
        return environment

    def _answers(self) -> bool:
        try:
            self.fetch(self.directory_url)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def _launch(self) -> None:
        if not self.binary.is_file():
            msg = f"no Pebble binary at {self.binary}; run python3 -m certkeeper.testbed.install"
            raise self.fail(msg)
        self._write_config()
        command = [str(self.binary), "-config", str(self.config_file)]
        if self.bind is not None:
            command += ["-dnsserver", self.bind.nameserver]
        self._process = spawn(command, self.log_path, cwd=self.directory, env=self._environment())
        process = self._process
        if not wait_until(self._answers, timeout=self.start_timeout, alive=lambda: process.poll() is None):
            msg = f"no ACME directory at {self.directory_url}"
            raise self.fail(msg)

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None
