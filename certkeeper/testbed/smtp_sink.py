"""An SMTP server that keeps what it receives, for testing certkeeper's alert mail.

Built on aiosmtpd, in threads of this process. One listener speaks plain SMTP and offers
STARTTLS when given a certificate; a second one speaks implicit TLS (RFC 8314, "smtps").
With a username and password it offers AUTH PLAIN and LOGIN, only over TLS, and refuses mail
from clients that did not authenticate.

A restart keeps the ports, so a test can take the sink down, let certkeeper fail to deliver,
bring it back and see the alert arrive late.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from certkeeper.testbed.server import LOOPBACK, Server, allocate_port
from certkeeper.values import frozen


@frozen
class Delivery:
    """One accepted message with what the envelope and the session said about it."""

    mail_from: str
    recipients: tuple[str, ...]
    message: EmailMessage
    tls: bool
    login: str | None


class _Recorder:
    """aiosmtpd handler and authenticator: checks credentials, records deliveries."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self._sink.username
            and auth_data.password.decode() == self._sink.password
        )
        self._sink.log(f"AUTH {mechanism} {'accepted' if accepted else 'refused'}")
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        self._sink.logins.append((login, accepted))
        # handled=False: aiosmtpd answers a refusal with 535 itself (else the client waits for a reply)
        return AuthResult(success=accepted, auth_data=auth_data if accepted else None, handled=False)

    async def handle_MAIL(  # the hook name aiosmtpd looks up
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # Checked here rather than with aiosmtpd's auth_required, which would also refuse AUTH
        # on the implicit TLS listener (see _controller).
        if self._sink.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(  # the hook name aiosmtpd looks up
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)  # guaranteed by policy.default
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        delivery = Delivery(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            message=message,
            tls=server.transport is not None and server.transport.get_extra_info("ssl_object") is not None,
            login=login,
        )
        self._sink.record(delivery)
        return "250 2.0.0 OK: recorded"


class SmtpSink(Server):
    """Records mail in :attr:`deliveries`; :attr:`port` plain/STARTTLS, :attr:`tls_port` implicit TLS."""

    name = "SMTP sink"

    def __init__(
        self,
        directory: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """``cert_file``/``key_file`` enable STARTTLS and the implicit TLS listener;
        ``username``/``password`` require AUTH (PLAIN or LOGIN, over TLS) before MAIL FROM.
        """
        super().__init__(directory)
        if (cert_file is None) != (key_file is None):
            msg = "give both cert_file and key_file, or neither"
            raise ValueError(msg)
        if (username is None) != (password is None):
            msg = "give both username and password, or neither"
            raise ValueError(msg)
        if username is not None and cert_file is None:
            msg = "AUTH needs TLS: give cert_file and key_file too"
            raise ValueError(msg)
        self.cert_file = cert_file
        self.key_file = key_file
        self.username = username
        self.password = password
        self.port = 0
        self.tls_port = 0
        self.deliveries: list[Delivery] = []
        self.logins: list[tuple[str, bool]] = []  # every AUTH attempt: (login, accepted)
        self._arrived = threading.Condition()
        self._controllers: list[Controller] = []

    @property
    def log_path(self) -> Path:
        return self.directory / "smtp-sink.log"

    @property
    def messages(self) -> list[EmailMessage]:
        with self._arrived:
            return [delivery.message for delivery in self.deliveries]

    def log(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def record(self, delivery: Delivery) -> None:
        self.log(f"accepted from {delivery.mail_from} to {', '.join(delivery.recipients)}")
        with self._arrived:
            self.deliveries.append(delivery)
            self._arrived.notify_all()

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until at least ``count`` messages arrived; raise ``TimeoutError`` otherwise."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout=timeout):
                msg = f"{len(self.deliveries)} of {count} messages arrived in {timeout} s"
                raise TimeoutError(msg)
            return list(self.deliveries)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._arrived:
            self.deliveries.clear()

    def _allocate_ports(self) -> None:
        self.port = allocate_port()
        self.tls_port = allocate_port() if self.cert_file is not None else 0

    def _server_context(self) -> ssl.SSLContext | None:
        if self.cert_file is None or self.key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _controller(self, port: int, *, implicit_tls: bool) -> Controller:
        recorder = _Recorder(self)
        context = self._server_context()
        smtp_options: dict[str, Any] = {}
        if self.username is not None:
            smtp_options["authenticator"] = recorder.authenticate
        if implicit_tls:
            # aiosmtpd 1.4 counts only STARTTLS as TLS and would never offer AUTH here,
            # although the whole connection is TLS.
            smtp_options["auth_require_tls"] = False
        else:
            smtp_options.update(tls_context=context, auth_require_tls=True)
        return Controller(
            recorder,
            hostname=LOOPBACK,
            port=port,
            ssl_context=context if implicit_tls else None,
            server_hostname="sink.example.test",
            **smtp_options,
        )

    def _launch(self) -> None:
        listeners = [(self.port, False)] + ([(self.tls_port, True)] if self.tls_port else [])
        for port, implicit_tls in listeners:
            controller = self._controller(port, implicit_tls=implicit_tls)
            try:
                controller.start()
            except (OSError, RuntimeError) as error:
                self.log(f"listener on {LOOPBACK}:{port} failed: {error}")
                msg = f"cannot listen on {LOOPBACK}:{port}: {error}"
                raise self.fail(msg) from error
            self._controllers.append(controller)
        self.log(f"listening on {LOOPBACK}:{self.port}" + (f" and {self.tls_port} (TLS)" if self.tls_port else ""))

    def _terminate(self) -> None:
        for controller in self._controllers:
            controller.stop()
        self._controllers = []
        self.log("stopped")
