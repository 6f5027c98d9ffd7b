"""One connection of the probe: connect, the STARTTLS dialogue and the TLS handshake, driven by the event loop's
reader and writer callbacks on a non-blocking socket.

This is the only module of certkeeper that touches pyOpenSSL, and with :mod:`certkeeper.probe.lean` the only one
of the probe that opens sockets.

Why callbacks, not streams
    A fetch is a handful of small reads and writes.  Over asyncio's streams each one is a future, a task step, a
    transport call and a protocol call; here each is one ``recv`` or ``send`` in a callback that also decides
    what comes next, and a fetch is one future, resolved once.  The dialogue is already a state machine
    (:func:`certkeeper.probe.dialects.dialogue`), the handshake is OpenSSL's: this module only moves bytes
    between them and the socket.

Why pyOpenSSL, driven through memory BIOs
    Judging a server means seeing the chain *it sent*, including broken ones: Python 3.11's ``ssl`` hands out only
    the leaf (``get_unverified_chain()`` arrives in 3.13).  ``OpenSSL.SSL.Connection`` created without a socket
    works on two memory BIOs, fed from the socket here, and ``get_peer_cert_chain()`` gives the whole served chain.
    Verification is deliberately off in OpenSSL (``VERIFY_NONE``) so broken chains still complete the handshake;
    the engine judges the chain with ``cryptography`` afterwards.

Limits against hostile servers
    Lines are at most :data:`~certkeeper.probe.conversation.MAX_LINE` bytes (as ``StreamReader.readuntil`` with
    that limit counts them), the dialogue at most ``MAX_DIALOGUE_BYTES``, the handshake at most
    :data:`MAX_HANDSHAKE_BYTES` (OpenSSL itself refuses a certificate list over 100 KiB).  The deadline is the
    caller's: cancelling the future closes the socket (:meth:`Wire.close`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Sequence

from OpenSSL import SSL, crypto

from certkeeper.probe.conversation import MAX_LINE, DialogueError, Progress
from certkeeper.probe.result import CONNECTION_FAILED, PROTOCOL_ERROR, TLS_HANDSHAKE_FAILED
from certkeeper.probe.verdict import connect_reason, ehlo_name, os_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio

    from certkeeper.probe.dialects import Dialogue
    from certkeeper.targets import Dialect

    # (family, type, protocol, canonical name, socket address), as getaddrinfo gives them
    SocketAddress = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
    Address = tuple[socket.AddressFamily, socket.SocketKind, int, str, SocketAddress]
    Served = tuple[tuple[bytes, ...], str, str]  # the chain as DER, the TLS version, the cipher suite

MAX_HANDSHAKE_BYTES = 1024 * 1024
_RECEIVE = 65536
_BIO_READ = 65536

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
Context = SSL.Context  # what the engine holds for each key type and refused version
_VERSIONS = {"TLSv1": SSL.TLS1_VERSION, "TLSv1.1": SSL.TLS1_1_VERSION}


class ProbeFailure(Exception):
    """The probe could not get a certificate; becomes a CRITICAL finding with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def client_context(key_type: str | None) -> SSL.Context:
    """The handshake's context: every version from TLS 1.0 (TLS 1.2 at most with a key type), no verification."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)  # judged afterwards with cryptography, so broken chains are still seen
    context.set_min_proto_version(SSL.TLS1_VERSION)
    if key_type is not None:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)  # TLS 1.3 suites do not name the key type
    context.set_cipher_list(_CIPHERS[key_type])
    return context


def version_context(version: str) -> SSL.Context:
    """A context offering ``version`` only (SECLEVEL=0: OpenSSL 3 refuses TLS 1.0/1.1 otherwise)."""
    context = client_context(None)
    context.set_min_proto_version(_VERSIONS[version])
    context.set_max_proto_version(_VERSIONS[version])
    return context


def numeric_addresses(host: str, port: int) -> Sequence[Address] | None:
    """``host``'s address when it is an IP literal (scope ids included), without a lookup; else None."""
    try:
        # As bytes: a str host makes getaddrinfo load the idna codec, even for an address
        return socket.getaddrinfo(host.encode("ascii"), port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None


class Wire:
    """One fetch: connect to each address in turn, run the dialogue if there is one, complete the handshake, and
    resolve :attr:`done` with what the server served, or with a :class:`ProbeFailure`."""

    __slots__ = ("_addresses", "_buffer", "_connection", "_context", "_dialect", "_errors", "_first", "_key_type",
                 "_loop", "_pending", "_received", "_server_name", "_sock", "_steps", "_where", "done", "progress")

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: Sequence[Address], *, where: str,
                 dialect: Dialect | None, context: SSL.Context, key_type: str | None, server_name: bytes | None,
                 progress: Progress) -> None:
        self._loop = loop
        self._addresses = iter(addresses)
        self._where = where  # "smtp://host:25 (address)": what "cannot connect to" names
        self._dialect = dialect
        self._context = context
        self._key_type = key_type  # the only key type the context offers, if it is one
        self._server_name = server_name
        self.progress = progress
        self.done: asyncio.Future[Served] = loop.create_future()
        self._errors: list[OSError] = []
        self._sock: socket.socket | None = None
        self._steps: Dialogue | None = None
        self._buffer = b""  # received and not yet taken by the dialogue
        self._pending = b""  # to send, once the socket takes more
        self._connection: SSL.Connection | None = None
        self._first = b""  # the first bytes received in the TLS handshake, for the plain-text hint
        self._received = 0
        self._connect_next()

    def close(self) -> None:
        """Unregister and close the socket (after the fetch, or when the caller gave up: the deadline)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())  # connecting, or sending what the socket had not taken
            sock.close()

    # --- connecting ------------------------------------------------------------------------------------

    def _connect_next(self) -> None:
        for family, kind, proto, _, address in self._addresses:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                self._errors.append(exc)
                continue
            try:
                sock.setblocking(False)
                if family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
                code = sock.connect_ex(address)
            except OSError as exc:  # most failures are connect_ex's number; a few are raised
                sock.close()
                self._errors.append(exc)
                continue
            self._sock = sock
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                self._loop.add_writer(sock.fileno(), self._guarded, self._on_connected, address, None)
            else:
                self._guarded(self._on_connected, address, code)
            return
        self._fail(CONNECTION_FAILED, f"cannot connect to {self._where}: {connect_reason(self._errors)}")

    def _guarded(self, callback: Callable[..., None], *args: object) -> None:
        """Run one of the event loop's callbacks: a bug in certkeeper ends the fetch, and the caller reports it
        (UNKNOWN), instead of the loop logging it and the fetch waiting for its deadline."""
        try:
            callback(*args)
        except Exception as exc:
            self._end(exc)

    def _on_connected(self, address: object, code: int | None) -> None:
        sock = self._sock
        if sock is None:
            return
        if code is None:
            self._loop.remove_writer(sock.fileno())
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._errors.append(OSError(code, f"Connect call failed {address}"))
            self._sock = None
            sock.close()
            self._connect_next()
            return
        self._loop.add_reader(sock.fileno(), self._guarded, self._on_readable)
        if self._dialect is None:
            self._start_tls()
            return
        from certkeeper.probe.dialects import dialogue  # a STARTTLS target only: the parsers cost 3 ms to import

        try:
            own: object = sock.getsockname()
        except OSError:  # reset already: the dialogue's first read says so
            own = None
        try:
            self._steps = dialogue(self._dialect, ehlo_name=ehlo_name(own))
            self._step(next(self._steps))
        except StopIteration:
            self._start_tls()
        except DialogueError as exc:
            self._fail(exc.code, exc.message)

    # --- the dialogue ----------------------------------------------------------------------------------

    def _step(self, step: str | None) -> None:
        """Run the dialogue until it waits for a line not received yet (StopIteration: it has ended)."""
        steps = self._steps
        assert steps is not None
        progress, dialect = self.progress, self._dialect
        assert dialect is not None
        while True:
            if step is not None:  # a line to send
                if not self._send(progress.sending(step)):
                    return
                step = steps.send("")
                continue
            progress.waiting(dialect)
            buffer = self._buffer
            end = buffer.find(b"\n")
            if end > MAX_LINE or (end < 0 and len(buffer) > MAX_LINE):
                raise progress.too_long(dialect)
            if end < 0:
                return
            line, self._buffer = buffer[:end + 1], buffer[end + 1:]
            progress.partial = len(self._buffer)
            step = steps.send(progress.received_line(line, dialect))

    def _dialogue_data(self, data: bytes) -> None:
        self._buffer += data
        self.progress.partial = len(self._buffer)
        try:
            self._step(None)
        except StopIteration:
            self._start_tls()
        except DialogueError as exc:
            self._fail(exc.code, exc.message)

    # --- the TLS handshake -----------------------------------------------------------------------------

    def _start_tls(self) -> None:
        kind = self._key_type
        self.progress.stage = "in the TLS handshake" + (f" (offering only {kind} certificates)" if kind else "")
        connection = self._connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)  # RFC 6066 §3: never for IP literals
        leftover, self._buffer = self._buffer, b""
        self.progress.partial = 0
        self._pump()
        if leftover and not self.done.done():  # what the server sent after its STARTTLS reply: TLS, or junk
            self._tls_data(leftover)

    def _tls_data(self, data: bytes) -> None:
        connection = self._connection
        assert connection is not None
        self._first = self._first or data[:64]
        self._received += len(data)
        if self._received > MAX_HANDSHAKE_BYTES:
            self._fail(TLS_HANDSHAKE_FAILED, f"the server sent more than {MAX_HANDSHAKE_BYTES // 1024} KiB without "
                                             "completing the TLS handshake")
            return
        connection.bio_write(data)
        self._pump()

    def _pump(self) -> None:
        """One turn of the handshake: let OpenSSL take what arrived, send what it wrote, finish when it is done."""
        connection = self._connection
        assert connection is not None
        try:
            connection.do_handshake()
            finished = True
        except SSL.WantReadError:
            finished = False
        except SSL.Error as exc:
            self._fail(TLS_HANDSHAKE_FAILED, f"the TLS handshake failed: {_openssl_reason(exc)}"
                                             f"{_plaintext_hint(self._first)}")
            return
        if finished:
            _queue_close_notify(connection)  # behind our last flight: one send carries both
        outgoing = _drain(connection)
        if outgoing and not self._send(outgoing):
            return
        if finished:
            self._finish(connection)

    def _finish(self, connection: SSL.Connection) -> None:
        chain = connection.get_peer_cert_chain() or []
        ders = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate) for certificate in chain)
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name() or ""
        self.progress.record(f"TLS: {version} {cipher}, {len(ders)} certificate(s)")
        if not ders:
            self._fail(PROTOCOL_ERROR, "the server completed the handshake without a certificate")
            return
        # What the socket has not taken yet (the last flight, a close_notify) is let go: the chain is what the
        # probe came for, and a server that stopped reading has no claim on a polite ending.
        self.close()
        if not self.done.done():
            self.done.set_result((ders, version, cipher))

    # --- the socket ------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(_RECEIVE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(exc)
            return
        if self._connection is not None:
            if not data:
                self._fail(TLS_HANDSHAKE_FAILED, "the server closed the connection in the TLS handshake"
                                                 f"{_plaintext_hint(self._first)}")
                return
            self._tls_data(data)
        elif not data:
            closed = self.progress.closed(self._buffer)
            self._fail(closed.code, closed.message)
        else:  # the dialogue waits for a line whenever it is not sending one
            self._dialogue_data(data)

    def _send(self, data: bytes) -> bool:
        """Send ``data`` (what the socket does not take now, when it can); False when the connection failed."""
        sock = self._sock
        if sock is None:
            return False
        if self._pending:
            self._pending += data
            return True
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._broken(exc)
            return False
        if sent < len(data):
            self._pending = data[sent:]
            self._loop.add_writer(sock.fileno(), self._guarded, self._on_writable)
        return True

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(exc)
            return
        self._pending = self._pending[sent:]
        if not self._pending:
            self._loop.remove_writer(sock.fileno())

    def _broken(self, exc: OSError) -> None:
        if self._connection is not None:
            self._fail(TLS_HANDSHAKE_FAILED, f"the connection failed in the TLS handshake: {os_reason(exc)}"
                                             f"{_plaintext_hint(self._first)}")
        else:
            self._fail(CONNECTION_FAILED, f"the connection failed while {self.progress.stage}: {os_reason(exc)}")

    def _fail(self, code: str, message: str) -> None:
        self._end(ProbeFailure(code, message))

    def _end(self, exc: Exception) -> None:
        self.close()
        if not self.done.done():
            self.done.set_exception(exc)


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
