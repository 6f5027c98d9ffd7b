"""Fetching ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` as a sender does (RFC 8461 section 3.3).

Connected to an address the caller resolved (so ``--resolver`` applies to the policy host too), with SNI and
certificate verification by the name ``mta-sts.<domain>``; no redirects followed; the body read to at most one byte
more than :data:`~certkeeper.mtasts.policy.MAX_POLICY_BYTES`, so a huge or endless body costs nothing.  ``timeout``
bounds the whole fetch from one address (connect, handshake, headers, body), not each read: a server dripping a
byte at a time holds a check no longer than one that never answers.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Sequence
from pathlib import Path

from certkeeper import tls
from certkeeper.deadline import Deadline, read_within
from certkeeper.mtasts.policy import (
    MAX_POLICY_BYTES,
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
    WELL_KNOWN_PATH,
    PolicyFinding,
)
from certkeeper.values import frozen

HTTPS_PORT = 443


@frozen
class Fetched:
    """The policy body, or why there is none (an RFC 8460 word in ``finding``); the address that answered."""

    url: str
    body: bytes | None
    finding: PolicyFinding | None = None
    address: str | None = None
    reached: bool = True  # False: no TCP connection to ``address``, so the next address is worth a try


def policy_host(domain: str) -> str:
    return f"mta-sts.{domain.rstrip('.').lower()}"


def policy_url(domain: str) -> str:
    return f"https://{policy_host(domain)}{WELL_KNOWN_PATH}"


def fetch_policy(domain: str, addresses: Sequence[str], *, ca_file: Path | str | None, timeout: float,
                 port: int = HTTPS_PORT) -> Fetched:
    """Try each address in turn; the first that answers (well or badly over verified TLS) decides."""
    url = policy_url(domain)
    host = policy_host(domain)
    if not addresses:
        return Fetched(url, None, PolicyFinding(STS_POLICY_FETCH_ERROR, f"{host} has no A or AAAA record"))
    try:
        context = tls.require_tls12(tls.client_context(ca_file))
    except (OSError, tls.TlsError) as exc:
        return Fetched(url, None, PolicyFinding(STS_POLICY_FETCH_ERROR, f"cannot load the CA file {ca_file}: {exc}"))
    last: Fetched | None = None
    for address in addresses:
        last = _fetch_one(url, host, address, port, context, timeout)
        if last.reached:
            return last
    assert last is not None
    return last


class _Late(TimeoutError):
    """The fetch from one address ran past its deadline."""


def _fetch_one(url: str, host: str, address: str, port: int, context: tls.Context,
               timeout: float) -> Fetched:
    where = f"{host} ({address}:{port})"
    deadline = Deadline(timeout)
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        return Fetched(url, None, PolicyFinding(STS_POLICY_FETCH_ERROR, f"cannot connect to {where}: "
                                                                        f"{exc.strerror or exc}"), address,
                       reached=False)
    try:
        deadline.arm(raw, _Late)  # the handshake waits on it
        with context.wrap_socket(raw, server_hostname=host) as secure:
            deadline.arm(secure, _Late)
            secure.sendall(f"GET {WELL_KNOWN_PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certkeeper\r\n"
                        "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii"))
            response = http.client.HTTPResponse(secure)
            read_within(response, secure, deadline, lambda _: _Late())  # the socket timeout is per read
            response.begin()
            if response.status != 200:
                hint = "; senders follow no redirects (RFC 8461 section 3.3)" if 300 <= response.status < 400 else ""
                return Fetched(url, None, PolicyFinding(
                    STS_POLICY_FETCH_ERROR, f"{url} answered HTTP {response.status} {response.reason}{hint}"), address)
            media_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            body = response.read(MAX_POLICY_BYTES + 1)
    except tls.CertificateVerifyFailed as exc:
        return Fetched(url, None, PolicyFinding(
            STS_WEBPKI_INVALID, f"the certificate of {where} does not verify for {host}: {exc.verify_message}"),
            address)
    except TimeoutError:  # _Late, or the handshake or send running out of what was left
        return Fetched(url, None, PolicyFinding(STS_POLICY_FETCH_ERROR, f"fetching {url} from {address}:{port} "
                                                                        f"did not finish within {timeout:g} s"),
                       address)
    except (tls.TlsError, OSError, http.client.HTTPException) as exc:
        return Fetched(url, None, PolicyFinding(STS_POLICY_FETCH_ERROR, f"fetching {url} from {address}:{port} "
                                                                        f"failed: {exc}"), address)
    finally:
        raw.close()
    if media_type != "text/plain":
        return Fetched(url, body, PolicyFinding(
            STS_POLICY_INVALID, f"{url} is served as {media_type or 'no media type'!s}, RFC 8461 section 3.2 "
                                "requires text/plain"), address)
    return Fetched(url, body, None, address)
