"""Handing alert mail to an SMTP relay: the only module that speaks SMTP.

The alert path must not depend on what it reports on: when the relay's own certificate is the one that expired,
the mail goes through ``fallback_smtp_host``.  Credentials only ever travel over a connection whose certificate
verified: with ``smtp_tls_fallback = "unverified-no-auth"`` (opt-in) the configured relay is tried once more
without verification, and then without AUTH, and the notifier raises an alert about that.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper import tls
from certkeeper.config import AlertsConfig
from certkeeper.deadline import Deadline
from certkeeper.errors import AlertDeliveryFailed
from certkeeper.permissions import check_trusted_file
from certkeeper.values import frozen

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("certkeeper.alerts.notifier")

#: How :func:`send_message` names the opt-in last route; the notifier raises an alert when a mail went this way.
UNVERIFIED_ROUTE = "relay without certificate verification and without AUTH"

#: One reply of a relay (EHLO's is the longest, a dozen lines) may have at most this many lines and bytes.
MAX_REPLY_LINES = 100
MAX_REPLY_BYTES = 64 * 1024

# Stages a delivery names when it runs out of time; anything else sent with putcmd is an AUTH continuation
# (base64 credentials), which must never appear in a message.
_COMMANDS = frozenset({"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"})


@frozen
class _Route:
    name: str
    host: str
    port: int
    verify: bool


def send_message(config: AlertsConfig, message: EmailMessage) -> str:
    """Hand ``message`` to a relay; returns the route that accepted it or raises :class:`AlertDeliveryFailed`.

    Routes in order: the configured relay with its certificate verified (the system store, or ``smtp_ca_bundle``);
    ``fallback_smtp_host`` verified the same way; and only when the configured relay's certificate was what
    failed and ``smtp_tls_fallback = "unverified-no-auth"``, the configured relay again without verification and
    without AUTH (logged as a warning: better an alert over an unverified channel than silence about the very
    certificate that broke the relay; but a password sent there would be a gift to whoever answered).
    """
    password = _read_password(config.smtp_password_file)
    primary = _Route("relay", config.smtp_host, config.smtp_port, True)
    routes = [primary]
    if config.fallback_smtp_host:
        routes.append(_Route("fallback", config.fallback_smtp_host, config.fallback_smtp_port, True))
    attempts: list[str] = []
    certificate_failed = False
    for route in routes:
        try:
            _send_via(config, route, password, message)
        except tls.CertificateVerifyFailed as exc:
            certificate_failed = certificate_failed or route is primary
            attempts.append(f"{route.name} {route.host}:{route.port}: certificate not trusted: "
                            f"{exc.verify_message or exc}")
        except (OSError, smtplib.SMTPException) as exc:
            attempts.append(f"{route.name} {route.host}:{route.port}: {_describe(exc)}")
        else:
            return f"{route.name} {route.host}:{route.port}"
        log.warning("alert mail: %s", attempts[-1])
    if certificate_failed and config.smtp_security != "none":
        if config.smtp_tls_fallback != "unverified-no-auth":
            attempts.append('not resent without verification (smtp_tls_fallback = "unverified-no-auth" would, '
                            "without AUTH); fix the relay's certificate, or set smtp_ca_bundle or fallback_smtp_host")
            raise AlertDeliveryFailed(attempts)
        unverified = _Route(UNVERIFIED_ROUTE, primary.host, primary.port, False)
        log.warning("alert mail: sending to %s:%d WITHOUT verifying its certificate and without AUTH "
                    "(smtp_tls_fallback), because it failed verification and no verified route worked; fix the "
                    "relay's certificate or set smtp_ca_bundle / fallback_smtp_host", primary.host, primary.port)
        try:
            _send_via(config, unverified, None, message)
        except (OSError, smtplib.SMTPException) as exc:
            attempts.append(f"{unverified.name}: {_describe(exc)}")
        else:
            return f"{unverified.name} {unverified.host}:{unverified.port}"
    raise AlertDeliveryFailed(attempts)


def _send_via(config: AlertsConfig, route: _Route, password: str | None, message: EmailMessage) -> None:
    timeout = config.smtp_timeout.total_seconds()
    context = _tls_context(config.smtp_ca_bundle, verify=route.verify)
    client: smtplib.SMTP
    if config.smtp_security == "tls":
        client = _BoundedSMTPSSL(route.host, route.port, timeout=timeout, context=context)
    else:
        client = _BoundedSMTP(route.host, route.port, timeout=timeout)
    try:
        client.ehlo()
        if config.smtp_security == "starttls":
            if not client.has_extn("starttls"):
                # Never downgrade: a relay that stopped offering STARTTLS may be an attacker in the path.
                msg = "the relay does not offer STARTTLS (starttls-not-supported)"
                raise smtplib.SMTPNotSupportedError(msg)
            client.starttls(context=context)
            client.ehlo()
        # Credentials only over TLS whose certificate verified: never in clear, never to whoever answered.
        if config.smtp_username and password is not None and route.verify and config.smtp_security != "none":
            if client.has_extn("auth"):
                _authenticate(client, config.smtp_username, password)
            elif route.name == "relay":
                msg = "the relay does not offer AUTH, but smtp_username is set"
                raise smtplib.SMTPNotSupportedError(msg)
        client.send_message(message, from_addr=config.sender, to_addrs=list(config.to))
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


class RelayMisbehaved(smtplib.SMTPException):
    """The relay's answer broke a bound: a reply too long, or a delivery past ``smtp_timeout``."""


class _BoundedSMTP(smtplib.SMTP):
    """smtplib with one deadline for the whole delivery and a cap on each reply.

    smtplib's timeout is per socket read and its getreply keeps every line: a relay sending ``250-`` lines
    forever, or one byte at a time, would hold the alert path (and its memory) without end.  Here each read waits
    only for what is left of ``timeout``, and a reply stops at :data:`MAX_REPLY_LINES` / :data:`MAX_REPLY_BYTES`.
    """

    def __init__(self, host: str, port: int, *, timeout: float, **kwargs: Any) -> None:
        self._limit = timeout
        self._deadline = Deadline(timeout)
        self._stage = "connect"
        self._buffer = b""
        self._buffer_of: object = None
        super().__init__(host, port, timeout=timeout, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # noqa: ARG002 - smtplib's
        sock = socket.create_connection((host, port), self._deadline.remaining(self._late), self.source_address)
        self._stage = "the greeting"
        return sock

    def putcmd(self, cmd: str, args: str = "") -> None:
        if cmd.upper() in _COMMANDS:
            self._stage = cmd.upper()
        super().putcmd(cmd, args)

    def send(self, s: ReadableBuffer | str) -> None:
        if not self.sock:
            msg = "please run connect() first"
            raise smtplib.SMTPServerDisconnected(msg)
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        sys.audit("smtplib.send", self, data)
        self._deadline.arm(self.sock, self._late)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self._late() from None
        except OSError:
            self.close()
            msg = "Server not connected"
            raise smtplib.SMTPServerDisconnected(msg) from None

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        try:
            return super().starttls(*args, **kwargs)
        except TimeoutError:  # the handshake waits on the socket's timeout, the time left at the last read
            raise self._late() from None

    def getreply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        size = 0
        while True:
            line = self._readline()
            size += len(line)
            if len(lines) == MAX_REPLY_LINES or size > MAX_REPLY_BYTES:
                self.close()
                msg = (f"the answer to {self._stage} went on past {MAX_REPLY_LINES} lines or "
                       f"{MAX_REPLY_BYTES // 1024} KiB; not an SMTP relay, or a broken one")
                raise RelayMisbehaved(msg)
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                return -1, b"\n".join(lines)  # as smtplib: no continuation read after a broken code
            if line[3:4] != b"-":
                return code, b"\n".join(lines)

    def _readline(self) -> bytes:
        if self._buffer_of is not self.sock:  # STARTTLS replaced the socket: bytes sent before it are dropped
            self._buffer, self._buffer_of = b"", self.sock
        while (end := self._buffer.find(b"\n") + 1) == 0:
            if len(self._buffer) > MAX_REPLY_BYTES:
                self.close()
                msg = f"a line of the answer to {self._stage} went on past {MAX_REPLY_BYTES // 1024} KiB"
                raise RelayMisbehaved(msg)
            if not self.sock:
                msg = "Connection unexpectedly closed"
                raise smtplib.SMTPServerDisconnected(msg)
            self._deadline.arm(self.sock, self._late)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                raise self._late() from None
            except OSError as exc:
                self.close()
                msg = f"Connection unexpectedly closed: {exc}"
                raise smtplib.SMTPServerDisconnected(msg) from None
            if not chunk:
                self.close()
                msg = "Connection unexpectedly closed"
                raise smtplib.SMTPServerDisconnected(msg)
            self._buffer += chunk
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def _late(self) -> RelayMisbehaved:
        self.close()
        return RelayMisbehaved(f"the delivery did not finish within {self._limit:g} s (smtp_timeout); "
                               f"it stopped at {self._stage}")


class _BoundedSMTPSSL(_BoundedSMTP, smtplib.SMTP_SSL):
    """Implicit TLS (``smtp_security = "tls"``) with the same bounds; the handshake counts against the deadline."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = super()._get_socket(host, port, timeout)
        try:
            self._stage = "the TLS handshake"
            self._deadline.arm(raw, self._late)
            secure = self.context.wrap_socket(raw, server_hostname=host)
        except TimeoutError:
            raw.close()
            raise self._late() from None
        except BaseException:
            raw.close()
            raise
        self._stage = "the greeting"
        return secure


def _authenticate(client: smtplib.SMTP, username: str, password: str) -> None:
    # One attempt with PLAIN when offered (the channel is TLS in every sane setup): smtplib's login() would
    # retry a refused password with every other mechanism, multiplying failed logins on the relay's counters.
    if "PLAIN" in client.esmtp_features.get("auth", "").upper().split():
        client.user, client.password = username, password
        client.auth("PLAIN", client.auth_plain)
    else:
        client.login(username, password)


def _tls_context(ca_bundle: Path | None, *, verify: bool) -> tls.Context:
    return tls.client_context(ca_bundle, verify=verify)


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    check_trusted_file(path, "smtp_password_file")
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise AlertDeliveryFailed([f"{path}: cannot read smtp_password_file: {exc.strerror}"]) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"authentication failed ({exc.smtp_code}): check smtp_username and smtp_password_file"
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"the relay said {exc.smtp_code} {text}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"recipients refused: {', '.join(exc.recipients)}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
