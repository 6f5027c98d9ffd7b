"""BIND 9 as the authoritative server of a test zone, accepting TSIG-signed updates.

It answers for ``example.test.`` (every name in it is 127.0.0.1) on a loopback port, UDP and
TCP, so Pebble can resolve the names it validates and dns-01 tests can publish their TXT
records with RFC 2136 updates, signed with the TSIG key in :attr:`Bind.tsig_key_file`.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update

from certkeeper.testbed.server import LOOPBACK, Server, allocate_port, spawn, terminate, wait_until

NAMED = "/usr/sbin/named"


class Bind(Server):
    """``named -g`` in the foreground, authoritative for :attr:`zone`, recursion off."""

    name = "BIND"
    address = LOOPBACK

    def __init__(
        self,
        directory: Path,
        *,
        zone: str = "example.test.",
        tsig_key_name: str = "certkeeper-test.",
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory)
        self.zone = zone if zone.endswith(".") else zone + "."
        self.tsig_key_name = tsig_key_name
        self.tsig_algorithm = "hmac-sha256"
        self.tsig_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tsig_key_file = self.directory / "tsig.key"
        self.zone_file = self.directory / "zone.db"
        self.config_file = self.directory / "named.conf"
        self.port = 0
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:<port>``, the form Pebble's ``-dnsserver`` takes."""
        return f"{self.address}:{self.port}"

    def _allocate_ports(self) -> None:
        self.port = allocate_port(udp_too=True)

    def _write_config(self) -> None:
        self.tsig_key_file.write_text(
            f'key "{self.tsig_key_name}" {{\n'
            f"    algorithm {self.tsig_algorithm};\n"
            f'    secret "{self.tsig_secret}";\n}};\n'
        )
        self.tsig_key_file.chmod(0o600)
        # The journal (zone.db.jnl) of dynamic updates must start empty with a fresh zone file.
        self.zone_file.with_suffix(".db.jnl").unlink(missing_ok=True)
        self.zone_file.write_text(
            f"$ORIGIN {self.zone}\n"
            "$TTL 60\n"
            f"@ IN SOA ns1.{self.zone} hostmaster.{self.zone} 1 3600 600 86400 60\n"
            f"@ IN NS ns1.{self.zone}\n"
            "@ IN A 127.0.0.1\n"
            "ns1 IN A 127.0.0.1\n"
            "* IN A 127.0.0.1\n"
        )
        self.config_file.write_text(
            f'include "{self.tsig_key_file}";\n'
            "options {\n"
            f'    directory "{self.directory}";\n'
            f'    pid-file "{self.directory}/named.pid";\n'
            f'    session-keyfile "{self.directory}/session.key";\n'
            f'    managed-keys-directory "{self.directory}";\n'
            f"    listen-on port {self.port} {{ {self.address}; }};\n"
            "    listen-on-v6 { none; };\n"
            "    recursion no;\n"
            "    dnssec-validation no;\n"
            "    notify no;\n"
            "};\n"
            # No rndc channel: the default one on port 953 would collide between instances.
            "controls { };\n"
            f'zone "{self.zone}" {{\n'
            "    type primary;\n"
            f'    file "{self.zone_file}";\n'
            f'    allow-update {{ key "{self.tsig_key_name}"; }};\n'
            "};\n"
        )

    def _answers(self) -> bool:
        """Tell whether named gives an authoritative answer for the zone's SOA."""
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        try:
            reply = dns.query.udp(query, self.address, port=self.port, timeout=0.3)
        except (dns.exception.DNSException, OSError):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AA)

    def update(self, *, add: Sequence[str] = (), delete: Sequence[str] = ()) -> None:
        """Change the zone with one TSIG-signed RFC 2136 update, as an operator's tooling would.

        ``delete``: ``"NAME TYPE"`` (the whole record set) or ``"NAME TYPE VALUE"`` (one record);
        ``add``: ``"NAME TYPE VALUE"``, TTL 60. Names are relative to the zone unless they end in a dot.
        """
        keyring = dns.tsigkeyring.from_text({self.tsig_key_name: (self.tsig_algorithm, self.tsig_secret)})
        message = dns.update.UpdateMessage(self.zone, keyring=keyring, keyname=dns.name.from_text(self.tsig_key_name),
                                           keyalgorithm=self.tsig_algorithm)
        for entry in delete:
            name, rdtype, *value = entry.split(None, 2)
            message.delete(name, rdtype, *value)
        for entry in add:
            owner, kind, text = entry.split(None, 2)
            message.add(owner, 60, kind, text)
        reply = dns.query.tcp(message, self.address, port=self.port, timeout=5)
        if reply.rcode() != dns.rcode.NOERROR:
            msg = f"update of {self.zone} refused: {dns.rcode.to_text(reply.rcode())}"
            raise RuntimeError(msg)

    def _launch(self) -> None:
        self._write_config()
        # -g: foreground, log to stderr; no -u: named stays root to write its journal here.
        self._process = spawn([NAMED, "-g", "-4", "-c", str(self.config_file)], self.log_path)
        process = self._process
        if not wait_until(self._answers, timeout=self.start_timeout, alive=lambda: process.poll() is None):
            msg = f"no authoritative answer for {self.zone} on {self.nameserver}"
            raise self.fail(msg)

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None
