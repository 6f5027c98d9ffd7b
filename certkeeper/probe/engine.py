"""The probe's run: the trust anchors, the TLS contexts, one deadline per target over its fetches, the judgement
of each served chain (once per distinct chain), and many targets at a bounded concurrency.

Each fetch is one connection, a :class:`certkeeper.probe.wire.Wire` driven by the event loop's callbacks (the
socket, the STARTTLS dialogue and the pyOpenSSL handshake are there).  The chain it returns is judged with
``cryptography`` (:mod:`certkeeper.probe.judge`).

Limits against hostile servers
    One deadline per target (``asyncio.timeout``) covers resolving, connecting, the dialogue and every handshake;
    the byte limits are the wire's.  Every failure becomes a finding; only a bug in certkeeper yields UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

from certkeeper import tls
from certkeeper.errors import InputError
from certkeeper.probe.conversation import Progress
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
    os_reason,
    timeout_finding,
)
from certkeeper.probe.wire import Context, ProbeFailure, Wire, client_context, numeric_addresses, version_context
from certkeeper.targets import Target, encode_host_name, is_ip_literal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from certkeeper.probe.wire import Address

log = logging.getLogger("certkeeper.probe")

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

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
        self.contexts = {key_type: client_context(key_type) for key_type in key_types}
        self.floor_contexts = {version: version_context(version) for version in options.refuse_tls}
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
                    except ProbeFailure as failure:
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
        except ProbeFailure as failure:
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
            except ProbeFailure as failure:
                if failure.code != TLS_HANDSHAKE_FAILED:
                    raise
                continue
            findings.append(Finding(TLS_VERSION_TOO_OLD, "CRITICAL",
                                    f"the server accepts {version}, which RFC 8996 deprecates: set its minimum "
                                    "TLS version to 1.2"))
        return findings

    async def _fetch(self, target: Target, address: str | None, key_type: str | None,
                     progress: Progress, *, context: Context | None = None) -> Fetch:
        host = address or target.host
        progress.stage = connecting_stage(target, address)
        where = f"{target.address}{f' ({address})' if address else ''}"
        addresses: Sequence[Address] | None = numeric_addresses(host, target.port)
        if addresses is None:
            try:
                addresses = await asyncio.get_running_loop().getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ProbeFailure(CONNECTION_FAILED, f"cannot connect to {where}: {os_reason(exc)}") from None
        server_name = self.options.servername or target.host
        send_sni = self.options.sni and not is_ip_literal(server_name)
        wire = Wire(asyncio.get_running_loop(), addresses, where=where,
                    dialect=target.dialect if target.tls == "starttls" else None,
                    context=context or self.contexts[key_type], key_type=key_type,
                    server_name=encode_host_name(server_name) if send_sni else None, progress=progress)
        try:
            ders, version, cipher = await wire.done
        finally:
            wire.close()  # cancelled by the deadline: the socket is closed here
        return Fetch(key_type, version, cipher, self._judge(ders, server_name))

    def _judge(self, ders: tuple[bytes, ...], hostname: str) -> ChainJudgement:
        key = (ders, hostname.lower())
        judgement = self._judgements.get(key)
        if judgement is None:
            try:
                certificates = [x509.load_der_x509_certificate(der) for der in ders]
            except ValueError as exc:
                raise ProbeFailure(PROTOCOL_ERROR, f"the server sent a malformed certificate ({exc})") from None
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
