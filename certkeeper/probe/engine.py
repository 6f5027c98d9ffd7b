"""The probe's IO: asyncio connections, the STARTTLS dialogue over them, and the TLS handshake.

This is the only module of certkeeper that opens sockets or touches a TLS library (``ssl`` for the default
trust-store location, pyOpenSSL for the handshake).

Why pyOpenSSL, driven through memory BIOs
    Judging a server means seeing the chain *it sent*, including broken ones: Python 3.11's ``ssl`` hands out
    only the leaf (``get_unverified_chain()`` arrives in 3.13).  ``OpenSSL.SSL.Connection`` created without a
    socket works on two memory BIOs; the engine pumps bytes between them and an asyncio stream.  So the
    plaintext dialogue and the handshake share one non-blocking connection, no thread is needed per
    handshake, and ``get_peer_cert_chain()`` gives the whole served chain.  Verification is deliberately off in
    OpenSSL (``VERIFY_NONE``) so broken chains still complete the handshake; the chain is then judged with
    ``cryptography`` (:mod:`certkeeper.probe.judge`), once per distinct chain.

Limits against hostile servers
    One deadline per target (``asyncio.timeout``) covers connect, dialogue and every handshake; lines are at
    most :data:`MAX_LINE` bytes, the dialogue at most :data:`MAX_DIALOGUE_BYTES`, the handshake at most
    :data:`MAX_HANDSHAKE_BYTES` (OpenSSL itself refuses a certificate list over 100 KiB).  Every failure
    becomes a finding; only a bug in certkeeper yields UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto

from certkeeper import tls
from certkeeper.errors import InputError
from certkeeper.probe.conversation import MAX_LINE, DialogueError, Progress
from certkeeper.probe.dialects import negotiate_starttls
from certkeeper.probe.judge import ChainJudgement, judge_chain
from certkeeper.probe.result import (
    CONNECTION_FAILED,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    TLS_HANDSHAKE_FAILED,
    TLS_VERSION_TOO_OLD,
    Finding,
    ProbeOptions,
    ProbeResult,
)
from certkeeper.probe.verdict import (
    Fetch,
    assemble,
    connecting_stage,
    ehlo_name,
    os_reason,
    timeout_finding,
)
from certkeeper.targets import Target, encode_host_name, is_ip_literal
from certkeeper.values import mutable

log = logging.getLogger("certkeeper.probe")

MAX_HANDSHAKE_BYTES = 1024 * 1024
_BIO_READ = 65536
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# Cipher strings for --key-type: in TLS 1.2 the cipher suite names the server's authentication, so offering
# only aRSA (or aECDSA) suites makes a dual-certificate server present that certificate.  SECLEVEL=0 lets the
# probe see (and report) weak servers instead of failing to talk to them; nothing secret is ever sent.  PSK and
# SRP suites are left out of the list: a client without a pre-shared key or SRP login never offers them (OpenSSL
# drops them from the ClientHello), yet it weighs each of them again for every connection (54 of 128 suites).
_CIPHERS: dict[str | None, bytes] = {
    None: b"ALL:!aNULL:!eNULL:!PSK:!SRP:@SECLEVEL=0",
    "rsa": b"aRSA:!aNULL:!eNULL:!PSK:!SRP:@SECLEVEL=0",
    "ecdsa": b"aECDSA:!aNULL:!eNULL:!PSK:!SRP:@SECLEVEL=0",
}


class _ProbeFailure(Exception):
    """The probe could not get a certificate; becomes a CRITICAL finding with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@mutable
class _StreamConversation:
    """:class:`certkeeper.probe.dialects.Conversation` over an asyncio stream, with the byte limits."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    progress: Progress
    dialect: str

    async def read_line(self) -> str:
        self.progress.waiting(self.dialect)
        try:
            data = await self.reader.readuntil(b"\n")
        except asyncio.CancelledError:  # the deadline: what came of a line never ended (StreamReader's buffer, which
            self.progress.partial = len(getattr(self.reader, "_buffer", b""))  # it does not show otherwise)
            raise
        except asyncio.IncompleteReadError as exc:
            raise self.progress.closed(exc.partial) from None
        except asyncio.LimitOverrunError:
            raise self.progress.too_long(self.dialect) from None
        return self.progress.received_line(data, self.dialect)

    async def send_line(self, line: str) -> None:
        self.writer.write(self.progress.sending(line))
        await self.writer.drain()


def load_trust_anchors(ca_file: Path | str | None,
                       issuer_roots: Sequence[Path] = ()) -> tuple[list[x509.Certificate], str]:
    """The roots to verify against and how to name them in messages; InputError for an unreadable ``--ca-file``.

    ``issuer_roots`` (a managed certificate's issuer's roots) are trusted together with ``ca_file``, instead of
    the system store: an internal-CA certificate is right when it chains to that CA, whatever the system trusts.
    """
    if issuer_roots:
        roots: list[x509.Certificate] = []
        for path in issuer_roots:
            try:
                roots += _load_pem_bundle(path)
            except (OSError, ValueError) as exc:
                log.warning("issuer roots %s cannot be read (%s): left out", path, exc)
        names = [f"the issuer's roots ({', '.join(map(str, issuer_roots))})"]
        if ca_file is not None:
            extra, source = load_trust_anchors(ca_file)
            roots += extra
            names.append(source)
        return roots, " and ".join(names)
    if ca_file is not None:
        try:
            return _load_pem_bundle(Path(ca_file)), str(ca_file)
        except OSError as exc:
            raise InputError(str(ca_file), f"cannot read the CA file: {os_reason(exc)}") from None
        except ValueError as exc:
            raise InputError(str(ca_file), f"not a PEM certificate bundle ({exc})") from None
    bundle = tls.system_bundle() or SYSTEM_BUNDLE
    try:
        return _load_pem_bundle(bundle), "the system trust store"
    except (OSError, ValueError):
        log.warning("no system trust store at %s: every chain will be reported as not trusted", bundle)
        return [], "the system trust store (none found)"


def load_crls(paths: Sequence[Path]) -> list[x509.CertificateRevocationList]:
    """The CRLs (PEM or DER) that exist and parse; a CA that never revoked anything may have written none yet."""
    crls = []
    for path in paths:
        try:
            data = path.read_bytes()
            crls.append(x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                        else x509.load_der_x509_crl(data))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("CRL %s cannot be read (%s): revocation not checked against it", path, exc)
    return crls


# warnings.catch_warnings() swaps process-wide filters: two threads loading at once (a verifier and a prober)
# would restore each other's filters mid-load and let the warning escape.
_BUNDLE_LOCK = threading.Lock()


def _load_pem_bundle(path: Path) -> list[x509.Certificate]:
    with _BUNDLE_LOCK, warnings.catch_warnings():
        # Distribution bundles still hold a few old roots with non-positive serial numbers; cryptography warns
        # about each, which would drown the output (and fail tests run with warnings as errors).
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(path.read_bytes())


def _tls_context(key_type: str | None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)  # judged afterwards with cryptography, so broken chains are still seen
    context.set_min_proto_version(SSL.TLS1_VERSION)
    if key_type is not None:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)  # TLS 1.3 suites do not name the key type
    context.set_cipher_list(_CIPHERS[key_type])
    return context


_VERSIONS = {"TLSv1": SSL.TLS1_VERSION, "TLSv1.1": SSL.TLS1_1_VERSION}


def _version_context(version: str) -> SSL.Context:
    """A context offering ``version`` only (SECLEVEL=0: OpenSSL 3 refuses TLS 1.0/1.1 otherwise)."""
    context = _tls_context(None)
    context.set_min_proto_version(_VERSIONS[version])
    context.set_max_proto_version(_VERSIONS[version])
    return context


class Prober:
    """One probing run: the TLS contexts, the trust anchors and the per-chain judgement cache, shared by all
    targets.  ``now`` is fixed for the run, which is what makes a judgement cacheable."""

    def __init__(self, options: ProbeOptions, *, now: datetime) -> None:
        self.options = options
        self.now = now
        self.roots, self.trust_source = load_trust_anchors(options.ca_file, options.issuer_roots)
        self.crls = load_crls(options.crl_files)
        key_types: list[str | None] = (
            ["rsa", "ecdsa"] if options.key_type == "all" else [options.key_type]
        )
        self.key_types = key_types
        self.contexts = {key_type: _tls_context(key_type) for key_type in key_types}
        self.floor_contexts = {version: _version_context(version) for version in options.refuse_tls}
        self._judgements: dict[tuple[tuple[bytes, ...], str], ChainJudgement] = {}

    async def probe(self, target: Target, *, address: str | None = None, begun: float | None = None) -> ProbeResult:
        """``begun``: when the target's deadline began (``time.monotonic()``), if before now: the lean path's
        attempt (:mod:`certkeeper.probe.lean`) counts against ``--timeout`` too."""
        started = time.monotonic() if begun is None else begun
        progress = Progress(transcript=[] if self.options.verbose else None)
        fetches: list[Fetch] = []
        failures: list[Finding] = []
        try:
            async with asyncio.timeout_at(started + self.options.timeout):  # the loop's clock is monotonic()
                for key_type in self.key_types:
                    try:
                        fetches.append(await self._fetch(target, address, key_type, progress))
                    except _ProbeFailure as failure:
                        if len(self.key_types) > 1 and failure.code == TLS_HANDSHAKE_FAILED:
                            # With --key-type all a server without one of the two certificates is normal.
                            failures.append(Finding(TLS_HANDSHAKE_FAILED, "INFO",
                                                    f"no {key_type} certificate offered: {failure.message}"))
                            continue
                        raise
                if fetches:
                    failures += await self._check_floor(target, address, progress)
        except TimeoutError:
            failures.append(timeout_finding(target, self.options.timeout, progress.stage, progress.received,
                                            progress.partial))
        except _ProbeFailure as failure:
            failures.append(Finding(failure.code, "CRITICAL", failure.message))
        except Exception as exc:  # a bug in certkeeper, not a server problem: UNKNOWN, as plugins do
            log.error("internal error probing %s: %r", target.text, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            failures.append(Finding(INTERNAL_ERROR, "UNKNOWN", f"internal error: {exc!r}"))
        if not fetches and failures and all(f.severity == "INFO" for f in failures):
            failures = [Finding(TLS_HANDSHAKE_FAILED, "CRITICAL", "; ".join(f.message for f in failures))]
        return self._result(target, address, fetches, failures, progress, time.monotonic() - started)

    async def _check_floor(self, target: Target, address: str | None, progress: Progress) -> list[Finding]:
        """One handshake capped at each refused version (``--require-no-tls1_1``): accepted is CRITICAL."""
        findings = []
        for version, context in self.floor_contexts.items():
            try:
                await self._fetch(target, address, None, progress, context=context)
            except _ProbeFailure as failure:
                if failure.code != TLS_HANDSHAKE_FAILED:
                    raise
                continue
            findings.append(Finding(TLS_VERSION_TOO_OLD, "CRITICAL",
                                    f"the server accepts {version}, which RFC 8996 deprecates: set its minimum "
                                    "TLS version to 1.2"))
        return findings

    async def _fetch(self, target: Target, address: str | None, key_type: str | None,
                     progress: Progress, *, context: SSL.Context | None = None) -> Fetch:
        host = address or target.host
        progress.stage = connecting_stage(target, address)
        try:
            reader, writer = await asyncio.open_connection(host, target.port, limit=MAX_LINE)
        except OSError as exc:
            raise _ProbeFailure(CONNECTION_FAILED, f"cannot connect to {target.address}"
                                f"{f' ({address})' if address else ''}: {os_reason(exc)}") from None
        try:
            if target.tls == "starttls" and target.dialect is not None:
                conversation = _StreamConversation(reader, writer, progress, target.dialect)
                try:
                    await negotiate_starttls(target.dialect, conversation,
                                             ehlo_name=ehlo_name(writer.get_extra_info("sockname")))
                except DialogueError as exc:
                    raise _ProbeFailure(exc.code, exc.message) from None
                except OSError as exc:
                    raise _ProbeFailure(CONNECTION_FAILED, f"the connection failed while {progress.stage}: "
                                                           f"{os_reason(exc)}") from None
            progress.stage = "in the TLS handshake" + (f" (offering only {key_type} certificates)" if key_type else "")
            server_name = self.options.servername or target.host
            send_sni = self.options.sni and not is_ip_literal(server_name)
            ders, version, cipher = await self._handshake(reader, writer, context or self.contexts[key_type],
                                                          server_name if send_sni else None, progress)
        finally:
            writer.close()
        return Fetch(key_type, version, cipher, self._judge(ders, self.options.servername or target.host))

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: SSL.Context,
                         server_name: str | None, progress: Progress) -> tuple[tuple[bytes, ...], str, str]:
        connection = SSL.Connection(context, None)
        connection.set_connect_state()
        if server_name:
            connection.set_tlsext_host_name(encode_host_name(server_name))  # RFC 6066 §3: never for IP literals
        received = 0
        first = b""
        while True:
            try:
                connection.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            except SSL.Error as exc:
                raise _ProbeFailure(TLS_HANDSHAKE_FAILED, f"the TLS handshake failed: {_openssl_reason(exc)}"
                                                          f"{_plaintext_hint(first)}") from None
            if done:
                _queue_close_notify(connection)  # behind our last flight: one write carries both
            outgoing = _drain(connection)
            try:
                if outgoing:
                    writer.write(outgoing)
                    await writer.drain()
                if done:
                    break
                data = await reader.read(65536)
            except OSError as exc:
                raise _ProbeFailure(TLS_HANDSHAKE_FAILED, f"the connection failed in the TLS handshake: "
                                                          f"{os_reason(exc)}{_plaintext_hint(first)}") from None
            if not data:
                raise _ProbeFailure(TLS_HANDSHAKE_FAILED, "the server closed the connection in the TLS handshake"
                                                          f"{_plaintext_hint(first)}")
            first = first or data[:64]
            received += len(data)
            if received > MAX_HANDSHAKE_BYTES:
                raise _ProbeFailure(TLS_HANDSHAKE_FAILED, f"the server sent more than {MAX_HANDSHAKE_BYTES // 1024} "
                                                          "KiB without completing the TLS handshake")
            connection.bio_write(data)
        chain = connection.get_peer_cert_chain() or []
        ders = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate) for certificate in chain)
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name() or ""
        progress.record(f"TLS: {version} {cipher}, {len(ders)} certificate(s)")
        if not ders:
            raise _ProbeFailure(PROTOCOL_ERROR, "the server completed the handshake without a certificate")
        return ders, version, cipher

    def _judge(self, ders: tuple[bytes, ...], hostname: str) -> ChainJudgement:
        key = (ders, hostname.lower())
        judgement = self._judgements.get(key)
        if judgement is None:
            try:
                certificates = [x509.load_der_x509_certificate(der) for der in ders]
            except ValueError as exc:
                raise _ProbeFailure(PROTOCOL_ERROR, f"the server sent a malformed certificate ({exc})") from None
            judgement = judge_chain(certificates, hostname=hostname, roots=self.roots,
                                    trust_source=self.trust_source, now=self.now,
                                    warning_days=self.options.warning_days, critical_days=self.options.critical_days,
                                    scale=self.options.scale_thresholds, crls=self.crls)
            self._judgements[key] = judgement
        return judgement

    def _result(self, target: Target, address: str | None, fetches: list[Fetch], failures: list[Finding],
                progress: Progress, elapsed: float) -> ProbeResult:
        if progress.transcript is not None and fetches:
            for index, summary in enumerate(fetches[0].judgement.chain, 1):
                progress.record(f"chain #{index}: '{summary.subject}' from '{summary.issuer}' until "
                                f"{summary.not_after:%Y-%m-%d %H:%M} UTC, {summary.key_type}, "
                                f"sha256 {summary.fingerprint_sha256}")
        return assemble(target, address, fetches, failures, several_key_types=len(self.key_types) > 1,
                        expected_fingerprints=self.options.expected_fingerprints,
                        transcript=progress.transcript or (), elapsed=elapsed)


def _queue_close_notify(connection: SSL.Connection) -> None:
    """The close_notify alert (RFC 8446 §6.1) into the outgoing BIO, so the server logs a clean end of the
    connection, not an unexpected EOF; the probe has what it came for once the handshake is done."""
    with contextlib.suppress(SSL.Error):
        connection.shutdown()


def _drain(connection: SSL.Connection) -> bytes:
    """What OpenSSL wrote to its outgoing memory BIO.  A memory BIO hands out all it holds up to the size asked
    for, so a short read has emptied it: no further read (and WantReadError) to find that out."""
    chunks = []
    while True:
        try:
            chunk = connection.bio_read(_BIO_READ)
        except SSL.WantReadError:
            break
        chunks.append(chunk)
        if len(chunk) < _BIO_READ:
            break
    return b"".join(chunks)


def _openssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's error queue as words: ``[('SSL routines', '', 'wrong version number')]`` -> the reasons."""
    if isinstance(exc, SSL.SysCallError):
        return "the connection was reset" if exc.args and exc.args[0] != -1 else "unexpected end of the connection"
    if exc.args and isinstance(exc.args[0], list):
        reasons = [str(entry[-1]) for entry in exc.args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return str(exc) or type(exc).__name__


# The record types of TLS (RFC 8446 section 5.1; heartbeat, RFC 6520): a server sending one speaks TLS, however badly
_TLS_RECORD_TYPES = {b"\x14", b"\x15", b"\x16", b"\x17", b"\x18"}


def _plaintext_hint(first: bytes) -> str:
    """When the 'TLS' server answered in plain text, say which protocol it speaks and what to do."""
    if not first or first[:1] in _TLS_RECORD_TYPES:
        return ""
    line = first.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    if first.startswith(b"HTTP/"):
        return f" (the server speaks HTTP: {line!r})"
    if first.startswith((b"220", b"* OK", b"+OK", b'"IMPLEMENTATION"')):
        return (f" (the server answered in plain text, {line!r}: this port uses STARTTLS; "
                "try smtp://, imap://, pop3://, sieve:// or --starttls)")
    return f" (the server answered with non-TLS data {first[:16]!r})"


async def probe_target(target: Target, options: ProbeOptions, *, now: datetime,
                       address: str | None = None) -> ProbeResult:
    """Probe one endpoint (at ``address`` instead of resolving its host, when given)."""
    return await Prober(options, now=now).probe(target, address=address)


async def probe_many(targets: Sequence[Target], options: ProbeOptions, *, now: datetime,
                     concurrency: int = 50, begun: float | None = None) -> list[ProbeResult]:
    """Probe concurrently, at most ``concurrency`` at a time; results in input order.  ``begun``: as for
    :meth:`Prober.probe` (for one target the lean path handed over).

    ``concurrency`` workers take the targets in turn, so only that many probes exist at once (5,000 targets are
    not 5,000 waiting tasks: a tenth of the peak memory of a large ``check --file``).
    """
    prober = Prober(options, now=now)
    results: list[ProbeResult | None] = [None] * len(targets)
    queue = iter(enumerate(targets))

    async def worker() -> None:
        for index, target in queue:  # one thread: next() on the shared iterator never interleaves
            results[index] = await prober.probe(target, begun=begun)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(targets))))))
    return [result for result in results if result is not None]


def probe_sync(targets: Sequence[Target], options: ProbeOptions, *, now: datetime,
               concurrency: int = 50, begun: float | None = None) -> list[ProbeResult]:
    """:func:`probe_many` for callers without an event loop (the CLI, the verifier after a reload)."""
    return asyncio.run(probe_many(targets, options, now=now, concurrency=concurrency, begun=begun))
