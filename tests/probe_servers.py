"""Loopback TLS servers of our own for the probe tests: an event loop hosting them, a throwaway PKI issuing
leaves, and STARTTLS dialects (SMTP, IMAP, POP3, ManageSieve).  The fixtures ``servers`` and ``pki`` (in
conftest.py) hand them to ``test_probe_servers``, ``test_check_certkeeper``; the monitoring tests and the probe
benchmarks use the classes directly."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ServerLoop:
    """An event loop in a thread that hosts the test servers for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []

    def serve(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(_quietly(handler), "127.0.0.1", 0, ssl=ssl_context)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            for server in self.servers:
                await server.wait_closed()
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _quietly(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return run


@dataclass(frozen=True)
class Leaf:
    certificate: x509.Certificate
    chain_pem: bytes  # leaf + intermediate
    key_pem: bytes

    @property
    def leaf_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                    signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


@dataclass
class Pki:
    """A throwaway root and intermediate, issuing leaves that pass the CA/B Forum profile cryptography checks."""

    root_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    ca_file: Path

    @classmethod
    def create(cls, directory: Path, name: str = "Test Root") -> Pki:
        root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        root = _ca_certificate(name, root_key, _name(name), root_key)
        intermediate = _ca_certificate(f"{name} Intermediate", intermediate_key, root.subject, root_key)
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        return cls(root_key, intermediate_key, intermediate, ca_file)

    def leaf(self, *names: str, days_before: float = 1, days_after: float = 90, key_type: str = "ecdsa",
             purposes: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,)) -> Leaf:
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048) if key_type == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        alternative: list[x509.GeneralName] = []
        for name in names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.intermediate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=days_before)).not_valid_after(NOW + timedelta(days=days_after))
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(purposes)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()),
                           critical=False)
            .sign(self.intermediate_key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self.intermediate.public_bytes(
            serialization.Encoding.PEM)
        return Leaf(certificate, chain, _pem_key(key))

    def context(self, *leaves: Leaf, with_chain: bool = True, extra: bytes = b"") -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for leaf in leaves:
            _load_pems(context, (leaf.chain_pem if with_chain else leaf.leaf_pem) + extra, leaf.key_pem)
        return context


def _load_pems(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "c.pem"), Path(directory, "k.pem")
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)






def smtp_server(context: ssl.SSLContext, *, greeting: list[bytes] | None = None,
                ehlo: list[bytes] | None = None, starttls_reply: bytes = b"220 2.0.0 go ahead\r\n") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.writelines(greeting or [b"220-mail.test ESMTP\r\n", b"220 hello\r\n"])
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"EHLO":
                writer.writelines(ehlo or [b"250-mail.test\r\n", b"250-pipelining\r\n", b"250-8BITMIME\r\n",
                                           b"250-starttls\r\n", b"250 SIZE 10240000\r\n"])
            elif verb == b"STARTTLS":
                writer.write(starttls_reply)
                await writer.drain()
                if starttls_reply.startswith(b"220"):
                    await writer.start_tls(context)
                    await reader.read(1)
                    return
            else:
                writer.write(b"502 what\r\n")
            await writer.drain()

    return handle


def imap_server(context: ssl.SSLContext, *, capability: bytes = b"IMAP4rev1 STARTTLS LOGINDISABLED") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK IMAP ready\r\n")
        while line := await reader.readline():
            tag, command = line.split()[:2]
            if command.upper() == b"CAPABILITY":
                writer.write(b"* CAPABILITY " + capability + b"\r\n" + tag + b" OK done\r\n")
            elif command.upper() == b"STARTTLS" and b"STARTTLS" in capability:
                writer.write(tag + b" OK begin TLS now\r\n")
                await writer.drain()
                await writer.start_tls(context)
                await reader.read(1)
                return
            else:
                writer.write(tag + b" NO no\r\n")
            await writer.drain()

    return handle


def pop3_server(context: ssl.SSLContext, *, stls: bool = True) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK POP3 ready\r\n")
        while line := await reader.readline():
            command = line.strip().upper()
            if command == b"CAPA":
                writer.write(b"+OK\r\nUSER\r\nTOP\r\n" + (b"STLS\r\n" if stls else b"") + b".\r\n")
            elif command == b"STLS" and stls:
                writer.write(b"+OK begin TLS\r\n")
                await writer.drain()
                await writer.start_tls(context)
                await reader.read(1)
                return
            else:
                writer.write(b"-ERR no\r\n")
            await writer.drain()

    return handle


def sieve_server(context: ssl.SSLContext, *, refuse: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'"IMPLEMENTATION" "test"\r\n"SIEVE" "fileinto"\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\n'
                     b'OK "ready"\r\n')
        line = await reader.readline()
        if line.strip().upper() == b"STARTTLS" and not refuse:
            writer.write(b'OK "begin"\r\n')
            await writer.drain()
            await writer.start_tls(context)
            await reader.read(1)
        else:
            writer.write(b'NO "not now"\r\n')
            await writer.drain()

    return handle


# --- good endpoints -----------------------------------------------------------------------------------


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
