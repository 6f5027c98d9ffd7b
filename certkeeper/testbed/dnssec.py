"""A DNSSEC-signed test zone as DANE needs it: a signing primary, a secondary fed by zone transfer, and a
validating resolver that trusts the zone's key.

Layout (one port ``P`` for every authoritative server, so a client that asks each NS address on one port, as
certkeeper does with a ``dns_server`` on a high port, reaches each of them)::

    ns1  127.0.0.1:P        BIND primary: dnssec-policy (one ECDSA P-256 CSK) + inline-signing, RFC 2136 updates
                            signed with the TSIG key in :attr:`SignedZone.tsig_key_file`, NOTIFY to ns2
    ns2  [::1]:P            BIND secondary: the signed zone by IXFR/AXFR from ns1 (IPv6: named listens only on
                            interface addresses, and 127.0.0.1 is the loopback's only IPv4 one)
    resolver 127.0.0.1:R    BIND, recursion for the zone only (forwarded to ns1 and ns2), DNSSEC validation
                            with the zone's DNSKEY as its trust anchor: it sets AD on what it validated

A second zone, :attr:`SignedZone.unsigned_zone` (``unsigned.test.``), is a zone whose primary has not signed
yet: ns1 signs it inline (``auto-dnssec maintain``) from a key folder that stays empty, so it serves the zone and
its updates without signatures, while the resolver holds a trust anchor for it (the signed zone's key) as for a
zone whose parent publishes a DS.  Its answers through the resolver are therefore bogus (SERVFAIL, never AD),
however correct the primary's unsigned answer is, until :meth:`SignedZone.sign_unsigned_zone` puts a copy of the
signed zone's key there and runs ``rndc sign``: from then on the resolver validates them.

:meth:`SignedZone.hold_transfers` refuses zone transfers on the primary (``allow-transfer { none; }``, then
``rndc reconfig``): ns2 keeps serving the old serial, as a lagging secondary does, until
:meth:`SignedZone.release_transfers` allows them again and sends a NOTIFY.

Startup: the primary signs at load (a fraction of a second for this small zone); the resolver is started once
the signed DNSKEY is there, since its trust anchor is that key.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from certkeeper.testbed.server import (
    LOOPBACK,
    Server,
    allocate_port,
    allocate_shared_port,
    run_checked,
    spawn,
    terminate,
    wait_until,
)

NAMED = "/usr/sbin/named"
RNDC = "/usr/sbin/rndc"
SECONDARY = "::1"
# SOA refresh and retry of an hour: the secondary only transfers on NOTIFY, so a held transfer stays held.
# Negative TTL (and so the NSEC records' TTL, RFC 4035 section 2.3) of 2 s: a resolver that proved a TLSA name
# absent, from an NSEC record it cached (aggressive use, RFC 8198), sees the new records 2 s later, not 30.
SOA_TIMERS = "3600 3600 86400 2"


def answers_soa(zone: str, address: str, port: int) -> int | None:
    """The SOA serial ``address:port`` answers authoritatively for ``zone``, or None."""
    try:
        reply = dns.query.udp(dns.message.make_query(zone, dns.rdatatype.SOA), address, port=port, timeout=0.3)
    except (dns.exception.DNSException, OSError):
        return None
    if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
        return None
    for rrset in reply.answer:
        for rdata in rrset:
            serial: int = rdata.serial
            return serial
    return None


class _Named(Server):
    """One ``named -g`` with an rndc channel of its own (for reconfig and notify)."""

    def __init__(self, directory: Path, *, zone: str, start_timeout: float) -> None:
        super().__init__(directory)
        self.zone = zone
        self.config_file = self.directory / "named.conf"
        self.rndc_key_file = self.directory / "rndc.key"
        self.rndc_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.rndc_port = 0
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    def _allocate_ports(self) -> None:
        # The DNS port is shared and chosen by SignedZone; only the control channel is this server's own.
        self.rndc_port = allocate_port()

    def _common(self, listen: str) -> str:
        self.rndc_key_file.write_text(
            f'key "rndc-key" {{\n    algorithm hmac-sha256;\n    secret "{self.rndc_secret}";\n}};\n')
        self.rndc_key_file.chmod(0o600)
        return (
            f'include "{self.rndc_key_file}";\n'
            f"controls {{ inet {LOOPBACK} port {self.rndc_port} allow {{ {LOOPBACK}; }} keys {{ \"rndc-key\"; }}; }};\n"
            "options {\n"
            f'    directory "{self.directory}";\n'
            f'    pid-file "{self.directory}/named.pid";\n'
            f'    session-keyfile "{self.directory}/session.key";\n'
            f'    managed-keys-directory "{self.directory}";\n'
            f"{listen}"
        )

    def rndc(self, *arguments: str) -> str:
        return run_checked([RNDC, "-k", str(self.rndc_key_file), "-s", LOOPBACK, "-p", str(self.rndc_port),
                            *arguments], f"rndc {' '.join(arguments)}")

    def _ready(self) -> bool:
        raise NotImplementedError

    def _spawn(self) -> None:
        # -g: foreground, log to stderr; no -u: named stays root to write its journal and keys here.
        self._process = spawn([NAMED, "-g", "-c", str(self.config_file)], self.log_path)
        process = self._process
        if not wait_until(self._ready, timeout=self.start_timeout, alive=lambda: process.poll() is None):
            reason = f"not ready for {self.zone}"
            raise self.fail(reason)

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None

    def _launch(self) -> None:
        raise NotImplementedError


class SignedPrimary(_Named):
    name = "BIND (signing primary)"

    def __init__(self, directory: Path, *, zone: str, unsigned_zone: str, port: int, tsig_key_file: Path,
                 tsig_key_name: str, start_timeout: float = 20.0) -> None:
        super().__init__(directory, zone=zone, start_timeout=start_timeout)
        self.port = port
        self.tsig_key_file = tsig_key_file
        self.tsig_key_name = tsig_key_name
        self.zone_file = self.directory / "zone.db"
        self.unsigned_zone = unsigned_zone
        self.unsigned_file = self.directory / "unsigned.db"
        self.transfers_allowed = True

    def _ready(self) -> bool:
        return answers_soa(self.zone, LOOPBACK, self.port) is not None and bool(self.dnskeys())

    def dnskeys(self) -> list[str]:
        """The zone's DNSKEY RRset in master-file syntax, as the primary serves it once signed."""
        try:
            reply = dns.query.udp(dns.message.make_query(self.zone, dns.rdatatype.DNSKEY), LOOPBACK, port=self.port,
                                  timeout=0.3)
        except (dns.exception.DNSException, OSError):
            return []
        return [rdata.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.DNSKEY for rdata in rrset]

    @property
    def unsigned_keys(self) -> Path:
        return self.directory / "unsigned-keys"

    def sign_unsigned_zone(self) -> None:
        """Sign the unsigned zone now, with a copy of the signed zone's key (the resolver's trust anchor for both
        zones), as a primary does that signs late."""
        for path in self.directory.glob(f"K{self.zone}+*"):
            if path.suffix in (".key", ".private"):
                text = path.read_text()
                if path.suffix == ".key":  # the owner name is in the DNSKEY record; the key tag does not cover it
                    text = text.replace(f"{self.zone} ", f"{self.unsigned_zone} ")
                (self.unsigned_keys / path.name.replace(self.zone, self.unsigned_zone)).write_text(text)
        self.rndc("sign", self.unsigned_zone)

    def write_config(self) -> None:
        transfer = "any" if self.transfers_allowed else "none"
        self.config_file.write_text(
            f'include "{self.tsig_key_file}";\n'
            + self._common(f"    listen-on port {self.port} {{ {LOOPBACK}; }};\n    listen-on-v6 {{ none; }};\n")
            + "    recursion no;\n"
            "    dnssec-validation no;\n"
            "};\n"
            # One CSK, never rolled: the resolver's static trust anchor stays right for the instance's life.
            'dnssec-policy "testbed" {\n'
            "    keys { csk lifetime unlimited algorithm ecdsap256sha256; };\n"
            "    dnskey-ttl 30;\n"
            "    max-zone-ttl 300;\n"
            "    zone-propagation-delay 1;\n"
            "    parent-propagation-delay 1;\n"
            "};\n"
            f'zone "{self.zone}" {{\n'
            "    type primary;\n"
            f'    file "{self.zone_file}";\n'
            '    dnssec-policy "testbed";\n'
            "    inline-signing yes;\n"
            f'    key-directory "{self.directory}";\n'
            f'    allow-update {{ key "{self.tsig_key_name}"; }};\n'
            f"    allow-transfer {{ {transfer}; }};\n"
            "    notify explicit;\n"
            # BIND holds a NOTIFY back up to 5 s after the previous one by default; a test bed tells at once.
            "    notify-delay 0;\n"
            f"    also-notify {{ {SECONDARY} port {self.port}; }};\n"
            "};\n"
            f'zone "{self.unsigned_zone}" {{\n'
            "    type primary;\n"
            f'    file "{self.unsigned_file}";\n'
            # Signed inline from keys in a folder that stays empty until sign_unsigned_zone(): a primary that has
            # not signed yet (dnssec-policy would make its own keys at once; auto-dnssec waits for them).
            "    inline-signing yes;\n"
            "    auto-dnssec maintain;\n"
            f'    key-directory "{self.unsigned_keys}";\n'
            f'    allow-update {{ key "{self.tsig_key_name}"; }};\n'
            "    notify no;\n"
            "};\n"
        )

    def _launch(self) -> None:
        # Journals, keys and the signed copy of a previous start: each start signs afresh.
        for stale in [*self.directory.glob("zone.db.*"), *self.directory.glob("unsigned.db.*")]:
            stale.unlink()
        for key in [*self.directory.glob("K*"), *self.unsigned_keys.glob("K*")]:
            key.unlink()
        self.unsigned_keys.mkdir(exist_ok=True)
        self.zone_file.write_text(
            f"$ORIGIN {self.zone}\n"
            "$TTL 30\n"
            f"@ IN SOA ns1.{self.zone} hostmaster.{self.zone} 1 {SOA_TIMERS}\n"
            f"@ IN NS ns1.{self.zone}\n"
            f"@ IN NS ns2.{self.zone}\n"
            "@ IN A 127.0.0.1\n"
            "ns1 IN A 127.0.0.1\n"
            f"ns2 IN AAAA {SECONDARY}\n"
            "* IN A 127.0.0.1\n"
        )
        self.unsigned_file.write_text(
            f"$ORIGIN {self.unsigned_zone}\n"
            "$TTL 30\n"
            f"@ IN SOA ns1.{self.unsigned_zone} hostmaster.{self.unsigned_zone} 1 {SOA_TIMERS}\n"
            f"@ IN NS ns1.{self.unsigned_zone}\n"
            "ns1 IN A 127.0.0.1\n"
            "* IN A 127.0.0.1\n"
        )
        self.write_config()
        self._spawn()


class Secondary(_Named):
    name = "BIND (secondary)"

    def __init__(self, directory: Path, *, zone: str, port: int, start_timeout: float = 20.0) -> None:
        super().__init__(directory, zone=zone, start_timeout=start_timeout)
        self.port = port
        self.zone_file = self.directory / "secondary.db"

    def _ready(self) -> bool:
        return answers_soa(self.zone, SECONDARY, self.port) is not None

    def _launch(self) -> None:
        self.zone_file.unlink(missing_ok=True)
        self.config_file.write_text(
            self._common(f"    listen-on {{ none; }};\n    listen-on-v6 port {self.port} {{ {SECONDARY}; }};\n")
            + "    recursion no;\n"
            "    dnssec-validation no;\n"
            "    notify no;\n"
            "};\n"
            f'zone "{self.zone}" {{\n'
            "    type secondary;\n"
            f'    file "{self.zone_file}";\n'
            f"    primaries {{ {LOOPBACK} port {self.port}; }};\n"
            f"    allow-notify {{ {LOOPBACK}; {SECONDARY}; }};\n"
            "};\n"
        )
        self._spawn()


class ValidatingResolver(_Named):
    """Recursion for the zone only, forwarded to its authoritative servers; the zone's DNSKEY is the anchor."""

    name = "BIND (validating resolver)"

    def __init__(self, directory: Path, *, zone: str, unsigned_zone: str, auth_port: int, trust_anchor: list[str],
                 start_timeout: float = 20.0) -> None:
        super().__init__(directory, zone=zone, start_timeout=start_timeout)
        self.unsigned_zone = unsigned_zone
        self.auth_port = auth_port
        self.trust_anchor = trust_anchor
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the form ``dane.resolver`` and ``check --resolver`` take."""
        return f"{LOOPBACK}:{self.port}"

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        self.port = allocate_port(udp_too=True)

    def _ready(self) -> bool:
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        query.flags |= dns.flags.AD  # RFC 6840 section 5.7: ask to be told whether it validated
        try:
            reply = dns.query.udp(query, LOOPBACK, port=self.port, timeout=0.5)
        except (dns.exception.DNSException, OSError):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AD)

    def _launch(self) -> None:
        keys = [key.split(" ", 3) for key in self.trust_anchor if key.startswith("257 ")]
        anchors = "".join(f'    "{zone}" static-key {flags} {protocol} {algorithm} "{data.replace(" ", "")}";\n'
                          for zone in (self.zone, self.unsigned_zone) for flags, protocol, algorithm, data in keys)
        self.config_file.write_text(
            self._common(f"    listen-on port {self.port} {{ {LOOPBACK}; }};\n    listen-on-v6 {{ none; }};\n")
            + "    recursion yes;\n"
            f"    allow-query {{ {LOOPBACK}; }};\n"
            "    dnssec-validation yes;\n"
            # Nothing beyond loopback: the root is never asked; only the forwarded zone resolves.
            f"    forward only;\n"
            f"    forwarders {{ {LOOPBACK} port {self.auth_port}; }};\n"
            # A sender's resolver caches for the records' TTL; the test bed keeps that (30 s) and no more.
            "    max-cache-ttl 60;\n"
            "    max-ncache-ttl 5;\n"
            "};\n"
            f"trust-anchors {{\n{anchors}}};\n"
            f'zone "{self.zone}" {{\n'
            "    type forward;\n"
            "    forward only;\n"
            f"    forwarders {{ {LOOPBACK} port {self.auth_port}; {SECONDARY} port {self.auth_port}; }};\n"
            "};\n"
            f'zone "{self.unsigned_zone}" {{\n'
            "    type forward;\n"
            "    forward only;\n"
            f"    forwarders {{ {LOOPBACK} port {self.auth_port}; }};\n"
            "};\n"
        )
        self._spawn()

    def flush(self) -> None:
        """Forget the cache, as a sender's resolver whose TTLs ran out would."""
        self.rndc("flush")


class SignedZone:
    """The three servers of the signed zone, started together: see the module docstring."""

    def __init__(self, directory: Path, *, zone: str = "signed.test.", unsigned_zone: str = "unsigned.test.",
                 tsig_key_name: str = "certkeeper-signed.") -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.zone = zone if zone.endswith(".") else zone + "."
        self.unsigned_zone = unsigned_zone if unsigned_zone.endswith(".") else unsigned_zone + "."
        self.tsig_key_name = tsig_key_name
        self.tsig_algorithm = "hmac-sha256"
        self.tsig_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tsig_key_file = self.directory / "tsig.key"
        self.port = 0
        self.primary: SignedPrimary | None = None
        self.secondary: Secondary | None = None
        self.resolver: ValidatingResolver | None = None

    @property
    def nameserver(self) -> str:
        """The primary, ``127.0.0.1:<port>``: where RFC 2136 updates go (``dane.dns_server``)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def resolver_address(self) -> str:
        assert self.resolver is not None
        return self.resolver.address

    @property
    def servers(self) -> list[Server]:
        return [s for s in (self.primary, self.secondary, self.resolver) if s is not None]

    def start(self) -> Self:
        self.tsig_key_file.write_text(
            f'key "{self.tsig_key_name}" {{\n    algorithm {self.tsig_algorithm};\n'
            f'    secret "{self.tsig_secret}";\n}};\n')
        self.tsig_key_file.chmod(0o600)
        self.port = allocate_shared_port((LOOPBACK, SECONDARY))
        try:
            self.primary = SignedPrimary(self.directory / "ns1", zone=self.zone, unsigned_zone=self.unsigned_zone,
                                         port=self.port,
                                         tsig_key_file=self.tsig_key_file, tsig_key_name=self.tsig_key_name).start()
            self.secondary = Secondary(self.directory / "ns2", zone=self.zone, port=self.port).start()
            self.resolver = ValidatingResolver(self.directory / "resolver", zone=self.zone,
                                               unsigned_zone=self.unsigned_zone, auth_port=self.port,
                                               trust_anchor=self.primary.dnskeys()).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def serials(self) -> dict[str, int | None]:
        """The SOA serial each authoritative address answers (None: no authoritative answer)."""
        return {f"{address}:{self.port}" if ":" not in address else f"[{address}]:{self.port}":
                answers_soa(self.zone, address, self.port) for address in (LOOPBACK, SECONDARY)}

    def wait_in_step(self, timeout: float) -> bool:
        """Until every authoritative address answers one serial (after a transfer); False on timeout."""
        return wait_until(lambda: len(set(self.serials().values())) == 1, timeout=timeout, alive=lambda: True)

    def hold_transfers(self) -> None:
        """The primary refuses zone transfers: the secondary stays at its serial until released."""
        assert self.primary is not None
        self.primary.transfers_allowed = False
        self.primary.write_config()
        self.primary.rndc("reconfig")

    def release_transfers(self) -> None:
        """Allow transfers again and NOTIFY the secondary, which then catches up."""
        assert self.primary is not None
        self.primary.transfers_allowed = True
        self.primary.write_config()
        self.primary.rndc("reconfig")
        self.primary.rndc("notify", self.zone)

    def sign_unsigned_zone(self, timeout: float = 10.0) -> bool:
        """The primary signs :attr:`unsigned_zone` now; True once the resolver validates its SOA (AD set)."""
        assert self.primary is not None and self.resolver is not None
        self.primary.sign_unsigned_zone()
        resolver = self.resolver

        def validated() -> bool:
            resolver.flush()
            query = dns.message.make_query(self.unsigned_zone, dns.rdatatype.SOA, want_dnssec=True)
            try:
                reply = dns.query.udp(query, LOOPBACK, port=resolver.port, timeout=1)
            except (dns.exception.DNSException, OSError):
                return False
            return bool(reply.flags & dns.flags.AD)
        return wait_until(validated, timeout=timeout, alive=lambda: True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
