"""Challenge responders: how certkeeper proves control of a name to an ACME CA (RFC 8555 section 8).

Four ways, one shape: :meth:`Responder.published` is a context manager that makes the answers visible to the
CA and, on leaving, takes them down again, also when the order failed.  Nothing here speaks ACME: the issuer
(:mod:`certkeeper.issuers.acme`, the only importer of ``acme``/``josepy``) hands over plain key
authorizations, so this module stays testable with a socket and a DNS server.

- :class:`StandaloneHttp01`: certkeeper's own listener (mail hosts often run no web server).  One listener per
  (address, port) in the process, shared by every order in flight: the daemon renews concurrently in threads,
  and a port can only be bound once.
- :class:`WebrootHttp01`: files under ``<webroot>/.well-known/acme-challenge/`` for a web server already there.
- :class:`Rfc2136Dns01`: TXT records published with TSIG-signed dynamic updates (RFC 2136, RFC 8945), then
  waited for on every authoritative server of the zone before the CA is told to look.
- :class:`HookDns01`: an external program, ``prog present|cleanup FQDN VALUE``, for any DNS provider.

Both DNS responders also answer dns-account-01 (draft-ietf-acme-dns-account-label: the same value under an
account-scoped label, ``_<label>._acme-challenge.<name>``, so several accounts can validate one name at once).
:class:`PersistDns01` publishes nothing: dns-persist-01's record (draft-ietf-acme-dns-persist) was published once,
and before an order it checks the record is visible on every authoritative server and would be accepted.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from certkeeper.errors import ChallengeFailed, DnsError, InputError
from certkeeper.permissions import check_trusted_file
from certkeeper.process import redact, run_program
from certkeeper.store.atomic import make_dirs
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.dnsclient import TsigKey

log = logging.getLogger("certkeeper.issuers.challenges")

WELL_KNOWN = "/.well-known/acme-challenge/"


@frozen
class ChallengeAnswer:
    """What the CA will look for about one identifier: the token and the key authorization (RFC 8555 8.1)."""

    identifier: str
    token: str
    key_authorization: str
    # dns-account-01 scopes the record name to the account; dns-persist-01 matches the record against both
    account_uri: str = ""
    issuer_domain_names: tuple[str, ...] = ()  # dns-persist-01: the CA's names, from the challenge object

    @property
    def dns_value(self) -> str:
        """The TXT record value: base64url(SHA-256(key authorization)), unpadded (RFC 8555 section 8.4)."""
        digest = hashlib.sha256(self.key_authorization.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @property
    def dns_name(self) -> str:
        """``_acme-challenge.<name>.``; a wildcard is validated at its base name (RFC 8555 section 8.4).

        With an ``account_uri`` (dns-account-01): ``_<label>._acme-challenge.<name>.``, the label being the first
        10 bytes of SHA-256(account URI) in lower-case base32 (draft-ietf-acme-dns-account-label section 3.2).
        """
        base = "_acme-challenge." + self.identifier.removeprefix("*.").rstrip(".") + "."
        if not self.account_uri:
            return base
        label = base64.b32encode(hashlib.sha256(self.account_uri.encode()).digest()[:10]).decode().lower()
        return f"_{label}.{base}"


class Responder(Protocol):
    @property
    def challenge_type(self) -> str: ...

    def published(self, answers: Sequence[ChallengeAnswer]) -> contextlib.AbstractContextManager[None]:
        """Publish ``answers`` on entry (ready for the CA), remove them on exit, whatever happened."""
        ...


# -- http-01, standalone --------------------------------------------------------------------------------------


class _ChallengeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a listener stopped a moment ago leaves TIME_WAIT sockets behind
    # A CA validates every challenge from several vantage points at once (Pebble 2.10 and Let's Encrypt: three
    # and more), so concurrent orders open a dozen connections together; socketserver's backlog of 5 drops the
    # SYNs beyond it, and each dropped one costs the validator a one-second retransmission (issue 23).
    request_queue_size = socket.SOMAXCONN
    tokens: dict[str, str]

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "" means every address: one dual-stack socket answers IPv4 and IPv6 validators alike.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _ChallengeServer6(_ChallengeServer):
    address_family = socket.AF_INET6


class _ChallengeHandler(http.server.BaseHTTPRequestHandler):
    server: _ChallengeServer
    server_version = "certkeeper"
    sys_version = ""

    def do_GET(self) -> None:
        token = self.path.split("?", 1)[0].removeprefix(WELL_KNOWN) if self.path.startswith(WELL_KNOWN) else ""
        body = self.server.tokens.get(token) if token else None
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        # RFC 8555 section 8.3: the body is the key authorization, served as application/octet-stream.
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http-01 listener %s: " + format, self.client_address[0], *args)


class _SharedListener:
    """One bound socket and the tokens of every order using it; counted so the last user stops it."""

    def __init__(self, address: str, port: int, *, wait: float = 0.0) -> None:
        family = socket.AF_INET6 if address == "" and socket.has_dualstack_ipv6() else socket.AF_INET
        if ":" in address:
            family = socket.AF_INET6
        host = address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        server_class = _ChallengeServer6 if family == socket.AF_INET6 else _ChallengeServer
        # Another certkeeper process validating another certificate holds the port for a few seconds (issue
        # 21.6: `renew mail & renew other`): wait for it, up to ``wait`` seconds, before giving up.
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                self.server = server_class((host, port), _ChallengeHandler)
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                where = f"{address or '*'}:{port}"
                waited = f" for {wait:g} s" if exc.errno == errno.EADDRINUSE and wait else ""
                msg = (f"cannot listen on {where} for http-01 ({exc.strerror}{waited}); another web server may "
                       f"hold the port: stop it, or use webroot, or set http_port to a port it forwards")
                raise ChallengeFailed(msg) from None
        self.server.tokens = {}
        self.users = 0
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.005},
                                       name=f"http-01 {address or '*'}:{port}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Http01Listeners:
    """The process's http-01 listeners, keyed by (address, port), started on demand, stopped when unused.

    Process-wide on purpose: a port can be bound once per host, and every issuer and every concurrent order
    that validates on it must share that one socket.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], _SharedListener] = {}

    @contextlib.contextmanager
    def serving(self, address: str, port: int, answers: Sequence[ChallengeAnswer], *,
                wait: float = 0.0) -> Iterator[None]:
        key = (address, port)
        with self._lock:
            listener = self._listeners.get(key)
            if listener is None:
                listener = _SharedListener(address, port, wait=wait)
                self._listeners[key] = listener
            listener.users += 1
            for answer in answers:
                listener.server.tokens[answer.token] = answer.key_authorization
        try:
            yield
        finally:
            with self._lock:
                for answer in answers:
                    listener.server.tokens.pop(answer.token, None)
                listener.users -= 1
                if listener.users == 0:
                    del self._listeners[key]
                    listener.stop()

    def active(self) -> list[tuple[str, int]]:
        """The (address, port) pairs listened on right now."""
        with self._lock:
            return list(self._listeners)


PROCESS_LISTENERS = Http01Listeners()


@frozen
class StandaloneHttp01:
    address: str
    port: int
    listeners: Http01Listeners = PROCESS_LISTENERS
    wait: float = 0.0  # how long to wait for another process to free the port
    challenge_type: ClassVar[str] = "http-01"

    def published(self, answers: Sequence[ChallengeAnswer]) -> contextlib.AbstractContextManager[None]:
        return self.listeners.serving(self.address, self.port, answers, wait=self.wait)


# -- http-01, webroot -----------------------------------------------------------------------------------------


@frozen
class WebrootHttp01:
    root: Path
    challenge_type: ClassVar[str] = "http-01"

    @contextlib.contextmanager
    def published(self, answers: Sequence[ChallengeAnswer]) -> Iterator[None]:
        folder = self.root / WELL_KNOWN.strip("/")
        written: list[Path] = []
        try:
            try:
                make_dirs(folder, mode=0o755)  # the web server reads it, whatever the umask
                for answer in answers:
                    path = folder / answer.token
                    path.write_text(answer.key_authorization)
                    written.append(path)
                    # 0644: the web server, running as another user, must read it; it holds nothing secret.
                    path.chmod(0o644)
            except OSError as exc:
                msg = (
                    f"cannot write the http-01 answer under {folder} ({exc.strerror}); "
                                      f"check webroot and its permissions"
                )
                raise ChallengeFailed(msg) from None
            yield
        finally:
            for path in written:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


# -- dns-01 ---------------------------------------------------------------------------------------------------


class Rfc2136Dns01:
    """TXT records through RFC 2136 dynamic updates, signed with TSIG, checked on every authoritative server.

    The authoritative servers are the zone's NS records and their addresses, asked of ``server``.  They are
    queried on port 53, except when ``server`` itself listens elsewhere: then that port is used for all of them
    (a test bed or a hidden primary on a high port answers for every name there).
    """

    def __init__(self, server: str, key: TsigKey, *, zone: str | None, timeout: float, ttl: int = 60,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 challenge_type: str = "dns-01") -> None:
        from certkeeper import dnsclient  # here, not at the top: http-01 needs no dnspython (startup)
        host, self.port = dnsclient.parse_server(server)
        self.host = host
        self.challenge_type = challenge_type  # dns-01 or dns-account-01: the answers carry the record name
        self.key = key
        self.zone = zone
        self.timeout = timeout
        self.ttl = ttl
        self._clock = clock
        self._sleep = sleep

    @contextlib.contextmanager
    def published(self, answers: Sequence[ChallengeAnswer]) -> Iterator[None]:
        address, zones = self._zones(answers)
        added: list[ChallengeAnswer] = []
        try:
            for zone in dict.fromkeys(zones.values()):
                batch = [a for a in answers if zones[a] == zone]
                self._update(address, zone, batch, add=True)
                added += batch
            for zone in dict.fromkeys(zones.values()):
                self._wait_for_authoritatives(address, zone, [a for a in answers if zones[a] == zone])
            yield
        finally:
            for zone in dict.fromkeys(zones[a] for a in added):
                try:
                    self._update(address, zone, [a for a in added if zones[a] == zone], add=False)
                except ChallengeFailed as exc:
                    log.warning("dns-01: could not remove TXT records from %s: %s", zone, exc)

    def remove(self, answers: Sequence[ChallengeAnswer]) -> None:
        """Remove exactly these values (left by an interrupted order); raises :class:`ChallengeFailed`."""
        address, zones = self._zones(answers)
        for zone in dict.fromkeys(zones.values()):
            self._update(address, zone, [a for a in answers if zones[a] == zone], add=False)

    def _zones(self, answers: Sequence[ChallengeAnswer]) -> tuple[str, dict[ChallengeAnswer, str]]:
        """The server's address and the zone of each answer's name (the configured ``zone``, or found by SOA)."""
        from certkeeper import dnsclient
        try:
            address = dnsclient.resolve_address(self.host)
            return address, {answer: self.zone or dnsclient.find_zone(address, self.port, answer.dns_name)
                             for answer in answers}
        except DnsError as exc:
            msg = f"dns-01: {exc}"
            raise ChallengeFailed(msg) from None

    def _update(self, address: str, zone: str, answers: Sequence[ChallengeAnswer], *, add: bool) -> None:
        from certkeeper import dnsclient
        # Only these values on removal: a wildcard and its base name share one owner name (RFC 8555 8.4).
        records = [(answer.dns_name, "TXT", f'"{answer.dns_value}"') for answer in answers]
        try:
            dnsclient.send_update(address, self.port, zone, self.key, ttl=self.ttl,
                                  add=records if add else (), delete=() if add else records)
        except DnsError as exc:
            msg = f"dns-01 ({self.host}:{self.port}): {exc.detail}"
            raise ChallengeFailed(msg) from None

    def _wait_for_authoritatives(self, address: str, zone: str, answers: Sequence[ChallengeAnswer]) -> None:
        from certkeeper import dnsclient
        port = self.port  # see the class docstring: a non-standard port of dns_server applies to all of them
        try:
            servers = dnsclient.authoritative_addresses(address, port, zone)
        except DnsError as exc:
            msg = f"dns-01: {exc}"
            raise ChallengeFailed(msg) from None
        started = self._clock()
        deadline = started + self.timeout
        delay = 0.05
        waiting = set(servers)
        while True:
            # The deadline is looked at before each query, not after a sweep: 20 silent servers at 3 s each
            # would otherwise hold a 10 s dns_timeout for a minute.
            for server in sorted(waiting):
                if self._clock() >= deadline:
                    break
                if all(self._has_value(server, port, a, deadline) for a in answers):
                    waiting.discard(server)
            if not waiting:
                return
            if self._clock() + delay > deadline:
                msg = (
                    f"after {self._clock() - started:.1f} s (dns_timeout {self.timeout:g} s) the TXT records for "
                    f"{', '.join(a.dns_name for a in answers)} are still missing on {', '.join(sorted(waiting))} "
                    f"(authoritative for {zone}); check zone transfers to the secondaries, or raise dns_timeout"
                )
                raise ChallengeFailed(
                    msg)
            self._sleep(delay)
            delay = min(delay * 2, 2.0)

    def _has_value(self, server: str, port: int, answer: ChallengeAnswer, deadline: float) -> bool:
        """Whether ``server`` answers ``answer``'s value, asked for at most 3 s and never past ``deadline``."""
        from certkeeper import dnsclient
        remaining = deadline - self._clock()
        if remaining <= 0:
            return False
        try:
            return answer.dns_value in dnsclient.query(server, port, answer.dns_name, "TXT",
                                                       timeout=min(3.0, remaining)).values
        except DnsError:
            return False


# -- dns-persist-01: a record published once, checked before each order -------------------------------------


class PersistDns01:
    """dns-persist-01: nothing to publish; before the CA looks, the record must be on every authoritative server.

    ``server`` is only asked where the zone is (SOA) and who serves it (NS), as :class:`Rfc2136Dns01` asks it;
    no TSIG key, no update: renewals need no DNS credentials on the mail host.  What a record must say is judged
    by ``judge`` (:func:`certkeeper.issuers.persist.judge_persist_records`).
    """

    challenge_type: ClassVar[str] = "dns-persist-01"

    def __init__(self, server: str, *, zone: str | None,
                 judge: Callable[[ChallengeAnswer, Sequence[str]], str | None]) -> None:
        from certkeeper import dnsclient
        self.host, self.port = dnsclient.parse_server(server)
        self.zone = zone
        self._judge = judge

    @contextlib.contextmanager
    def published(self, answers: Sequence[ChallengeAnswer]) -> Iterator[None]:
        self.check(answers)
        yield

    def check(self, answers: Sequence[ChallengeAnswer]) -> dict[str, list[str]]:
        """Raise :class:`ChallengeFailed` naming each server where a record is missing or would be refused.

        Returns each record name's TXT values as the authoritative servers serve them (all passed).
        """
        from certkeeper import dnsclient
        problems: list[str] = []
        seen: dict[str, list[str]] = {}
        try:
            address = dnsclient.resolve_address(self.host)
            for answer in answers:
                name = persist_record_name(answer.identifier)
                zone = self.zone or dnsclient.find_zone(address, self.port, name)
                for server in dnsclient.authoritative_addresses(address, self.port, zone):
                    values = list(dnsclient.query(server, self.port, name, "TXT").values)
                    verdict = self._judge(answer, values)
                    if verdict is not None:
                        problems.append(f"{name} on {server}: {verdict}")
                    seen.setdefault(name, []).extend(v for v in values if v not in seen.get(name, []))
        except DnsError as exc:
            msg = f"dns-persist-01: {exc}"
            raise ChallengeFailed(msg) from None
        if problems:
            raise ChallengeFailed("dns-persist-01: " + "; ".join(problems))
        return seen


def publish_persist_records(server: str, zone: str | None, key: TsigKey, records: Sequence[tuple[str, str]]) -> None:
    """Add ``(name, value)`` TXT records once, with TSIG-signed updates (``acme persist-record --publish``)."""
    from certkeeper import dnsclient
    host, port = dnsclient.parse_server(server)
    try:
        address = dnsclient.resolve_address(host)
        for name, value in records:
            found = zone or dnsclient.find_zone(address, port, name)
            dnsclient.send_update(address, port, found, key, ttl=3600, add=[(name, "TXT", _quoted_txt(value))])
    except DnsError as exc:
        msg = f"dns-persist-01: {exc}"
        raise ChallengeFailed(msg) from None


def persist_record_name(identifier: str) -> str:
    """``_validation-persist.<name>.``; a wildcard is validated at its base name (draft-ietf-acme-dns-persist)."""
    return "_validation-persist." + identifier.removeprefix("*.").rstrip(".") + "."


def _quoted_txt(value: str) -> str:
    """One TXT record's text in zone-file form: strings of at most 255 octets (RFC 1035 section 3.3.14)."""
    data = value.encode()
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


# -- dns-01 through a program ---------------------------------------------------------------------------------

# A hook gets no inherited secrets (no REQUESTS_CA_BUNDLE, no proxy passwords): only a sane PATH and locale.
_HOOK_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


@frozen
class HookDns01:
    """``program present FQDN VALUE`` before validation, ``program cleanup FQDN VALUE`` after (no shell).

    FQDN is absolute, with the trailing dot (``_acme-challenge.example.org.``).  The program must return once
    the record is published on the zone's authoritative servers; it is killed after ``timeout`` seconds.
    """

    program: Path
    timeout: float
    challenge_type: str = "dns-01"  # or dns-account-01: FQDN is then the account-scoped name

    @contextlib.contextmanager
    def published(self, answers: Sequence[ChallengeAnswer]) -> Iterator[None]:
        presented: list[ChallengeAnswer] = []
        try:
            for answer in answers:
                presented.append(answer)  # a hook that failed half-way may still have published something
                self._run("present", answer)
            yield
        finally:
            for answer in presented:
                try:
                    self._run("cleanup", answer)
                except ChallengeFailed as exc:
                    log.warning("dns-01: %s", exc)

    def remove(self, answers: Sequence[ChallengeAnswer]) -> None:
        """``cleanup`` for values left by an interrupted order; raises :class:`ChallengeFailed`."""
        for answer in answers:
            self._run("cleanup", answer)

    def _run(self, action: str, answer: ChallengeAnswer) -> None:
        command = [str(self.program), action, answer.dns_name, answer.dns_value]
        check_trusted_file(self.program, "dns_hook")
        try:
            result = run_program(command, env=_HOOK_ENVIRONMENT, timeout=self.timeout, merge_stderr=True)
        except OSError as exc:
            msg = f"dns_hook {self.program} could not be started ({exc.strerror})"
            raise ChallengeFailed(msg) from None
        if result.timed_out:
            msg = (
                f"dns_hook {self.program} {action} {answer.dns_name} did not finish within "
                                  f"{self.timeout:g} s and was killed"
            )
            raise ChallengeFailed(msg)
        if result.returncode != 0:
            tail = " | ".join(redact(result.stdout.decode(errors="replace")).strip().splitlines()[-5:])
            raise ChallengeFailed(f"dns_hook {self.program} {action} {answer.dns_name} exited with status "
                                  f"{result.returncode}" + (f": {tail}" if tail else ""))


def read_secret_file(path: Path, what: str) -> str:
    """A secret from a file, stripped; :class:`InputError` naming the file (never the content) otherwise.

    :class:`UnsafePath` when someone other than root and the service user could change it.
    """
    check_trusted_file(path, what)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise InputError(str(path), f"cannot read {what} ({exc.strerror})") from None

