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
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from certkeeper import tls
from certkeeper.config import AlertsConfig
from certkeeper.errors import AlertDeliveryFailed
from certkeeper.permissions import check_trusted_file

log = logging.getLogger("certkeeper.alerts.notifier")

#: How :func:`send_message` names the opt-in last route; the notifier raises an alert when a mail went this way.
UNVERIFIED_ROUTE = "relay without certificate verification and without AUTH"


@dataclass(frozen=True)
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
        client = smtplib.SMTP_SSL(route.host, route.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(route.host, route.port, timeout=timeout)
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
