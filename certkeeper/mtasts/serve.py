"""The daemon's own HTTPS policy server: ``serve = "HOST:PORT"`` in ``[mta_sts.<domain>]``.

Serves ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` as ``text/plain`` with the certkeeper-managed
certificate named by ``certificate``.  Domains sharing one ``serve`` address share the listener; the certificate
is chosen by SNI and the policy by the name.  Each handshake looks up the certificate's ``current`` version, so a
renewal is served from the next connection on without a restart; each request reads the published policy from
the state (:mod:`certkeeper.mtasts.publish`), so a new policy is served as soon as it is published.

The TLS handshake runs in the request's thread, not in the accepting one: a client that connects and sends
nothing holds only its own thread, for at most :data:`HANDSHAKE_TIMEOUT`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from certkeeper import tls
from certkeeper.config import Config
from certkeeper.errors import CertkeeperError
from certkeeper.mtasts.policy import WELL_KNOWN_PATH
from certkeeper.values import frozen

log = logging.getLogger("certkeeper.mtasts")

HANDSHAKE_TIMEOUT = 10.0


@frozen
class Site:
    """What one policy host serves right now: the policy text (None: nothing published yet) and its key pair."""

    policy: str | None
    fullchain: Path | None
    privkey: Path | None


Sites = Callable[[], Mapping[str, Site]]  # policy host name (mta-sts.<domain>) -> Site


class _Contexts:
    """One server-side TLS context per distinct key pair, rebuilt when ``current`` points elsewhere."""

    def __init__(self, choose: Callable[[tls.TlsSocket, str | None, tls.Context], None]) -> None:
        self._choose = choose
        self._lock = threading.Lock()
        self._built: dict[tuple[str, str], tls.Context] = {}

    def for_site(self, site: Site) -> tls.Context | None:
        if site.fullchain is None or site.privkey is None:
            return None
        key = (os.path.realpath(site.fullchain), os.path.realpath(site.privkey))
        with self._lock:
            context = self._built.get(key)
            if context is None:
                try:
                    context = tls.server_context(Path(key[0]), Path(key[1]))  # TLS 1.2 or newer
                except (OSError, tls.TlsError) as exc:
                    log.error("MTA-STS policy server: cannot load %s / %s: %s", key[0], key[1], exc)
                    return None
                context.sni_callback = self._choose  # type: ignore[assignment]
                # A renewal's new version replaces the old context of that certificate (same host, new path).
                self._built = {key: context} | {k: v for k, v in self._built.items() if k[0] != key[0]}
            return context


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sites: Sites) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.sites = sites
        self.contexts = _Contexts(self._choose)
        self._thread: threading.Thread | None = None

    def _context_for(self, server_name: str | None) -> tls.Context | None:
        sites = self.sites()
        site = sites.get((server_name or "").lower())
        if site is None and sites:
            site = next(iter(sites.values()))  # no or unknown SNI: the first site's certificate
        return self.contexts.for_site(site) if site else None

    def _choose(self, secure: tls.TlsSocket, name: str | None, _: tls.Context) -> None:
        context = self._context_for(name)
        if context is not None:
            secure.context = context

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        initial = self._context_for(None)
        if initial is None:
            self.shutdown_request(request)
            return
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            secure = initial.wrap_socket(request, server_side=True)
        except (OSError, tls.TlsError) as exc:
            log.debug("MTA-STS policy server: handshake with %s failed: %s", client_address, exc)
            self.shutdown_request(request)
            return
        super().process_request_thread(secure, client_address)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="certkeeper-mta-sts", daemon=True)
        self._thread.start()
        log.info("serving MTA-STS policies on %s:%d", *self.server_address[:2])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server: PolicyServer
    server_version = "certkeeper"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower().rstrip(".")
        site = self.server.sites().get(host)
        if self.path.split("?", 1)[0] != WELL_KNOWN_PATH or site is None or site.policy is None:
            self._send(404, b"no MTA-STS policy here\n")
            return
        self._send(200, site.policy.encode(), body=body)

    def _send(self, status: int, data: bytes, *, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def parse_serve(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT``."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def start_policy_server(listen: str, sites: Sites) -> PolicyServer:
    """Listen on ``listen`` (port 0: a free one) and serve from a daemon thread."""
    server = PolicyServer(parse_serve(listen), sites)
    server.start()
    return server


def configured_sites(config: Config, listen: str) -> Sites:
    """The sites of every ``[mta_sts.<domain>]`` with ``serve = listen``, read afresh on each call: the published
    policy from the state, the key pair from the ``current`` version of the domain's ``certificate``."""
    from certkeeper.mtasts.policy import render_policy
    from certkeeper.mtasts.publish import load_state
    from certkeeper.store.versions import CertificateHome

    domains = [m for m in config.mta_sts.values() if m.serve == listen]

    def sites() -> dict[str, Site]:
        found: dict[str, Site] = {}
        for mta in domains:
            try:
                state = load_state(config.settings.state_dir, mta.domain)
            except CertkeeperError as exc:
                log.error("MTA-STS policy server: %s", exc)
                continue
            text = render_policy(state.publication.policy) if state.publication else None
            current = CertificateHome(config.settings.state_dir, mta.serve_certificate or "").current()
            pair = current.pairs[0] if current and current.pairs else None
            found[mta.policy_host] = Site(text, pair.fullchain if pair else None, pair.privkey if pair else None)
        return found

    return sites


def start_configured_servers(config: Config) -> list[PolicyServer]:
    """One listener per distinct ``serve`` address of the configuration."""
    listens = dict.fromkeys(m.serve for m in config.mta_sts.values() if m.serve)
    return [start_policy_server(listen, configured_sites(config, listen)) for listen in listens if listen]
