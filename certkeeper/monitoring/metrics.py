"""Prometheus metrics: the text exposition format, and a small HTTP server for ``metrics_listen``.

The names are the ones dashboards and alert rules already use: blackbox_exporter's ``probe_*`` per endpoint
(names and label values exactly as blackbox writes them: :mod:`certkeeper.monitoring.blackbox`),
ssl_exporter's ``ssl_file_cert_not_after`` / ``ssl_file_cert_not_before`` per installed certificate file, and
certkeeper's own ``certkeeper_*``.  Every endpoint series carries ``name`` (the certificate or ``[[watch]]``
entry) and ``endpoint`` labels.  No label value changes from day to day: ``certkeeper_endpoint_info`` has a
``reason`` code (the worst finding), not the message with its "expires in N days".  Expiry is reported whenever
a certificate was received, expired or untrusted too: monitoring that goes silent exactly when a certificate is
bad is no monitoring.

``probe_success`` is 1 when the last probe's status was OK or WARNING (a handshake happened and the chain and
name verified; WARNING is "expiring soon" or a weak key), 0 for CRITICAL and UNKNOWN.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.x509.oid import NameOID

from certkeeper import model, tls
from certkeeper.config import Config
from certkeeper.errors import CertkeeperError, InputError
from certkeeper.monitoring.blackbox import chain_info_labels, list_label, reason_code, tls_version_label
from certkeeper.permissions import check_trusted_file
from certkeeper.store import CertState, EndpointRecord, Store
from certkeeper.targets import is_ip_literal
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.mtasts.status import DomainStatus

log = logging.getLogger("certkeeper.monitoring.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SUCCESS_STATUSES = frozenset({"OK", "WARNING"})


@frozen
class InstalledCertificate:
    """The facts of one installed certificate (one per key type), as the lifecycle read them from disk."""

    name: str
    cn: str
    issuer_cn: str
    serial: str  # lowercase hex, as certkeeper writes serials everywhere
    dnsnames: tuple[str, ...]
    not_after: datetime
    file: str = ""  # the certificate file under current/, as ssl_exporter's ``file`` label
    not_before: datetime | None = None
    ips: tuple[str, ...] = ()
    ou: str = ""


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help_text = help_text
        self.samples: list[str] = []

    def add(self, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        rendered = ",".join(f'{key}="{escape_label_value(str(val))}"' for key, val in labels.items())
        self.samples.append(f"{self.name}{suffix}{{{rendered}}} {_number(value)}")

    def render(self) -> str:
        return "".join([f"# HELP {self.name} {self.help_text}\n", f"# TYPE {self.name} {self.kind}\n",
                        *(sample + "\n" for sample in self.samples)])


def escape_label_value(value: str) -> str:
    """The exposition format's escaping of label values: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(
    endpoints: Sequence[EndpointRecord],
    installed: Sequence[InstalledCertificate],
    states: Sequence[CertState],
    renewal_counts: Mapping[tuple[str, str], int],
    mta_sts: Sequence[DomainStatus] = (),
) -> str:
    """The whole exposition text from plain values (pure: the same input gives the same text)."""
    families = (*_endpoint_families(endpoints), *_installed_families(installed),
                *_renewal_families(states, renewal_counts), *(_mta_sts_families(mta_sts) if mta_sts else ()))
    return "".join(family.render() for family in families)


def _endpoint_families(endpoints: Sequence[EndpointRecord]) -> tuple[_Family, ...]:
    """blackbox_exporter's probe_* and certkeeper's own per-endpoint series."""
    earliest = _Family("probe_ssl_earliest_cert_expiry", "gauge",
                       "Earliest not_after (Unix time) in the chain the endpoint served.")
    last_chain = _Family("probe_ssl_last_chain_expiry_timestamp_seconds", "gauge",
                         "Earliest not_after (Unix time) in the verified chain the endpoint served.")
    chain_info = _Family("probe_ssl_last_chain_info", "gauge", "The leaf certificate the endpoint served.")
    tls_version = _Family("probe_tls_version_info", "gauge", "The TLS version negotiated with the endpoint.")
    success = _Family("probe_success", "gauge", "1 when the last probe verified the endpoint (OK or WARNING).")
    duration = _Family("probe_duration_seconds", "gauge", "How long the last probe of the endpoint took.")
    endpoint_info = _Family("certkeeper_endpoint_info", "gauge", "The last probe of each endpoint certkeeper "
                            "watches or manages: its status and the reason code of its worst finding.")
    stale = _Family("certkeeper_served_stale", "gauge", "1 when the endpoint serves another certificate than the "
                    "one installed.")
    probed_at = _Family("certkeeper_endpoint_last_probe_timestamp_seconds", "gauge",
                        "When the endpoint was last probed (Unix time).")
    tlsa = _Family("certkeeper_tlsa_match", "gauge", "1 when the served certificate matches the endpoint's TLSA "
                   "records (RFC 7672), 0 when records exist and it matches none; absent without DANE.")
    for record in sorted(endpoints, key=lambda r: (r.owner, r.endpoint)):
        base = {"name": record.owner, "endpoint": record.endpoint}
        details = record.details if isinstance(record.details, dict) else {}
        certificate = details.get("certificate") if isinstance(details.get("certificate"), dict) else None
        expiry = _earliest_expiry(record, certificate, details.get("chain"))
        if expiry is not None:
            earliest.add(base, expiry)
            if details.get("chain_valid") is True:
                last_chain.add(base, expiry)
        if certificate is not None:
            chain_info.add({**base, **chain_info_labels(certificate, record.fingerprint)}, 1)
        if details.get("tls_version"):
            tls_version.add({**base, "version": tls_version_label(str(details["tls_version"]))}, 1)
        success.add(base, 1 if record.status.upper() in _SUCCESS_STATUSES else 0)
        elapsed = details.get("elapsed_ms")
        if isinstance(elapsed, int | float) and not isinstance(elapsed, bool):
            duration.add(base, round(float(elapsed) / 1000, 6))
        endpoint_info.add({**base, "status": record.status, "reason": reason_code(details, record.status),
                           "fingerprint_sha256": record.fingerprint}, 1)
        stale.add(base, 1 if record.stale else 0)
        probed_at.add(base, _epoch(record.at))
        dane = details.get("dane") if isinstance(details.get("dane"), dict) else None
        if dane is not None and dane.get("status") in ("tlsa-valid", "tlsa-invalid"):
            tlsa.add(base, 1 if dane["status"] == "tlsa-valid" else 0)
    return (earliest, last_chain, chain_info, tls_version, success, duration, endpoint_info, stale, probed_at, tlsa)


def _installed_families(installed: Sequence[InstalledCertificate]) -> tuple[_Family, ...]:
    """ssl_exporter's file series for each installed certificate."""
    not_after = _Family("ssl_file_cert_not_after", "gauge",
                        "not_after (Unix time) of each installed certificate file.")
    not_before = _Family("ssl_file_cert_not_before", "gauge",
                         "not_before (Unix time) of each installed certificate file.")
    for cert in sorted(installed, key=lambda c: (c.name, c.serial)):
        # ssl_exporter's labels and formats: serial_no in decimal, lists as ",a,b,"; plus certkeeper's name.
        labels = {"name": cert.name, "file": cert.file, "serial_no": str(int(cert.serial, 16)),
                  "issuer_cn": cert.issuer_cn, "cn": cert.cn, "dnsnames": list_label(cert.dnsnames),
                  "ips": list_label(cert.ips), "emails": "", "ou": cert.ou}
        not_after.add(labels, _epoch(cert.not_after))
        if cert.not_before is not None:
            not_before.add(labels, _epoch(cert.not_before))
    return not_after, not_before


def _renewal_families(states: Sequence[CertState],
                      renewal_counts: Mapping[tuple[str, str], int]) -> tuple[_Family, ...]:
    # Text format 0.0.4 names a counter's family with its _total suffix, as client_python does.
    renewals = _Family("certkeeper_renewals_total", "counter", "Renewal attempts by outcome.")
    for (name, result), count in sorted(renewal_counts.items()):
        renewals.add({"name": name, "result": result}, count)
    last_success = _Family("certkeeper_last_renewal_success_timestamp_seconds", "gauge",
                           "When the certificate was last renewed successfully (Unix time).")
    next_check = _Family("certkeeper_next_renewal_timestamp_seconds", "gauge",
                         "When certkeeper will next look at renewing the certificate (Unix time).")
    for state in sorted(states, key=lambda s: s.name):
        if state.last_success_at is not None:
            last_success.add({"name": state.name}, _epoch(state.last_success_at))
        if state.next_check_at is not None:
            next_check.add({"name": state.name}, _epoch(state.next_check_at))
    return renewals, last_success, next_check


def _mta_sts_families(mta_sts: Sequence[DomainStatus]) -> tuple[_Family, ...]:
    policy_info = _Family("certkeeper_mta_sts_policy_info", "gauge",
                          "The MTA-STS policy certkeeper publishes for each domain: its id and mode.")
    mx_match = _Family("certkeeper_mta_sts_mx_match", "gauge",
                       "1 when every MX certificate's names match the published MTA-STS policy's mx patterns.")
    txt_in_step = _Family("certkeeper_mta_sts_txt_in_step", "gauge",
                          "1 when the _mta-sts TXT record announces the id of the published policy.")
    for domain in sorted(mta_sts, key=lambda d: d.domain):
        if domain.policy_id is not None:
            policy_info.add({"domain": domain.domain, "id": domain.policy_id, "mode": domain.mode or ""}, 1)
        mx_match.add({"domain": domain.domain}, 1 if domain.every_mx_matches else 0)
        txt_in_step.add({"domain": domain.domain}, 1 if domain.txt_in_step else 0)
    return policy_info, mx_match, txt_in_step


def installed_certificates(config: Config) -> list[InstalledCertificate]:
    """The facts of every installed certificate (each key type of each ``current`` version).

    A certificate not installed yet, or whose files cannot be read, is left out and logged: metrics are for
    seeing problems, and one unreadable folder must not hide the others.
    """
    from certkeeper import pki
    from certkeeper.store.versions import CertificateHome

    found: list[InstalledCertificate] = []
    for name in sorted(config.certificates):
        home = CertificateHome(config.settings.state_dir, name)
        try:
            version = home.current()
            if version is None:
                continue
            for pair in version.pairs:
                # The stable path under current/, as an operator would point ssl_exporter at it.
                file = home.current_link / pair.directory.relative_to(version.path) / "cert.pem"
                certificate = home.load_pair_certificate(pair)
                names = pki.subject_alternative_names(certificate)
                units = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
                found.append(InstalledCertificate(
                    name=name, cn=pki.common_name(certificate.subject),
                    issuer_cn=pki.common_name(certificate.issuer), serial=pki.serial_hex(certificate),
                    dnsnames=tuple(n for n in names if not is_ip_literal(n)), not_after=pki.not_after(certificate),
                    file=str(file), not_before=pki.not_before(certificate),
                    ips=tuple(n for n in names if is_ip_literal(n)), ou=str(units[0].value) if units else ""))
        except (CertkeeperError, OSError) as exc:
            log.warning("metrics: certificate %r left out: %s", name, exc)
    return found


def render_store_metrics(store: Store, installed: Sequence[InstalledCertificate] = (),
                         mta_sts: Sequence[DomainStatus] = ()) -> str:
    """:func:`render_metrics` over what the store holds: the daemon's ``render`` callable."""
    return render_metrics(store.endpoints(), installed, store.states(), store.renewal_counts(), mta_sts)


def _earliest_expiry(record: EndpointRecord, certificate: Mapping[str, Any] | None, chain: Any) -> float | None:
    candidates: list[float] = []
    if record.not_after is not None:
        candidates.append(_epoch(record.not_after))
    if certificate is not None:
        candidates += _times([certificate.get("not_after")])
    if isinstance(chain, list):
        candidates += _times(item.get("not_after") for item in chain if isinstance(item, dict))
    return min(candidates) if candidates else None


def _times(values: Iterable[Any]) -> list[float]:
    found: list[float] = []
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
        elif isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            found.append(_epoch(parsed))
        elif isinstance(value, datetime):
            found.append(_epoch(value))
    return found


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:  # the store writes UTC; a naive value here is UTC too
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- the HTTP endpoint ------------------------------------------------------------------------------------------


LOOPBACK = "127.0.0.1"
# Limits of the listener: a scraper sends one short request and goes.  Per-connection timeout and a connection
# cap keep idle or slow clients from taking the daemon's file descriptors (and with them its SIGHUP reload).
CONNECTION_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


@frozen
class ListenerSecurity:
    """Optional TLS and basic auth for the listener, from files (as node_exporter's ``--web.config.file``)."""

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    basic_auth_file: Path | None = None

    def tls_context(self) -> tls.Context | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        try:
            return tls.server_context(self.tls_cert_file, self.tls_key_file)
        except (OSError, tls.TlsError) as exc:
            where = f"{self.tls_cert_file}, {self.tls_key_file}"
            raise InputError(where, f"cannot serve metrics over TLS with this certificate and key: {exc}") from None

    def users(self) -> dict[str, str] | None:
        """``user:password`` lines of ``basic_auth_file`` (a secret file: 0600 or 0640), or None without one."""
        if self.basic_auth_file is None:
            return None
        check_trusted_file(self.basic_auth_file, "metrics_basic_auth_file", secret=True)
        try:
            lines = self.basic_auth_file.read_text().splitlines()
        except OSError as exc:
            raise InputError(str(self.basic_auth_file), f"cannot read metrics_basic_auth_file: {exc.strerror}") \
                from None
        users = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                where = f"{self.basic_auth_file}:{number}"
                raise InputError(where, "expected user:password")
            users[user] = password
        if not users:
            raise InputError(str(self.basic_auth_file), "no user:password line; every scrape would be refused")
        return users


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9466``, ``[::1]:9466``, ``localhost:9466``, ``:9466`` (loopback) -> (host, port).

    Every address only when asked for by name: ``0.0.0.0:9466`` or ``[::]:9466``.  The syntax is
    :func:`certkeeper.model.parse_listen`'s, which the configuration checks.
    """
    host, port = model.parse_listen(listen)
    return host or LOOPBACK, port


class MetricsServer:
    """A running metrics endpoint; :meth:`stop` shuts it down and joins its thread."""

    def __init__(self, server: _BoundedServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        self._thread.join(timeout=10)


class _Connection:
    """One accepted client: its socket (replaced by the TLS one once wrapped), idle until a request was read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle = True
        self.evicted = False  # hung up on; its thread closes it on its way out


class _BoundedServer(ThreadingHTTPServer):
    """At most ``MAX_CONNECTIONS`` clients; a new one pushes out the oldest that has not sent a request yet.

    So a flood of idle connections costs a bounded number of descriptors and never locks out a scraper, which
    sends its request at once.  TLS handshakes happen in the connection's thread, under its timeout, never in
    the accepting thread.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: tls.Context | None, users: Mapping[str, str] | None) -> None:
        self.context = context
        self.users = users
        self._connections: dict[int, _Connection] = {}
        self._guard = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._guard:
            live = [c for c in self._connections.values() if not c.evicted]
            if len(live) >= MAX_CONNECTIONS:
                oldest_idle = next((c for c in live if c.idle), None)
                if oldest_idle is None:  # every slot serves a request: this client waits for the next scrape
                    request.close()
                    return
                oldest_idle.evicted = True
                _hang_up(oldest_idle.sock)
            self._connections[id(request)] = _Connection(request)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONNECTION_TIMEOUT)
        if self.context is not None:
            try:
                wrapped = self.context.wrap_socket(request, server_side=True)
            except (OSError, tls.TlsError) as exc:
                log.debug("metrics: TLS handshake with %s failed: %s", client_address, exc)
                return
            self._update(request, wrapped)
            request = wrapped
        super().finish_request(request, client_address)

    def mark_busy(self, request: Any) -> None:
        with self._guard:
            for connection in self._connections.values():
                if connection.sock is request:
                    connection.idle = False

    def shutdown_request(self, request: Any) -> None:
        with self._guard:
            connection = self._connections.pop(id(request), None)
        if connection is not None and connection.sock is not request:
            _hang_up(connection.sock)  # the TLS socket that replaced it
            connection.sock.close()
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._guard:
            connections = list(self._connections.values())
        for connection in connections:
            _hang_up(connection.sock)

    def _update(self, raw: Any, wrapped: Any) -> None:
        with self._guard:
            connection = self._connections.get(id(raw))
            if connection is not None:
                connection.sock = wrapped


class _IPv6Server(_BoundedServer):
    address_family = socket.AF_INET6


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its own thread
        sock.shutdown(socket.SHUT_RDWR)


class GuardedHandler(BaseHTTPRequestHandler):
    """The plumbing under every page of the listener: timeout, the connection's state, basic auth."""

    timeout = CONNECTION_TIMEOUT
    server: _BoundedServer

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.server.mark_busy(self.connection)
        users = self.server.users
        if users is not None and not _authorized(self.headers.get("Authorization", ""), users):
            body = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="certkeeper", charset="UTF-8"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _authorized(header: str, users: Mapping[str, str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # Compared in constant time, for unknown users too, so timing tells nothing about the password.
    matches = hmac.compare_digest(password.encode(), users.get(user, "").encode())
    return matches and user in users


def start_metrics_server(listen: str, render: Callable[[], str], security: ListenerSecurity = ListenerSecurity(),
                         page: Callable[[], str] | None = None) -> MetricsServer:
    """Serve ``render()`` at ``/metrics`` and ``page()`` (the status page) at ``/`` on ``listen`` from a daemon
    thread; port 0 picks a free port.  ``security``'s basic auth guards both."""
    host, port = parse_listen(listen)
    context = security.tls_context()
    users = security.users()

    class Handler(GuardedHandler):
        server_version = "certkeeper"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/metrics":
                try:
                    body, status, kind = render().encode(), 200, CONTENT_TYPE
                except Exception:
                    log.exception("rendering metrics failed")
                    body, status, kind = b"rendering metrics failed; see the certkeeper log\n", 500, "text/plain"
            elif self.path.split("?", 1)[0] == "/" and page is not None:
                self._page()
                return
            elif self.path == "/":
                body, status, kind = b'<a href="/metrics">metrics</a>\n', 200, "text/html"
            else:
                body, status, kind = b"not found; try /metrics\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _page(self) -> None:
            from certkeeper.monitoring.statuspage import CONTENT_SECURITY_POLICY, CONTENT_TYPE

            assert page is not None
            try:
                body, status, kind = page().encode(), 200, CONTENT_TYPE
            except Exception:
                log.exception("rendering the status page failed")
                body, kind = b"rendering the status page failed; see the certkeeper log\n", "text/plain"
                status = 500
            headers = {"Content-Type": kind, "Content-Length": str(len(body)),
                       "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                       "Cache-Control": "no-store"}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server_class = _IPv6Server if ":" in host else _BoundedServer
    server = server_class((host, port), Handler, context, users)
    thread = threading.Thread(target=server.serve_forever, name="certkeeper-metrics", daemon=True)
    thread.start()
    scheme = "https" if context is not None else "http"
    log.info("serving metrics on %s://%s/metrics%s", scheme, listen, " (basic auth)" if users is not None else "")
    return MetricsServer(server, thread)
