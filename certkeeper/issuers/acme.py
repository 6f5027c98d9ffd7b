"""The ACME issuer (RFC 8555), with renewal information (ARI, RFC 9773): the only importer of acme and josepy.

What the ``acme`` library does not do, this module adds around it, and nowhere else:

- ``replaces`` on newOrder (RFC 9773 section 5): :class:`_NewOrder` extends the library's message with the field,
  and the order is posted through the client's own ``_post`` (nonce, JWS and ``kid`` stay the library's job).
  ``profile`` is already a field of the library's ``NewOrder``; it is checked against ``meta.profiles`` first.
- Resilience (:class:`_ResilientNetwork`): ``badNonce`` retried up to :attr:`RetryPolicy.bad_nonce_retries` times
  (RFC 8555 section 6.5 says clients should retry; the library retries once), 429/5xx and network errors retried
  with exponential backoff and jitter or the server's ``Retry-After``, bounded in attempts and in time.
- Adaptive polling of authorizations and orders (:class:`PollPolicy`): without a ``Retry-After`` the first look
  comes after 5 ms and the waits triple (at most five looks in a poll's first second, one every 3 s later); a
  ``Retry-After`` is always honoured (RFC 8555 sections 7.1.6, 7.4 and 7.5.1), within the order's deadline.  The
  library sleeps whole seconds.

The retry and polling decisions are pure functions of their inputs, in :mod:`certkeeper.issuers.acme_rules`
(:func:`retry_delay`, :func:`next_poll_delay`, :func:`parse_retry_after`, :func:`ari_certificate_id`), tested
without a server.
Challenge responders live in :mod:`certkeeper.issuers.challenges`, which knows nothing of ACME.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.client
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import josepy as jose
import requests
import urllib3
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.util import ComparableRSAKey

from certkeeper import __version__, pki
from certkeeper.config import AcmeIssuerConfig
from certkeeper.deadline import Deadline, read_within
from certkeeper.errors import CaUnavailable, ChallengeFailed, InputError, IssuanceError, UsageError
from certkeeper.issuers import journal
from certkeeper.issuers.acme_rules import (
    REPLACES_SERVER_ERROR_ATTEMPTS,
    PollPolicy,
    RetryPolicy,
    ari_certificate_id,
    describe_profile_refusal,
    describe_validation_failure,
    may_order_without_replaces,
    next_poll_delay,
    parse_retry_after,
    retry_delay,
    server_error_may_spare_replaces,
)
from certkeeper.issuers.base import IssuedCertificate, IssueRequest, RenewalWindow
from certkeeper.issuers.caa import CaaVerdict, caa_preflight
from certkeeper.issuers.challenges import (
    ChallengeAnswer,
    HookDns01,
    PersistDns01,
    Responder,
    Rfc2136Dns01,
    StandaloneHttp01,
    WebrootHttp01,
    persist_record_name,
    read_secret_file,
)
from certkeeper.issuers.persist import (
    PersistRecord,
    judge_persist_records,
    parse_persist_record,
    persist_until_warning,
    wanted_record,
)
from certkeeper.permissions import read_nofollow
from certkeeper.store.atomic import write_atomic
from certkeeper.values import replace

log = logging.getLogger("certkeeper.issuers.acme")
T = TypeVar("T")

# RFC 5280 section 5.3.1 CRLReason codes that ACME CAs accept (Let's Encrypt refuses the others).
REVOCATION_REASONS = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3, "superseded": 4,
                      "cessationOfOperation": 5}
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_ARI_DEFAULT_RETRY = timedelta(hours=6)  # RFC 9773 section 4.3.3, when the server sends no Retry-After
_POLL = PollPolicy()


# -- the network: retries around the library's ClientNetwork ---------------------------------------------------


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status  # the HTTP error status the CA answered; None: no answer (no connection, a timeout)


class UnusableNonce(acme_errors.NonceError):
    """The CA's newNonce answered with a Replay-Nonce no request can be signed with (not base64url, or one it
    gave before)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(url, problem)
        self.url = url
        self.problem = problem

    def __str__(self) -> str:
        return f"its newNonce ({self.url}) answered with a nonce certkeeper cannot sign with: {self.problem}"


class _Unreachable(Exception):
    """Retries exhausted; becomes :class:`CaUnavailable` once the issuer and certificate are known."""

    def __init__(self, url: str, reason: str, retry_after: float | None, *, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        self.status = status  # as _Transient's

    @property
    def answered(self) -> bool:
        """The CA answered (an HTTP error status), as opposed to no connection."""
        return self.status is not None


MAX_ANSWER_BYTES = 2 << 20  # an ACME answer (a directory, an order, a certificate chain) is kilobytes


class _PlainHttp(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _HttpsOnly(requests.adapters.BaseAdapter):
    """Mounted on ``http://``: a request there, a redirect included, is refused before anything is sent (RFC 8555
    section 6.1: ACME is spoken over HTTPS only; a CA redirecting to plain HTTP would get the order in clear)."""

    def send(self, request: requests.PreparedRequest, *_: Any, **__: Any) -> requests.Response:
        raise _PlainHttp(str(request.url))

    def close(self) -> None:
        pass


class _LateAnswer(Exception):
    """An answer begun but not finished within the timeout: its status line and headers too, byte by byte."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, read within the request's timeout in all (urllib3 has set it on the socket before
    the response is made).

    requests' timeout is per read: a CA sending its status line and headers a byte at a time, each within it, held
    a request for as long as it liked (http.client reads up to 100 header lines of 64 KiB each).  An answer that
    has begun and is not finished in time is :class:`_LateAnswer`; silence from the start stays requests' own
    ``ReadTimeout``, retried as before.
    """

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        seconds = sock.gettimeout()
        if seconds is not None:
            read_within(self, sock, Deadline(seconds),
                        lambda received: _LateAnswer(seconds) if received else TimeoutError("timed out"))


class _DeadlineConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


class _DeadlinePool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _DeadlineConnection


class _HttpsWithDeadline(requests.adapters.HTTPAdapter):
    """Mounted on ``https://``: each answer within the request's timeout in all (:class:`_DeadlineResponse`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _with_deadline(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        return _with_deadline(manager)


def _with_deadline(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    pools = manager.pool_classes_by_scheme
    if pools.get("https") is urllib3.connectionpool.HTTPSConnectionPool:  # not a SOCKS proxy's pools
        manager.pool_classes_by_scheme = {**pools, "https": _DeadlinePool}
    return manager


def guard_session(session: requests.Session) -> requests.Session:
    """``session`` speaking to https:// URLs only, each answer within its timeout in all, trusting no proxy or
    CA bundle from the environment (the caller passes ``verify`` and ``proxies``)."""
    session.mount("http://", _HttpsOnly())
    session.mount("https://", _HttpsWithDeadline())
    session.trust_env = False
    return session


def https_session() -> requests.Session:
    """A new session, :func:`guard_session`'s."""
    return guard_session(requests.Session())


def read_bounded(response: requests.Response, url: str, *, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body of a streamed ``response``, within ``limit`` bytes: a CA sending gigabytes is stopped, not kept.
    Its time is bounded by :func:`guard_session`'s adapter: a CA dripping a byte per read is :class:`_LateAnswer`."""
    raw = response.raw
    # read1: what one read of the socket brought (urllib3 2); read(n) waits for n bytes, a drip's whole length
    read = raw.read1 if hasattr(raw, "read1") else raw.read
    chunks, size, problem = [], 0, ""
    try:
        while chunk := read(65536, decode_content=True):
            size += len(chunk)
            if size > limit:
                problem = f"{url} answered with more than {limit >> 20} MiB"
                break
            chunks.append(chunk)
    except BaseException:
        response.close()  # the connection is closed, not reused
        raise
    if problem:
        response.close()
        raise _Oversized(problem)
    response._content_consumed = True  # type: ignore[attr-defined]  # requests.Response.content sets it so
    response.close()  # read to its end: the connection goes back to the pool for the next request
    return b"".join(chunks)


class _Oversized(Exception):
    pass


class _ResilientNetwork(acme_client.ClientNetwork):
    """The library's JWS/nonce handling, with bounded retries and a thread-safe nonce pool.

    ``verify`` is the configured CA bundle as a path: requests then ignores ``REQUESTS_CA_BUNDLE`` from the
    environment, which must not decide whom certkeeper trusts.  The proxy environment (``https_proxy``,
    ``no_proxy``) is read once per CA host rather than by requests on every request (an eighth of an order's
    time went to walking ``os.environ``): the session does not trust the environment, the proxies are passed.
    """

    def __init__(self, key: jose.jwk.JWK, *, ca_bundle: Path | None, timeout: float, policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> None:
        # verify_ssl is passed to requests as ``verify``, which takes a CA bundle path as well as a bool.
        alg = jose.jwa.RS256 if isinstance(key, jose.jwk.JWKRSA) else jose.jwa.ES256
        super().__init__(key, alg=alg, verify_ssl=str(ca_bundle) if ca_bundle else True,  # type: ignore[arg-type]
                         user_agent=f"certkeeper/{__version__}", timeout=int(min(timeout, 60)))
        self.policy = policy
        self._sleep = sleep
        self._rng = rng
        self._nonce_lock = threading.RLock()
        self._seen_nonces: dict[str, None] = {}
        guard_session(self.session)
        self._proxies: dict[tuple[str, str | None, int | None], dict[str, str]] = {}
        self._this_thread = threading.local()  # ``policy``: a policy for this thread's requests (retrying())

    @contextlib.contextmanager
    def retrying(self, policy: RetryPolicy) -> Iterator[None]:
        """This thread's requests retried under ``policy`` meanwhile (other threads share the network)."""
        before = getattr(self._this_thread, "policy", None)
        self._this_thread.policy = policy
        try:
            yield
        finally:
            self._this_thread.policy = before

    def _proxies_for(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        where = (parts.scheme, parts.hostname, parts.port)
        found = self._proxies.get(where)
        if found is None:  # a race only reads the environment twice
            found = self._proxies[where] = dict(requests.utils.get_environ_proxies(url))
        return found

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        """One request as the library's, its answer read within the timeout and :data:`MAX_ANSWER_BYTES`."""
        kwargs.setdefault("proxies", self._proxies_for(url))
        kwargs["verify"] = self.verify_ssl
        kwargs.setdefault("headers", {}).setdefault("User-Agent", self.user_agent)
        kwargs.setdefault("timeout", self._default_timeout)
        kwargs["stream"] = True  # read below, bounded
        log.debug("%s %s", method, url)
        try:
            response = self.session.request(method, url, *args, **kwargs)
            response._content = read_bounded(response, url)
            if "Accept" not in kwargs["headers"]:
                response.encoding = "utf-8"  # JSON and PEM: not guessed from the bytes (as the library does)
        except _PlainHttp as exc:
            raise _Unreachable(url, f"it sent certkeeper to {exc.url}, which is not https:// (ACME is spoken over "
                                    "HTTPS only, RFC 8555 section 6.1)", None) from None
        except _Oversized as exc:
            raise _Unreachable(url, str(exc), None) from None
        except _LateAnswer as exc:
            raise _Unreachable(url, f"{url} did not finish its answer within {exc.seconds:g} s", None) from None
        except requests.exceptions.SSLError as exc:
            # Not transient: the CA's certificate is not trusted; retrying changes nothing.
            raise _Unreachable(url, f"its TLS certificate was not accepted ({exc.__context__ or exc}); check "
                                    f"ca_bundle", None) from None
        except requests.RequestException as exc:
            msg = f"{type(exc).__name__}: {exc}"
            raise _Transient(msg, None) from None
        if self.REPLAY_NONCE_HEADER in response.headers:
            # Every response carries a fresh nonce, errors too (RFC 8555 section 6.5): keep it, or remember for
            # _get_nonce why it could not be kept.
            self._this_thread.nonce_problem = self._keep_nonce(response)
        if response.status_code in _TRANSIENT_STATUSES:
            reason = f"HTTP {response.status_code}"
            with contextlib.suppress(ValueError):
                problem = response.json()
                reason += f" {problem.get('type', '')}: {problem.get('detail', '')}"
            raise _Transient(reason, parse_retry_after(response.headers.get("Retry-After"), pki.now_utc()),
                             status=response.status_code)
        return response

    @classmethod
    def _check_response(cls, response: requests.Response, content_type: str | None = None) -> requests.Response:
        # The library turns every 409 into a bare ConflictError and drops the problem document; RFC 8555 CAs
        # answer 409 with a problem (e.g. a certificate that already has a replacement, RFC 9773 section 5).
        if response.status_code == 409:
            with contextlib.suppress(ValueError, jose.errors.DeserializationError):
                raise messages.Error.from_json(response.json())
        checked: requests.Response = super()._check_response(response, content_type=content_type)
        return checked

    def _with_retries(self, url: str, call: Callable[[], T]) -> T:
        policy = getattr(self._this_thread, "policy", None) or self.policy
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return call()
            except _Transient as transient:
                attempt += 1
                delay = retry_delay(policy, attempt, time.monotonic() - started, transient.retry_after,
                                    self._rng(), status=transient.status)
                if delay is None:
                    raise _Unreachable(url, transient.reason, transient.retry_after,
                                       status=transient.status) from None
                log.info("ACME request to %s failed (%s); retry %d in %.2f s", url, transient.reason, attempt, delay)
                self._sleep(delay)

    def get(self, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        return self._with_retries(url, lambda: super(_ResilientNetwork, self).get(url, *args, **kwargs))

    def head(self, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        return self._with_retries(url, lambda: super(_ResilientNetwork, self).head(url, *args, **kwargs))

    def post(self, url: str, obj: Any, **kwargs: Any) -> requests.Response:
        def signed_once() -> requests.Response:
            for retry in range(self.policy.bad_nonce_retries + 1):
                try:
                    response: requests.Response = self._post_once(url, obj, **kwargs)
                except messages.Error as error:
                    if error.code != "badNonce" or retry == self.policy.bad_nonce_retries:
                        raise
                    log.debug("badNonce from %s, signing again with a fresh nonce", url)
                else:
                    return response
            msg = "unreachable"
            raise AssertionError(msg)

        return self._with_retries(url, signed_once)

    def _add_nonce(self, response: requests.Response) -> None:
        nonce = response.headers.get(self.REPLAY_NONCE_HEADER)
        if nonce is None:
            raise acme_errors.MissingNonce(response)
        with self._nonce_lock:
            # Seen before (kept from an error answer, then offered again by the library): using it twice
            # would only earn a badNonce.
            if nonce in self._seen_nonces:
                return
            self._seen_nonces[nonce] = None
            if len(self._seen_nonces) > 1000:
                del self._seen_nonces[next(iter(self._seen_nonces))]
            super()._add_nonce(response)

    def _keep_nonce(self, response: requests.Response) -> str:
        """Pool the nonce of an answer just received; why it cannot be used, or "" when it was pooled."""
        nonce = response.headers[self.REPLAY_NONCE_HEADER]
        shown = repr(nonce[:64]) + ("..." if len(nonce) > 64 else "")
        with self._nonce_lock:
            if nonce in self._seen_nonces:  # a new answer with a nonce given before: the CA repeats itself
                return f"{shown} was given before (a nonce is good for one request, RFC 8555 section 6.5)"
            try:
                self._add_nonce(response)
            except acme_errors.BadNonce as exc:
                return f"{shown} is not base64url (RFC 8555 section 6.5.1: {exc.error})"
        return ""

    def _get_nonce(self, url: str, new_nonce_url: str | None) -> str:
        # The library checks for an empty pool, then pops: two threads can both pass the check, and another
        # thread may take the nonce this one asked for (then it asks again).  An answer whose own nonce cannot
        # be used ends the request: asking again would loop for as long as the CA answers so.
        while True:
            with self._nonce_lock:
                if self._nonces:
                    nonce: str = self._nonces.pop()
                    return nonce
            response = self.head(new_nonce_url or url)
            self._check_response(response, content_type=None)
            if self.REPLAY_NONCE_HEADER not in response.headers:
                raise acme_errors.MissingNonce(response)
            problem = getattr(self._this_thread, "nonce_problem", "")
            if problem:
                raise UnusableNonce(new_nonce_url or url, problem)


# -- account and order ----------------------------------------------------------------------------------------


class _EmptyResponse(jose.interfaces.JSONDeSerializable):
    """``{}``: the challenge response of the types the library does not know (RFC 8555 section 7.5.1)."""

    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> _EmptyResponse:  # noqa: ARG003 - josepy's signature
        return cls()


def _later(first: float | None, second: float | None) -> float | None:
    """The later of two optional Retry-After delays."""
    known = [delay for delay in (first, second) if delay is not None]
    return max(known) if known else None


def _challenge_type(challenge: messages.ChallengeBody) -> str:
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(chall.typ)


_DIRECTORY_FIELDS = ("newNonce", "newAccount", "newOrder")  # RFC 8555 section 7.1.1: what every order needs


def _problem(error: object) -> dict[str, Any]:
    """An ``error`` member as a problem document (RFC 7807); a CA sending a bare string is read as its detail."""
    return error if isinstance(error, dict) else {"detail": str(error)}


def _suggested_window(info: object) -> tuple[datetime, datetime, str | None]:
    """RFC 9773 section 4.2's ``suggestedWindow``: two moments with their offset (ValueError otherwise: the pass
    compares them with its own aware clock), and the ``explanationURL`` if any."""
    window = info.get("suggestedWindow") if isinstance(info, dict) else None
    if not isinstance(window, dict) or not all(isinstance(window.get(k), str) for k in ("start", "end")):
        msg = f"the renewal information is not RFC 9773's (suggestedWindow: {str(window)[:80]!r})"
        raise ValueError(msg)
    start, end = (datetime.fromisoformat(window[k].replace("Z", "+00:00")) for k in ("start", "end"))
    if start.tzinfo is None or end.tzinfo is None:
        msg = f"the renewal window {window['start']} - {window['end']} has no time zone (RFC 3339 needs one)"
        raise ValueError(msg)
    explanation = info.get("explanationURL") if isinstance(info, dict) else None
    return start, end, explanation if isinstance(explanation, str) else None


class _NewOrder(messages.NewOrder):
    """newOrder with ARI's ``replaces`` (RFC 9773 section 5), which the acme library does not know."""

    replaces: str | None = jose.json_util.field("replaces", omitempty=True)


class _Directory:
    """One ACME server as this issuer talks to it: network, directory, account (stored under ``home``)."""

    def __init__(self, url: str, config: AcmeIssuerConfig, home: Path) -> None:
        self.url = url
        self.config = config
        self.home = home
        self.policy = RetryPolicy(budget=config.timeout.total_seconds())
        self.key = _jwk(_load_or_create_account_key(home / "account.key"))
        self.net = self._network()
        try:
            self.raw = self.net.get(url).json()
        except (ValueError, RecursionError):
            raise _Unreachable(url, "the answer is not an ACME directory (not JSON)", None) from None
        missing = [key for key in _DIRECTORY_FIELDS
                   if not isinstance(self.raw, dict) or not isinstance(self.raw.get(key), str)]
        if missing:
            raise _Unreachable(url, f"the answer is not an ACME directory (no {', '.join(missing)})", None)
        # from_json replaces the "meta" object of the dict it is given with a Meta: give it a copy, so that raw
        # stays the JSON the CA sent (meta.profiles then read as "none offered" before this was seen).
        self.client = acme_client.ClientV2(messages.Directory.from_json(copy.deepcopy(self.raw)), self.net)
        self._lock = threading.Lock()

    def _network(self) -> _ResilientNetwork:
        return _ResilientNetwork(self.key, ca_bundle=self.config.ca_bundle,
                                 timeout=self.config.timeout.total_seconds(), policy=self.policy)

    @property
    def profiles(self) -> dict[str, str]:
        profiles = self.raw.get("meta", {}).get("profiles") or {}
        return dict(profiles) if isinstance(profiles, dict) else {}

    def ensure_account(self) -> None:
        with self._lock:
            if self.net.account is not None:
                return
            stored = self.home / "account.json"
            with contextlib.suppress(OSError, ValueError, KeyError, RecursionError):
                uri = json.loads(read_nofollow(stored))["uri"]
                self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
                return
            self._register()

    def stored_account_uri(self) -> str | None:
        """The account URI stored for this key, without asking the CA (None before the first registration)."""
        with contextlib.suppress(OSError, ValueError, KeyError, RecursionError):
            return str(json.loads((self.home / "account.json").read_text())["uri"])
        return None

    def account_uri(self) -> str:
        """This key's account URI at the CA, registering the account first if it has none yet."""
        self.ensure_account()
        assert self.net.account is not None
        return str(self.net.account.uri)

    def with_account(self, call: Callable[[], T]) -> T:
        """Run ``call``; if the CA forgot the account (``accountDoesNotExist``), register again, once."""
        self.ensure_account()
        used = self.net.account.uri if self.net.account is not None else None
        try:
            return call()
        except messages.Error as error:
            if error.code != "accountDoesNotExist":
                raise
        with self._lock:
            if self.net.account is not None and self.net.account.uri == used:
                log.warning("the ACME account %s no longer exists at %s (the CA was reset, or the account was "
                            "deleted); registering a new account", used, self.url)
                self._register()
        return call()

    def _register(self) -> None:
        meta = self.client.directory.meta
        binding = None
        if self.config.eab_kid and self.config.eab_hmac_key_file:
            hmac_key = read_secret_file(self.config.eab_hmac_key_file, "the external account binding HMAC key")
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=self.key.public_key(), kid=self.config.eab_kid, hmac_key=hmac_key,
                directory=self.client.directory)
        elif meta.external_account_required:
            msg = (
                "the CA requires external account binding: set eab_kid and eab_hmac_key_file "
                                  "to the key ID and HMAC key the CA gave you"
            )
            raise ChallengeFailed(msg)
        registration = messages.NewRegistration(
            contact=tuple(self.config.contact), terms_of_service_agreed=True, external_account_binding=binding)
        # A network without an account: newAccount must carry the key, not a kid (RFC 8555 section 6.2), and
        # other threads keep signing with the old kid meanwhile.
        registrar = acme_client.ClientV2(self.client.directory, self._network())
        try:
            account = registrar.new_account(registration)
            uri = account.uri
        except acme_errors.ConflictError as existing:  # the key is registered already (RFC 8555 7.3.1)
            uri = existing.location
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        write_atomic(self.home / "account.json", json.dumps({"directory": self.url, "uri": uri}).encode(),
                     mode=0o600, dir_mode=0o700)
        log.info("registered ACME account %s at %s", uri, self.url)


def account_home(state_dir: Path, issuer: str, directory: str) -> Path:
    """Where an issuer keeps its account at one ACME directory: one folder per directory URL, so that a staging
    account is never used against production (``account.key``, ``account.json``)."""
    host = urlsplit(directory).hostname or "ca"
    digest = hashlib.sha256(directory.encode()).hexdigest()[:12]
    return state_dir / "accounts" / issuer / f"{host}-{digest}"


AccountKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _jwk(key: AccountKey) -> jose.jwk.JWK:
    """ES256 for certkeeper's own P-256 keys, RS256 for an RSA key imported from certbot."""
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.jwk.JWKRSA(key=ComparableRSAKey(key))
    return jose.jwk.JWKEC(key=key)


def _load_or_create_account_key(path: Path) -> AccountKey:
    """The account key, created on first use: P-256, PEM, mode 0600, never replaced once written.  An RSA key
    (an account taken over from certbot by ``certkeeper import certbot``) is used as it is."""
    with contextlib.suppress(FileNotFoundError):
        key = serialization.load_pem_private_key(read_nofollow(path), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            msg = f"{path}: the ACME account key is neither an ECDSA nor an RSA key"
            raise ChallengeFailed(msg)
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_atomic(path, pki.key_to_pem(key), mode=0o600, exclusive=True, dir_mode=0o700)
    loaded = serialization.load_pem_private_key(read_nofollow(path), None)  # a concurrent first use may have won
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


# -- the issuer -----------------------------------------------------------------------------------------------


class AcmeIssuer:
    """Certificates from an RFC 8555 CA; renewal windows from its ARI; revocation."""

    def __init__(self, config: AcmeIssuerConfig, state_dir: Path,
                 clock: Callable[[], datetime] = pki.now_utc, *, poll: PollPolicy = _POLL,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = config.name
        self.config = config
        self.state_dir = state_dir
        self.clock = clock
        self.poll_policy = poll
        self._sleep = sleep
        self._lock = threading.Lock()
        self._directories: dict[str, _Directory] = {}

    # -- Issuer ------------------------------------------------------------------------------------------------

    def issue(self, request: IssueRequest) -> IssuedCertificate:
        url = self._directory_url(request)
        csr = pki.make_csr(request.key, request.domains).public_bytes(serialization.Encoding.PEM)
        deadline = time.monotonic() + self.config.timeout.total_seconds()
        replaces = self._replaces(request)
        with self._translated(request.certificate, url):
            directory = self._directory(url)
            if self.config.caa_resolver:
                refused = [v for v in self._caa_verdicts(directory, request.domains, directory.account_uri())
                           if not v.allowed]
                if refused:  # RFC 8659: the CA would refuse it; say why before an order is spent
                    raise IssuanceError(self.name, request.certificate, "; ".join(v.describe() for v in refused),
                                        problem_type="urn:ietf:params:acme:error:caa",
                                        identifier=refused[0].identifier)
            expiring: tuple[tuple[str, datetime], ...] = ()
            if self.config.challenge == "dns-persist-01":
                expiring = self._check_persist_records(directory, request.domains)  # before an order is spent
            order = self._order(directory, request, csr, replaces)
            log.info("certificate %r: order %s for %s%s", request.certificate, order.uri, ", ".join(request.domains),
                     f" replacing {replaces}" if replaces else "")
            self._authorize(directory, order, request.certificate, deadline)
            fullchain = self._finalize(directory, order, request.certificate, deadline)
            try:
                leaf, chain = pki.split_fullchain(fullchain.encode())
            except ValueError as exc:  # garbage where the certificate chain belongs
                raise IssuanceError(self.name, request.certificate, f"the CA's certificate download is not a PEM "
                                    f"certificate chain ({exc})") from None
        return IssuedCertificate(certificate=leaf, chain=tuple(chain), persist_records_expiring=expiring)

    def trust_anchors(self) -> Sequence[x509.Certificate]:
        """``trust_roots`` when set (a private or test CA), else empty: the system store.

        ``ca_bundle`` trusts the CA's HTTPS endpoint, not what it issues, so it is not used here.
        """
        if self.config.trust_roots is None:
            return ()
        try:
            return pki.load_certificates(self.config.trust_roots.read_bytes())
        except (OSError, ValueError) as exc:
            raise InputError(str(self.config.trust_roots), f"cannot read trust_roots: {exc}") from None

    def caa_verdicts(self, domains: Sequence[str]) -> list[CaaVerdict]:
        """CAA pre-flight for ``domains`` (RFC 8659, RFC 8657), for ``doctor`` and ``check --caa``.

        Uses the stored account's URI and registers none: without an account, records naming an accounturi
        are judged against "(no account yet)".
        """
        url = self.config.directory
        with self._translated("caa", url):
            directory = self._directory(url)
            stored = directory.stored_account_uri()
            return self._caa_verdicts(directory, domains, stored or "(no account yet)")

    def _caa_verdicts(self, directory: _Directory, domains: Sequence[str], account_uri: str) -> list[CaaVerdict]:
        return caa_preflight(domains, resolver=self.config.caa_resolver or "system",
                             issuer_domain_names=tuple(directory.client.directory.meta.caa_identities or ()),
                             account_uri=account_uri, challenge=self.config.challenge)

    def offered_profiles(self, *, timeout: float = 5.0) -> dict[str, str]:
        """The profiles the CA's directory offers (``meta.profiles``: name -> description), fetched once, quickly.

        For ``config check``: one GET of the directory, no account, no retries; :class:`CaUnavailable` when the CA
        cannot be reached within ``timeout`` seconds.
        """
        url = self.config.directory
        try:
            with https_session() as session:
                response = session.get(url, timeout=timeout, headers={"User-Agent": f"certkeeper/{__version__}"},
                                       verify=str(self.config.ca_bundle) if self.config.ca_bundle else True,
                                       proxies=requests.utils.get_environ_proxies(url), stream=True)
                response._content = read_bounded(response, url)
            response.raise_for_status()
            meta = response.json().get("meta") or {}
        except _PlainHttp as exc:
            raise CaUnavailable(self.name, "-", f"the CA at {url} sent certkeeper to {exc.url}, which is not "
                                "https:// (ACME is spoken over HTTPS only)") from None
        except _LateAnswer as exc:
            raise CaUnavailable(self.name, "-", f"the CA at {url} did not finish its answer within "
                                f"{exc.seconds:g} s") from None
        except (requests.RequestException, ValueError, AttributeError, RecursionError, _Oversized) as exc:
            raise CaUnavailable(self.name, "-", f"the CA at {url} could not be reached: {exc}") from None
        profiles = meta.get("profiles") if isinstance(meta, dict) else None
        return {str(k): str(v) for k, v in profiles.items()} if isinstance(profiles, dict) else {}

    def check_profile(self, *, timeout: float = 5.0) -> None:
        """Raise :class:`IssuanceError` if ``profile`` is set and the CA does not offer it (CaUnavailable: unknown)."""
        profile = self.config.profile
        if not profile:
            return
        offered = self.offered_profiles(timeout=timeout)
        if profile not in offered:
            raise IssuanceError(self.name, "-", describe_profile_refusal(self.config.directory, profile, offered),
                                problem_type="urn:ietf:params:acme:error:invalidProfile")

    def persist_records(self, domains: Sequence[str]) -> list[tuple[str, PersistRecord]]:
        """dns-persist-01: the ``(record name, record)`` to publish once per name, for this issuer's account.

        Registers the account if it has none yet (its URI is part of the record).  The issuer domain name is
        the CA's first CAA identity (``meta.caaIdentities``), which its dns-persist-01 challenges carry.
        """
        url = self.config.directory
        with self._translated("persist-record", url):
            directory = self._directory(url)
            account_uri = directory.account_uri()
            identities = directory.client.directory.meta.caa_identities or ()
            if not identities:
                raise IssuanceError(self.name, "persist-record", f"the CA at {url} names no CAA identity "
                                    "(meta.caaIdentities), so the record's issuer domain name is unknown")
        return [(persist_record_name(domain),
                 wanted_record(identities[0], account_uri, wildcard=domain.startswith("*."),
                               persist_until=self.config.persist_until))
                for domain in dict.fromkeys(domains)]

    # -- RenewalInfoSource -------------------------------------------------------------------------------------

    def renewal_window(self, certificate: x509.Certificate, now: datetime) -> RenewalWindow | None:
        """The CA's suggested window (RFC 9773 section 4.2), or None when the directory has no renewalInfo.

        An expired certificate is not asked about (RFC 9773 section 4.2): its window is its expiry, due now.
        """
        label = f"serial {pki.serial_hex(certificate)}"
        certificate_id = self._certificate_id(certificate, label)
        with self._translated(label, self.config.directory):
            directory = self._directory(self.config.directory)
            base = directory.raw.get("renewalInfo")
            if not base:
                return None
            if pki.not_after(certificate) <= now:
                return RenewalWindow(start=pki.not_after(certificate), end=pki.not_after(certificate),
                                     retry_after=now + _ARI_DEFAULT_RETRY)
            response = directory.net.get(f"{base.rstrip('/')}/{certificate_id}")
            start, end, explanation = _suggested_window(response.json())
            retry = parse_retry_after(response.headers.get("Retry-After"), now)
            # RFC 9773 section 4.3: honour Retry-After, within sane bounds (a minute, a day).
            retry_after = now + (timedelta(seconds=min(max(retry, 60.0), 86400.0)) if retry is not None
                                 else _ARI_DEFAULT_RETRY)
            return RenewalWindow(start=start, end=end, retry_after=retry_after, explanation_url=explanation)

    # -- Revoker -----------------------------------------------------------------------------------------------

    def revoke(self, certificate: x509.Certificate, reason: str) -> None:
        """Revoke with the account that ordered it (RFC 8555 section 7.6); ``reason`` is a CRLReason name."""
        if reason not in REVOCATION_REASONS:
            msg = f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}"
            raise UsageError(msg)
        label = f"serial {pki.serial_hex(certificate)}"
        with self._translated(label, self.config.directory):
            directory = self._directory(self.config.directory)
            directory.with_account(lambda: directory.client.revoke(certificate, REVOCATION_REASONS[reason]))

    # -- the order, step by step -------------------------------------------------------------------------------

    def _directory_url(self, request: IssueRequest) -> str:
        if not request.dry_run:
            return self.config.directory
        if not self.config.staging_directory:
            raise IssuanceError(self.name, request.certificate,
                                "a dry run needs staging_directory in the issuer's configuration")
        return self.config.staging_directory

    def _directory(self, url: str) -> _Directory:
        with self._lock:
            found = self._directories.get(url)
            if found is None:
                home = account_home(self.state_dir, self.name, url)
                found = self._directories[url] = _Directory(url, self.config, home)
            return found

    def _replaces(self, request: IssueRequest) -> str | None:
        """The ARI identifier of the certificate being replaced; None (logged) when it has none: renewing matters
        more than the ARI exemption."""
        if request.replaces is None:
            return None
        try:
            return ari_certificate_id(request.replaces)
        except ValueError as exc:
            log.info("certificate %r: ordering without replaces: %s", request.certificate, exc)
            return None

    def _certificate_id(self, certificate: x509.Certificate, label: str) -> str:
        try:
            return ari_certificate_id(certificate)
        except ValueError as exc:
            raise IssuanceError(self.name, label, str(exc)) from None

    def _order(self, directory: _Directory, request: IssueRequest, csr: bytes,
               replaces: str | None) -> messages.OrderResource:
        try:
            return directory.with_account(lambda: self._new_order(directory, request, csr, replaces))
        except messages.Error as error:
            if str(error.typ or "").endswith(":invalidProfile"):  # not among the library's known codes
                # The directory listed the profile but newOrder refused it (the CA changed its profiles since):
                # name what it offers now.
                offered = _Directory(directory.url, self.config, directory.home).profiles
                raise IssuanceError(self.name, request.certificate,
                                    f"{describe_profile_refusal(directory.url, self.config.profile or '', offered)}"
                                    f" [{error.detail}]", problem_type=str(error.typ)) from None
            if replaces is None or not may_order_without_replaces(str(error.typ or ""), str(error.detail or "")):
                raise
            log.info("certificate %r: the CA refused an order replacing %s (%s: %s); ordering without replaces, "
                     "once", request.certificate, replaces, str(error.typ or "").rsplit(":", 1)[-1], error.detail)
        except _Unreachable as exc:
            if replaces is None or not server_error_may_spare_replaces(exc.status):
                raise
            log.info("certificate %r: the CA failed an order replacing %s (%s, also when asked again); ordering "
                     "without replaces, once", request.certificate, replaces, exc.reason)
        return directory.with_account(lambda: self._new_order(directory, request, csr, None))

    def _new_order(self, directory: _Directory, request: IssueRequest, csr: bytes,
                   replaces: str | None) -> messages.OrderResource:
        profile = self.config.profile
        if profile and profile not in directory.profiles:
            raise IssuanceError(self.name, request.certificate,
                                describe_profile_refusal(directory.url, profile, list(directory.profiles)),
                                problem_type="urn:ietf:params:acme:error:invalidProfile")
        order = _NewOrder(
            identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in request.domains],
            profile=profile or None,
            replaces=replaces,
        )
        client = directory.client
        net = directory.net
        # Naming replaces: a server error is asked once more, then the order goes without it (_order).
        sparing = net.retrying(replace(net.policy, server_error_attempts=REPLACES_SERVER_ERROR_ATTEMPTS)) \
            if replaces else contextlib.nullcontext()
        with sparing:
            response = client._post(client.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authorizations = [client._authzr_from_response(client._post_as_get(url), uri=url)
                          for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr)

    def _responder(self) -> Responder:
        c = self.config
        if c.challenge == "http-01":
            if c.webroot:
                return WebrootHttp01(c.webroot)
            # Half the order's time for another certkeeper process to finish its own validation on the port.
            return StandaloneHttp01(c.http_address, c.http_port, wait=c.timeout.total_seconds() / 2)
        if c.challenge == "dns-persist-01":
            if not c.dns_server:
                msg = "dns-persist-01 needs dns_server, to check the records before an order"
                raise ChallengeFailed(msg)
            return PersistDns01(c.dns_server, zone=c.dns_zone, judge=self._judge_persist)
        if c.dns_hook:
            return HookDns01(c.dns_hook, c.dns_timeout.total_seconds(), challenge_type=c.challenge)
        if not (c.dns_server and c.tsig_key_file):
            msg = f"{c.challenge} needs dns_server and tsig_key_file, or dns_hook"
            raise ChallengeFailed(msg)
        from certkeeper.dnsclient import parse_tsig_key  # dnspython only for the DNS challenges (startup)

        key = parse_tsig_key(read_secret_file(c.tsig_key_file, "the TSIG key"), str(c.tsig_key_file))
        return Rfc2136Dns01(c.dns_server, key, zone=c.dns_zone, timeout=c.dns_timeout.total_seconds(),
                            challenge_type=c.challenge)

    def _check_persist_records(self, directory: _Directory,
                               domains: Sequence[str]) -> tuple[tuple[str, datetime], ...]:
        """The dns-persist-01 records, checked; those of this account whose persistUntil is near are returned."""
        responder = self._responder()
        assert isinstance(responder, PersistDns01)
        identities = tuple(directory.client.directory.meta.caa_identities or ())
        account_uri = directory.account_uri()
        seen = responder.check([ChallengeAnswer(identifier=domain, token="", key_authorization="",
                                                account_uri=account_uri, issuer_domain_names=identities)
                                for domain in domains])
        now = self.clock()
        expiring: dict[tuple[str, datetime], None] = {}
        for name, values in seen.items():
            for value in values:
                record = parse_persist_record(value)
                if record is None or record.account_uri != account_uri or record.persist_until is None:
                    continue
                if persist_until_warning(record.persist_until, warning=self.config.persist_warning,
                                         now=now) is not None:
                    log.warning("dns-persist-01 record %s ends at persistUntil %s, within persist_warning",
                                name, record.persist_until.isoformat())
                    expiring[(name, record.persist_until)] = None
        return tuple(expiring)

    def _judge_persist(self, answer: ChallengeAnswer, values: Sequence[str]) -> str | None:
        return judge_persist_records(values, issuer_domain_names=answer.issuer_domain_names,
                                     account_uri=answer.account_uri, wildcard=answer.identifier.startswith("*."),
                                     now=self.clock())

    def _authorize(self, directory: _Directory, order: messages.OrderResource, certificate: str,
                   deadline: float) -> None:
        responder = self._responder()
        pending: list[tuple[messages.AuthorizationResource, messages.ChallengeBody, ChallengeAnswer]] = []
        for authorization in order.authorizations:
            body = authorization.body
            if body.status == messages.STATUS_VALID:
                continue  # reused from an earlier order (RFC 8555 section 7.1.4)
            name = ("*." if body.wildcard else "") + body.identifier.value
            offered = [c for c in body.challenges if _challenge_type(c) == responder.challenge_type]
            if not offered:
                kinds = ", ".join(_challenge_type(c) for c in body.challenges) or "none"
                why = "; wildcard names need a DNS challenge" if body.wildcard else ""
                raise IssuanceError(self.name, certificate, f"the CA offers no {responder.challenge_type} "
                                    f"challenge (only {kinds}){why}", identifier=name)
            challenge = offered[0]
            pending.append((authorization, challenge, self._answer(directory, challenge, name)))
        if not pending:
            return
        answers = [answer for _, _, answer in pending]
        entries = [(a.identifier, a.token, a.key_authorization) for a in answers]
        dns01 = isinstance(responder, Rfc2136Dns01 | HookDns01)
        if dns01:  # durably, before publishing: a crash from here on leaves them for remove_leftovers
            journal.record(self.state_dir, certificate, entries)
        try:
            self._validate(directory, certificate, deadline, responder, pending)
        finally:
            if dns01:
                journal.forget(self.state_dir, certificate, entries)

    def remove_leftovers(self, certificate: str) -> list[str]:
        """Remove the dns-01 values an interrupted order of ``certificate`` left published (see
        :mod:`certkeeper.issuers.journal`); returns the names cleaned.  Raises :class:`IssuanceError`."""
        entries = journal.pending(self.state_dir, certificate)
        if not entries:
            return []
        answers = [ChallengeAnswer(identifier=i, token=t, key_authorization=k) for i, t, k in entries]
        try:
            responder = self._responder()
            if isinstance(responder, Rfc2136Dns01 | HookDns01):
                responder.remove(answers)
        except ChallengeFailed as exc:
            raise IssuanceError(self.name, certificate, f"stray dns-01 values not removed yet: {exc}") from None
        journal.forget(self.state_dir, certificate, entries)
        return sorted({a.dns_name for a in answers})

    def _validate(self, directory: _Directory, certificate: str, deadline: float, responder: Responder,
                  pending: list[tuple[messages.AuthorizationResource, messages.ChallengeBody, ChallengeAnswer]],
                  ) -> None:
        with responder.published([answer for _, _, answer in pending]):
            retry_after: float | None = None
            for _, challenge, _ in pending:
                # dns-account-01, dns-persist-01: the library knows them not; the response is {} for both
                # (RFC 8555 section 7.5.1).  Posted here rather than by answer_challenge, to see its Retry-After.
                chall = challenge.chall
                response = directory.client._post(
                    challenge.uri, _EmptyResponse() if isinstance(chall, challenges.UnrecognizedChallenge)
                    else chall.response(directory.key))
                retry_after = _later(retry_after, self._retry_after(response))
            # Validation is under way: the first authorization is looked at after a short wait (or when the CA
            # said), the others at once, since they were validated meanwhile.
            look_now = False
            for authorization, challenge, answer in pending:
                final = self._poll(directory, authorization.uri, certificate, deadline,
                                   lambda body: body.get("status") not in ("pending", "processing"),
                                   retry_after=retry_after, look_now=look_now)
                look_now = True
                if final.get("status") != "valid":
                    self._raise_validation_failure(final, challenge, answer, certificate)

    def _answer(self, directory: _Directory, challenge: messages.ChallengeBody, name: str) -> ChallengeAnswer:
        """What the responder publishes or checks for one challenge, the library's types or not."""
        chall = challenge.chall
        if not isinstance(chall, challenges.UnrecognizedChallenge):
            return ChallengeAnswer(identifier=name, token=chall.encode("token"),
                                   key_authorization=chall.key_authorization(directory.key))
        account_uri = directory.account_uri()
        token = str(chall.jobj.get("token", ""))
        thumbprint = jose.b64.b64encode(directory.key.thumbprint(hash_function=hashes.SHA256)).decode()
        return ChallengeAnswer(identifier=name, token=token,
                               key_authorization=f"{token}.{thumbprint}" if token else "",
                               account_uri=account_uri,
                               issuer_domain_names=tuple(chall.jobj.get("issuer-domain-names") or ()))

    def _raise_validation_failure(self, authorization: dict[str, Any], challenge: messages.ChallengeBody,
                                  answer: ChallengeAnswer, certificate: str) -> None:
        problem: dict[str, Any] = {}
        for item in authorization.get("challenges", []):
            if isinstance(item, dict) and item.get("type") == _challenge_type(challenge) and item.get("error"):
                problem = _problem(item["error"])
        problem_type = str(problem.get("type", "urn:ietf:params:acme:error:unauthorized"))
        detail = str(problem.get("detail", f"the authorization became {authorization.get('status')}"))
        raise IssuanceError(
            self.name, certificate,
            describe_validation_failure(problem_type, detail, _challenge_type(challenge), answer.identifier,
                                        self.config.http_port),
            problem_type=problem_type, identifier=answer.identifier)

    def _finalize(self, directory: _Directory, order: messages.OrderResource, certificate: str,
                  deadline: float) -> str:
        client = directory.client
        # The order may still be "pending" for a moment after the last authorization turned valid.
        body = self._poll(directory, order.uri, certificate, deadline, lambda b: b.get("status") != "pending")
        if body.get("status") == "ready":
            request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(order.csr_pem))
            response = client._post(order.body.finalize, request)
            body = response.json()
            if body.get("status") == "processing":  # RFC 8555 section 7.4: poll the order until it settles
                body = self._poll(directory, order.uri, certificate, deadline,
                                  lambda b: b.get("status") != "processing",
                                  retry_after=self._retry_after(response), look_now=False)
        if body.get("status") != "valid" or not body.get("certificate"):
            error = _problem(body.get("error") or {})
            raise IssuanceError(self.name, certificate,
                                f"the order ended {body.get('status')}: {error.get('detail', 'no detail given')}",
                                problem_type=str(error.get("type", "")))
        response = client._post_as_get(body["certificate"])
        text: str = response.text
        return text

    def _poll(self, directory: _Directory, url: str, certificate: str, deadline: float,
              done: Callable[[dict[str, Any]], bool], *, retry_after: float | None = None,
              look_now: bool = True) -> dict[str, Any]:
        """POST-as-GET ``url`` until ``done``: at once if ``look_now``, else after the first wait of the poll
        policy, or after ``retry_after`` (the CA's word from the request that started the work)."""
        waited = 0
        status = "not looked at yet"
        if look_now:
            body, retry_after = self._look(directory, url)
            if done(body):
                return body
            status = str(body.get("status"))
        while True:
            delay = next_poll_delay(self.poll_policy, waited, retry_after, deadline - time.monotonic())
            if delay is None:
                asked = f"; it asked to look again in {retry_after:g} s" if retry_after is not None else ""
                raise IssuanceError(self.name, certificate,
                                    f"the CA did not finish {url} within {self.config.timeout.total_seconds():g} s "
                                    f"(status {status}{asked}); raise timeout or try again later")
            log.debug("%s is %s; looking again in %.3f s", url, status, delay)
            self._sleep(delay)
            waited += 1
            body, retry_after = self._look(directory, url)
            if done(body):
                return body
            status = str(body.get("status"))

    def _look(self, directory: _Directory, url: str) -> tuple[dict[str, Any], float | None]:
        response = directory.client._post_as_get(url)
        body: dict[str, Any] = response.json()
        return body, self._retry_after(response)

    def _retry_after(self, response: requests.Response) -> float | None:
        return parse_retry_after(response.headers.get("Retry-After"), self.clock())

    @contextlib.contextmanager
    def _translated(self, certificate: str, url: str) -> Iterator[None]:
        """Library and transport failures -> certkeeper's error tree, with the issuer, certificate and URL."""
        try:
            yield
        except _Unreachable as exc:
            # What the CA answered, when it did (an HTTP 500 is the CA's own trouble, not the network's).
            what = f"answered {exc.reason}, also when asked again" if exc.answered else \
                f"could not be reached: {exc.reason}"
            asked = f" (asked {exc.url})" if exc.url != url else ""  # the request that failed, not the directory
            raise CaUnavailable(self.name, certificate, f"the CA at {url} {what}{asked}",
                                retry_after=exc.retry_after) from None
        except messages.Error as error:
            kind = CaUnavailable if error.code in ("rateLimited", "serverInternal") else IssuanceError
            identifier = str(error.identifier.value) if error.identifier is not None else ""
            raise kind(self.name, certificate, f"the CA at {url} refused: {error.detail or error.description} "
                       f"[{error.code or error.typ}]", problem_type=str(error.typ or ""),
                       identifier=identifier) from None
        except ChallengeFailed as exc:
            raise IssuanceError(self.name, certificate, str(exc)) from None
        except (acme_errors.Error, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # TypeError, AttributeError: JSON of another shape than RFC 8555's (a list, a string for an object)
            raise IssuanceError(self.name, certificate, f"unexpected answer from the CA at {url}: {exc}") from None
