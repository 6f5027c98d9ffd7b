"""``certkeeper check`` of one endpoint, what a monitoring system starts as a process: a blocking socket, the
shared STARTTLS dialogue and the stdlib ``ssl`` handshake, no asyncio, pyOpenSSL or cryptography (importing
those costs about ten times the handshake an ``openssl s_client`` does).

How it sees what the engine sees
    OpenSSL verifies the chain in the handshake against ``--ca-file`` or the system store
    (:func:`certkeeper.tls.probe_context`); the host name is judged from the certificate's names, as the engine
    does.  When verification fails, the reason (OpenSSL's code) is kept and the endpoint is looked at once more
    without verification, to read what it serves.  The served certificates are read by
    :mod:`certkeeper.probe.der` and judged with the engine's own words (:mod:`certkeeper.probe.verdict`).

What it leaves to the engine
    :func:`check_one` returns None, and the caller runs the engine, whenever its answer could differ from the
    engine's in a word: a handshake that fails other than by verification (the engine words pyOpenSSL's reason), a
    certificate the DER reader does not render exactly, a weak key or signature, an extended key usage without
    serverAuth, a leaf without subject alternative names, a chain that does not verify for a reason other than its
    dates, a self-signed leaf or a missing intermediate, an unreadable ``--ca-file``.  A failure before TLS
    (refused, timed out, STARTTLS missing or refused, junk instead of a mail protocol) it reports itself: waiting
    out a second deadline would double a timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from certkeeper import tls
from certkeeper.deadline import Deadline
from certkeeper.probe.conversation import MAX_LINE, DialogueError, Progress
from certkeeper.probe.der import (
    ANY_EXTENDED_KEY_USAGE,
    SERVER_AUTH,
    STRONG_SIGNATURES,
    Certificate,
    DerError,
    read_pem_bundle,
    sha256_hex,
    subject_der,
)
from certkeeper.probe.result import (
    CERTIFICATE_EXPIRING,
    CHAIN_INCOMPLETE,
    CONNECTION_FAILED,
    PROTOCOL_ERROR,
    SELF_SIGNED,
    CertificateSummary,
    Finding,
    ProbeOptions,
    ProbeResult,
)
from certkeeper.probe.verdict import (
    ChainJudgement,
    Fetch,
    assemble,
    connect_reason,
    connecting_stage,
    date_finding,
    ehlo_name,
    name_findings,
    os_reason,
    summarize_facts,
    timeout_finding,
)
from certkeeper.targets import Target, encode_host_name, is_ip_literal


class HandOver(Exception):  # not an error: the engine takes the endpoint
    """The engine must judge this endpoint (see the module's docstring); the message says why."""


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def covers(options: ProbeOptions, targets: Sequence[Target]) -> bool:
    """Whether a run is one the lean path can do: one target and none of the options only the engine has."""
    return (len(targets) == 1 and options.key_type is None and not options.refuse_tls and not options.verbose
            and not options.crl_files and not options.issuer_roots and options.expected_fingerprints is None)


def check_one(target: Target, options: ProbeOptions, *, now: datetime,
              address: str | None = None) -> ProbeResult | None:
    """Probe ``target`` (at ``address`` instead of resolving its host, when given) as the engine would; None when
    the engine must (see the module's docstring)."""
    try:
        return _Probe(target, options, now, address).run()
    except HandOver:
        return None
    except Exception:  # a bug here must not cost the answer: the engine gives it (tests hold that none happens)
        return None


class _Probe:
    def __init__(self, target: Target, options: ProbeOptions, now: datetime, address: str | None) -> None:
        self.target = target
        self.address = address
        self.options = options
        self.now = now
        self.progress = Progress()
        self.deadline = Deadline(0.0)  # passed: run() starts the real one

    def run(self) -> ProbeResult:
        try:
            verified = tls.probe_context(self.options.ca_file, verify=True)
        except (OSError, tls.TlsError) as exc:
            msg = f"the CA file cannot be loaded ({exc})"
            raise HandOver(msg) from None
        started = time.perf_counter()
        self.deadline = Deadline(self.options.timeout)
        fetches: list[Fetch] = []
        failures: list[Finding] = []
        try:
            code: int | None = None
            try:
                version, cipher, ders = self._fetch(verified)
            except tls.UnverifiedChain as failed:
                code = failed.verify_code
                if failed.version and failed.chain:  # TLS 1.3: all the engine would see, in one handshake
                    version, cipher, ders = failed.version, failed.cipher, failed.chain
                else:  # TLS 1.2: the version and suite once more, unverified, within what is left of the deadline
                    try:
                        version, cipher, ders = self._fetch(tls.probe_context(None, verify=False))
                    except TimeoutError:  # a slow server, not a silent one: judged by what it sent, suite unknown
                        if not failed.chain:
                            raise
                        version, cipher, ders = "", "", failed.chain
            fetches.append(Fetch(None, version, cipher, self._judge(ders, code)))
        except TimeoutError:
            failures.append(timeout_finding(self.target, self.options.timeout, self.progress.stage,
                                            self.progress.received, self.progress.partial))
        except _Failure as failure:
            failures.append(Finding(failure.code, "CRITICAL", failure.message))
        return assemble(self.target, self.address, fetches, failures, several_key_types=False,
                        expected_fingerprints=None, transcript=(), elapsed=time.perf_counter() - started)

    def _fetch(self, context: tls.Context) -> tuple[str, str, list[bytes]]:
        target = self.target
        self.progress.stage = connecting_stage(target, self.address)
        sock = self._connect()
        try:
            if target.tls == "starttls" and target.dialect is not None:
                # Imported for a STARTTLS target only: an implicit-TLS one has no dialogue (probe.conversation).
                from certkeeper.probe.dialects import negotiate_starttls_sync

                conversation = _SocketConversation(sock, self.progress, target.dialect, self.deadline)
                try:
                    negotiate_starttls_sync(target.dialect, conversation, ehlo_name=ehlo_name(sock.getsockname()))
                except DialogueError as exc:
                    raise _Failure(exc.code, exc.message) from None
                except TimeoutError:
                    raise
                except OSError as exc:
                    raise _Failure(CONNECTION_FAILED, f"the connection failed while {self.progress.stage}: "
                                                      f"{os_reason(exc)}") from None
                if conversation.buffer:
                    msg = "the server sent more after its STARTTLS reply"
                    raise HandOver(msg)
            self.progress.stage = "in the TLS handshake"
            server_name = self.options.servername or target.host
            send_sni = self.options.sni and not is_ip_literal(server_name)
            self.deadline.arm(sock)
            try:
                connection = tls.handshake(sock, context, encode_host_name(server_name) if send_sni else None)
            except (tls.UnverifiedChain, TimeoutError):
                raise
            except OSError as exc:  # tls.TlsError too: the engine words the reasons as pyOpenSSL gives them
                msg = f"the TLS handshake failed: {exc}"
                raise HandOver(msg) from None
            try:
                version, cipher = connection.version() or "", (connection.cipher() or ("",))[0]
                ders = tls.served_chain(connection)
            finally:
                tls.close_notify(connection)
        finally:
            sock.close()
        if not ders:
            raise _Failure(PROTOCOL_ERROR, "the server completed the handshake without a certificate")
        return version, cipher, ders

    def _connect(self) -> socket.socket:
        """As asyncio's open_connection: each address in turn, its errors reported as asyncio reports them."""
        target = self.target
        where = target.address + (f" ({self.address})" if self.address else "")
        try:
            # As bytes (A-labels): a str host makes getaddrinfo load the idna codec, even for an address.
            addresses = socket.getaddrinfo(encode_host_name(self.address or target.host), target.port,
                                           type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _Failure(CONNECTION_FAILED, f"cannot connect to {where}: {os_reason(exc)}") from None
        errors: list[OSError] = []
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                self.deadline.arm(sock)
                sock.connect(address)
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            return sock
        raise _Failure(CONNECTION_FAILED, f"cannot connect to {where}: {connect_reason(errors)}")

    def _judge(self, ders: list[bytes], code: int | None) -> ChainJudgement:
        try:
            certificates = [Certificate(der) for der in ders]
        except DerError as exc:
            msg = f"a served certificate is not read here ({exc})"
            raise HandOver(msg) from None
        options = self.options
        summaries = tuple(summarize_facts(c.facts(), now=self.now, warning_days=options.warning_days,
                                          critical_days=options.critical_days, scale=options.scale_thresholds)
                          for c in certificates)
        leaf = certificates[0]
        if not leaf.names:
            msg = "a leaf without subject alternative names"
            raise HandOver(msg)
        findings: list[Finding] = []
        dated = False
        for index, (certificate, summary) in enumerate(zip(certificates, summaries, strict=True)):
            if index > 0 and certificate.self_issued():
                continue  # a root sent along is ignored by clients, as the engine does
            finding = date_finding(summary, index, self.now)
            if finding is not None:
                findings.append(finding)
                dated = dated or finding.code != CERTIFICATE_EXPIRING
            if certificate.signature_algorithm not in STRONG_SIGNATURES or (
                    certificate.key_type.startswith("rsa-") and certificate.key_bits < 2048):
                msg = "a weak key or signature"
                raise HandOver(msg)
        usages = leaf.extended_key_usage
        if usages is not None and not {SERVER_AUTH, ANY_EXTENDED_KEY_USAGE} & set(usages):
            msg = "an extended key usage without serverAuth"
            raise HandOver(msg)
        hostname = options.servername or self.target.host
        hostname_valid, mismatch = name_findings(summaries[0], hostname)
        if mismatch is not None:
            findings.append(mismatch)
        if code is not None:
            trust = self._trust_finding(certificates, summaries, code, dated)
            if trust is not None:
                findings.append(trust)
        return ChainJudgement(summaries, tuple(findings), code is None, hostname_valid)

    def _trust_finding(self, certificates: list[Certificate], summaries: Sequence[CertificateSummary], code: int,
                       dated: bool) -> Finding | None:
        """The engine's ``_trust_finding`` from OpenSSL's reason; HandOver where only the engine has the words."""
        if dated and code in (tls.VERIFY_CERT_HAS_EXPIRED, tls.VERIFY_CERT_NOT_YET_VALID):
            # OpenSSL built and trusted the chain and found a date wrong: the engine's "would it verify while
            # every certificate is valid" question, when such a moment exists.
            moment = max(s.not_before for s in summaries) + timedelta(seconds=1)
            if moment < min(s.not_after for s in summaries):
                return None
        fingerprints, subjects, source = self._anchors()
        leaf, summary = certificates[0], summaries[0]
        if leaf.self_issued() and summary.fingerprint_sha256 not in fingerprints:
            if code != tls.VERIFY_DEPTH_ZERO_SELF_SIGNED_CERT:
                msg = f"a self-issued leaf that OpenSSL rejects with code {code}"
                raise HandOver(msg)
            return Finding(SELF_SIGNED, "CRITICAL",
                           f"the certificate '{summary.subject}' is self-signed and not in {source}")
        if _last_served_issuer(certificates) is leaf and leaf.issuer.der not in subjects and code in (
                tls.VERIFY_UNABLE_TO_GET_ISSUER_CERT, tls.VERIFY_UNABLE_TO_GET_ISSUER_CERT_LOCALLY):
            return Finding(CHAIN_INCOMPLETE, "CRITICAL",
                           f"the server does not send the intermediate certificate '{leaf.issuer.common_name()}' "
                           f"that issued '{summary.subject}' (or that CA is not in {source}); clients that do not "
                           f"fetch missing intermediates cannot verify it: serve the full chain (fullchain.pem)")
        msg = f"verification failed with OpenSSL code {code}: the engine words why"
        raise HandOver(msg)

    def _anchors(self) -> tuple[set[str], set[bytes], str]:
        """The trust anchors' fingerprints and subject names (DER), and how messages name them."""
        ca_file = self.options.ca_file
        bundle = ca_file or tls.system_bundle()
        if bundle is None:
            msg = "no system trust store file"
            raise HandOver(msg)
        try:
            with open(bundle, "rb") as file:  # noqa: PTH123 (no pathlib on the path of one check: issue 23)
                ders = read_pem_bundle(file.read())
            subjects = {subject_der(der) for der in ders}
        except (OSError, DerError) as exc:
            msg = f"the trust anchors cannot be read here ({exc})"
            raise HandOver(msg) from None
        return ({sha256_hex(der) for der in ders}, subjects,
                str(ca_file) if ca_file is not None else "the system trust store")


def _last_served_issuer(certificates: list[Certificate]) -> Certificate:
    """As the engine's: follow issuer names from the leaf through the served certificates; the last one reached."""
    by_subject = {c.subject.der: c for c in certificates[1:]}
    current = certificates[0]
    seen = {id(current)}
    while current.issuer.der in by_subject and id(by_subject[current.issuer.der]) not in seen:
        current = by_subject[current.issuer.der]
        seen.add(id(current))
    return current


class _SocketConversation:
    """:class:`certkeeper.probe.dialects.SyncConversation` over a blocking socket: lines as the engine's
    :mod:`~certkeeper.probe.wire` takes them (``StreamReader.readuntil``'s rule with :data:`MAX_LINE`), under the
    target's deadline."""

    def __init__(self, sock: socket.socket, progress: Progress, dialect: str, deadline: Deadline) -> None:
        self.sock = sock
        self.progress = progress
        self.dialect = dialect
        self.deadline = deadline
        self.buffer = b""

    def read_line(self) -> str:
        self.progress.waiting(self.dialect)
        while True:
            end = self.buffer.find(b"\n")
            if end > MAX_LINE or (end < 0 and len(self.buffer) > MAX_LINE):
                raise self.progress.too_long(self.dialect)
            if end >= 0:
                line, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
                self.progress.partial = len(self.buffer)
                return self.progress.received_line(line, self.dialect)
            self.deadline.arm(self.sock)
            data = self.sock.recv(65536)
            if not data:
                raise self.progress.closed(self.buffer)
            self.buffer += data
            self.progress.partial = len(self.buffer)

    def send_line(self, line: str) -> None:
        data = self.progress.sending(line)
        self.deadline.arm(self.sock)
        self.sock.sendall(data)
