"""Benchmark: ``certkeeper check --file`` against a minimal asyncio handshake loop, on 1,000 loopback endpoints.

Run on demand (pytest does not collect ``bench_*`` files)::

    python tests/bench/bench_probe.py [--endpoints 1000] [--rounds 3] [--concurrency 50]

Two server processes (one per kind) each listen on half of the ports: implicit TLS (smtps) and SMTP with
STARTTLS (RFC 3207).  Both clients run as subprocesses, alternately, against the same servers: the real CLI
path (parse the list, dialogue, handshake, fetch the chain, judge it, print Nagios lines) and a raw loop that
only completes the same handshakes with Python's ``ssl`` and reads the peer certificate.  The report gives
throughput (endpoints per second, interpreter start-up included for both), the ratio and each client's peak
RSS (``wait4`` rusage).  Goal (issue 3): ratio >= 0.7, peak < 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.rounds import report

HOST = "127.0.0.1"
NAME = "bench.test"


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A root and an ECDSA leaf for ``bench.test``: (ca.pem, chain.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Root")])
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name).public_key(root_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
        .issuer_name(root_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca, chain, key = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca.write_bytes(root.public_bytes(pem))
    chain.write_bytes(leaf.public_bytes(pem))
    key.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca, chain, key


# --- the servers --------------------------------------------------------------------------------------


async def serve(kind: str, count: int, chain: str, key: str) -> None:
    # asyncio logs a line per STARTTLS connection closed by the client ("eof_received() has no effect").
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)

    async def implicit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read(1)
        writer.close()

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220-bench.test ESMTP\r\n220 ready\r\n")
            while line := await reader.readline():
                if line.upper().startswith(b"EHLO"):
                    writer.write(b"250-bench.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
                elif line.upper().startswith(b"STARTTLS"):
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    await writer.start_tls(context)
                    await reader.read(1)
                    break
                else:
                    writer.write(b"502 5.5.2 Error\r\n")
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        writer.close()

    servers = []
    for _ in range(count):
        if kind == "implicit":
            server = await asyncio.start_server(implicit, HOST, 0, ssl=context, backlog=512)
        else:
            server = await asyncio.start_server(smtp, HOST, 0, backlog=512)
        servers.append(server)
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# --- the raw loop ------------------------------------------------------------------------------------


async def raw_loop(targets: list[tuple[str, int]], ca: str, concurrency: int) -> int:
    """Only the handshakes: one default-verify-off context, read the peer certificate, close."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    semaphore = asyncio.Semaphore(concurrency)

    async def one(scheme: str, port: int) -> bool:
        async with semaphore:
            if scheme == "smtps":
                reader, writer = await asyncio.open_connection(HOST, port, ssl=context, server_hostname=NAME)
            else:
                reader, writer = await asyncio.open_connection(HOST, port)
                while not (await reader.readline()).startswith(b"220 "):
                    pass
                writer.write(b"EHLO [127.0.0.1]\r\n")
                while not (await reader.readline()).startswith(b"250 "):
                    pass
                writer.write(b"STARTTLS\r\n")
                await reader.readline()
                await writer.start_tls(context, server_hostname=NAME)
            certificate = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            return bool(certificate)

    results = await asyncio.gather(*(one(scheme, port) for scheme, port in targets))
    return sum(results)


async def pyopenssl_loop(targets: list[tuple[str, int]], concurrency: int) -> int:
    """The floor of issue 23: the same handshakes with pyOpenSSL over memory BIOs (as the probe does them), the
    served chain read as DER; no judging, no output."""
    from OpenSSL import SSL, crypto

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    semaphore = asyncio.Semaphore(concurrency)

    async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        connection = SSL.Connection(context, None)
        connection.set_connect_state()
        connection.set_tlsext_host_name(NAME.encode())
        while True:
            try:
                connection.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            with contextlib.suppress(SSL.WantReadError):
                writer.write(connection.bio_read(65536))
            if done:
                break
            connection.bio_write(await reader.read(65536))
        return len([crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in connection.get_peer_cert_chain() or []])

    async def one(scheme: str, port: int) -> bool:
        async with semaphore:
            reader, writer = await asyncio.open_connection(HOST, port)
            if scheme != "smtps":
                while not (await reader.readline()).startswith(b"220 "):
                    pass
                writer.write(b"EHLO [127.0.0.1]\r\n")
                while not (await reader.readline()).startswith(b"250 "):
                    pass
                writer.write(b"STARTTLS\r\n")
                await reader.readline()
            served = await handshake(reader, writer)
            writer.close()
            return served > 0

    results = await asyncio.gather(*(one(scheme, port) for scheme, port in targets))
    return sum(results)


class _CallbackRun:
    """The floor's work (the same pyOpenSSL handshakes, the served chain as DER) on event-loop callbacks over
    non-blocking sockets, as certkeeper.probe.wire does it: no stream, task or future per read."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        from OpenSSL import SSL

        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_verify(SSL.VERIFY_NONE)
        self.loop = asyncio.new_event_loop()
        self.finished = self.loop.create_future()
        self.queue = iter(targets)
        self.active = self.served = 0

    def run(self, concurrency: int) -> int:
        for _ in range(concurrency):
            if not self.start():
                break
        if self.active:
            self.loop.run_until_complete(self.finished)
        self.loop.close()
        return self.served

    def start(self) -> bool:
        for scheme, port in self.queue:
            self.active += 1
            _CallbackConnection(self, scheme, port)
            return True
        return False

    def done(self, *, served: bool) -> None:
        self.served += served
        self.active -= 1
        if not self.start() and not self.active:
            self.finished.set_result(None)


class _CallbackConnection:
    def __init__(self, run: _CallbackRun, scheme: str, port: int) -> None:
        import errno
        import socket

        from OpenSSL import SSL

        self.run, self.loop, self.scheme, self.buffer, self.step = run, run.loop, scheme, b"", 0
        self.tls: SSL.Connection | None = None
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.sock.connect_ex((HOST, port)) == errno.EINPROGRESS:
            self.loop.add_writer(self.sock.fileno(), self.connected)
        else:
            self.connected()

    def connected(self) -> None:
        import socket

        self.loop.remove_writer(self.sock.fileno())
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.finish(served=False)
            return
        self.loop.add_reader(self.sock.fileno(), self.readable)
        if self.scheme == "smtps":
            self.start_tls()

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.finish(served=False)
        elif self.tls is not None:
            self.tls.bio_write(data)
            self.pump()
        else:
            self.buffer += data
            while b"\n" in self.buffer and self.tls is None:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if self.step == 0 and line.startswith(b"220 "):
                    self.sock.send(b"EHLO [127.0.0.1]\r\n")
                    self.step = 1
                elif self.step == 1 and line.startswith(b"250 "):
                    self.sock.send(b"STARTTLS\r\n")
                    self.step = 2
                elif self.step == 2:
                    self.start_tls()

    def start_tls(self) -> None:
        from OpenSSL import SSL

        self.tls = SSL.Connection(self.run.context, None)
        self.tls.set_connect_state()
        self.tls.set_tlsext_host_name(NAME.encode())
        self.pump()

    def pump(self) -> None:
        from OpenSSL import SSL, crypto

        assert self.tls is not None
        try:
            self.tls.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        with contextlib.suppress(SSL.WantReadError):
            self.sock.send(self.tls.bio_read(65536))
        if done:
            chain = self.tls.get_peer_cert_chain() or []
            self.finish(served=bool([crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain]))

    def finish(self, *, served: bool) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.run.done(served=served)


# --- the measurement ---------------------------------------------------------------------------------


def run_measured(command: list[str], source: str | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, stdout) of one client run; the client reports its own ru_maxrss on stderr.
    ``source``: a folder holding another ``certkeeper`` package to run instead (first on the path)."""
    environment = {**os.environ, "PYTHONPATH": source} if source else None
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
                               cwd="/" if source else None)
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    peak = 0.0
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("PEAK_RSS_KB="):
            peak = int(line.split("=", 1)[1]) / 1024
    if process.returncode not in (0,):
        sys.stderr.write(stderr.decode(errors="replace")[-2000:])
    return elapsed, peak, stdout.decode(errors="replace")


# VmHWM, the high-water mark of this process's own memory: ru_maxrss keeps, across exec, the peak of the forking
# parent (Linux's signal_struct maxrss), so every client would report at least this script's own size.
PEAK_WRAPPER = """
import runpy, sys
sys.argv = {argv!r}
try:
    {body}
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("PEAK_RSS_KB=" + peak, file=sys.stderr)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve", choices=("implicit", "smtp"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", choices=("pyopenssl", "callbacks", "ssl"), default="pyopenssl",
                        help="the loop to compare with: pyOpenSSL handshakes over asyncio streams (issue 23), the "
                        "same on event-loop callbacks (as certkeeper's wire), or asyncio + ssl (issue 3)")
    parser.add_argument("--json", action="store_true", help="certkeeper check --json instead of Nagios lines")
    parser.add_argument("--base", metavar="SRC", help="also time the certkeeper package in SRC (e.g. `git archive "
                        "main certkeeper | tar -x -C SRC`), as the side 'before'")
    parser.add_argument("--raw", metavar="LIST", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--chain", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_open_files_limit()
    if args.serve:
        asyncio.run(serve(args.serve, args.count, args.chain, args.key))
        return
    if args.raw:
        targets = []
        for line in Path(args.raw).read_text().splitlines():
            scheme, rest = line.split("://")
            targets.append((scheme, int(rest.rsplit(":", 1)[1])))
        if args.floor == "callbacks":
            done = _CallbackRun(targets).run(args.concurrency)
        else:
            done = asyncio.run(pyopenssl_loop(targets, args.concurrency) if args.floor == "pyopenssl"
                               else raw_loop(targets, args.ca, args.concurrency))
        print(f"{done} handshakes")
        sys.exit(0 if done == len(targets) else 1)

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        ca, chain, key = make_pki(directory)
        half = args.endpoints // 2
        servers, ports = [], {}
        for kind, count in (("implicit", half), ("smtp", args.endpoints - half)):
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--count", str(count), "--chain", str(chain),
                 "--key", str(key)], stdout=subprocess.PIPE,
            )
            servers.append(process)
            assert process.stdout is not None
            ports[kind] = json.loads(process.stdout.readline())
        listing = directory / "targets.txt"
        listing.write_text("".join(f"smtps://{HOST}:{port}\n" for port in ports["implicit"])
                           + "".join(f"smtp://{HOST}:{port}\n" for port in ports["smtp"]))
        cli = [sys.executable, "-c", PEAK_WRAPPER.format(
            argv=["certkeeper", "check", "--file", str(listing), "--ca-file", str(ca), "--servername", NAME,
                  "--concurrency", str(args.concurrency), "--timeout", "30", *(["--json"] if args.json else [])],
            # run(), as the console script: its garbage collector settings are part of what a user runs.
            body="from certkeeper.cli import run\n    run()")]
        raw = [sys.executable, "-c", PEAK_WRAPPER.format(
            argv=[__file__, "--raw", str(listing), "--ca", str(ca), "--concurrency", str(args.concurrency),
                  "--floor", args.floor],
            body=f"runpy.run_path({__file__!r}, run_name='__main__')")]
        try:
            cli_times: list[float] = []
            base_times: list[float] = []
            raw_times, cli_peaks, raw_peaks = [], [], []
            clients = [(None, cli_times)] + ([(args.base, base_times)] if args.base else [])
            for _ in range(args.rounds):
                seconds, peak, out = run_measured(raw)
                raw_times.append(seconds)
                raw_peaks.append(peak)
                for source, times in clients:
                    seconds, peak, out = run_measured(cli, source)
                    ok = (sum(1 for item in json.loads(out) if item["status"] == "OK") if args.json
                          else sum(1 for line in out.splitlines() if line.startswith("CERTKEEPER OK - ")))
                    if ok != args.endpoints:
                        print(f"warning: only {ok} of {args.endpoints} OK lines from the CLI:\n" + out[-1500:])
                    times.append(seconds)
                    if source is None:
                        cli_peaks.append(peak)
        finally:
            for process in servers:
                process.terminate()
                process.wait()
    cli_best, raw_best = min(cli_times), min(raw_times)
    print(f"endpoints: {args.endpoints} ({half} smtps, {args.endpoints - half} smtp STARTTLS), "
          f"concurrency {args.concurrency}, {args.rounds} rounds, best round shown")
    print(f"raw {args.floor + ' loop':<17}: {raw_best:6.2f} s  {args.endpoints / raw_best:7.0f} endpoints/s  "
          f"peak {max(raw_peaks):5.1f} MB   (rounds: {', '.join(f'{t:.2f}' for t in raw_times)})")
    print(f"certkeeper check     : {cli_best:6.2f} s  {args.endpoints / cli_best:7.0f} endpoints/s  "
          f"peak {max(cli_peaks):5.1f} MB   (rounds: {', '.join(f'{t:.2f}' for t in cli_times)})")
    print(f"ratio (certkeeper / raw throughput): {raw_best / cli_best:.2f}  (goal >= 0.70; peak goal < 200 MB)")
    report(f"issue 23, check --file {args.endpoints} endpoints{' --json' if args.json else ''} vs a bare {args.floor} "
           "handshake loop", {"floor": raw_times, "certkeeper": cli_times,
                              **({"before": base_times} if args.base else {})}, goal=1.1)
    print(f"  peak RSS certkeeper {max(cli_peaks):.1f} MB (goal <= 60 MB), floor {max(raw_peaks):.1f} MB")


if __name__ == "__main__":
    main()
