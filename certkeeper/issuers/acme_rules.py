"""The ACME issuer's decisions, pure (no network, no clock of their own; ``now`` is passed in): how long to wait
before a retry and before the next look at a pending authorization or order, what a ``Retry-After`` says, the
ARI certificate identifier, which refusals allow the order again without ``replaces``, and a failure in a mail
administrator's words.  :mod:`certkeeper.issuers.acme` acts on them; each is tested without a server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import datetime
from email.utils import parsedate_to_datetime

from cryptography import x509

from certkeeper.values import frozen


@frozen
class RetryPolicy:
    """Bounds of the retries of one request: attempts, backoff, and total seconds (``budget``)."""

    attempts: int = 6
    base: float = 0.2
    cap: float = 10.0
    budget: float = 60.0
    bad_nonce_retries: int = 20  # at a 50 % rejection rate, 21 failures in a row: one in two million
    server_error_attempts: int | None = None  # fewer attempts after a 5xx (None: ``attempts``)


def is_server_error(status: int | None) -> bool:
    """An HTTP 5xx answer (None: no answer at all)."""
    return status is not None and 500 <= status <= 599


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` named by a Retry-After header (delay-seconds or HTTP-date, RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def retry_delay(policy: RetryPolicy, attempt: int, elapsed: float, retry_after: float | None,
                jitter: float, *, status: int | None = None) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based) after a failure with the HTTP ``status`` (None:
    no answer), or None to give up.

    The server's ``Retry-After`` wins over the backoff; ``jitter`` in [0, 1) spreads the backoff over its upper
    half so that many clients failing together do not come back together.
    """
    attempts = policy.attempts
    if is_server_error(status) and policy.server_error_attempts is not None:
        attempts = min(attempts, policy.server_error_attempts)
    if attempt >= attempts:
        return None
    if retry_after is not None:
        delay = retry_after
    else:
        delay = min(policy.cap, policy.base * 2 ** (attempt - 1)) * (0.5 + jitter / 2)
    if elapsed + delay > policy.budget:
        return None
    return delay


@frozen
class PollPolicy:
    """How often a pending authorization or order is looked at when the CA names no ``Retry-After``.

    CAs often finish in milliseconds (Pebble validates http-01 2 ms after the challenge POST), so the first look
    comes soon; the waits then grow geometrically, so that a slow CA gets at most five looks in the first second
    of a poll and one every ``cap`` seconds after (a real CA is never hammered).
    """

    first: float = 0.005
    growth: float = 3.0
    cap: float = 3.0


def next_poll_delay(policy: PollPolicy, waited: int, retry_after: float | None, remaining: float) -> float | None:
    """Seconds to wait before the next look at a pending authorization or order, or None if the deadline comes
    first.  ``waited``: the waits of this poll so far; ``remaining``: seconds left until the order's deadline.

    A ``Retry-After`` from the CA is honoured whatever it says (RFC 8555 section 7.1.6: it says when to look
    again), never below ``policy.first`` (a ``0`` must not become a busy loop).
    """
    adaptive = min(policy.cap, policy.first * policy.growth ** waited)
    delay = adaptive if retry_after is None else max(retry_after, policy.first)
    return delay if delay <= remaining else None


def ari_certificate_id(certificate: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(serial number's DER content octets)."""
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    if not aki:
        msg = "the certificate has no authority key identifier; the CA cannot be asked about it"
        raise ValueError(msg)
    serial = certificate.serial_number
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # two's complement: a leading 0 if needed

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(aki)}.{b64(serial_der)}"


def may_order_without_replaces(problem_type: str, detail: str) -> bool:
    """Was a newOrder refused because of its ``replaces`` field, so that the same order without it can succeed?

    RFC 9773 section 5: the CA may refuse an order whose ``replaces`` names a certificate that was already
    replaced (``alreadyReplaced``) or, as Let's Encrypt and Pebble do, one ordered by another account
    (``unauthorized``: "requester account did not request the certificate being replaced").  In a fleet the
    installed certificate is often another node's, ordered under that node's account.  Renewal matters more than
    the ARI rate-limit exemption, so such an order is placed again without ``replaces``.  So is one whose
    ``replaces`` the CA cannot parse or place (Pebble after a restart, or a certificate from another CA:
    "parsing ARI CertID failed: no known issuer matches the provided Authority Key Identifier").
    """
    short = problem_type.rsplit(":", 1)[-1]
    words = detail.lower()
    about_replaces = any(w in words for w in ("replace", "ari certid", "authority key identifier"))
    return short == "alreadyReplaced" or (short in ("unauthorized", "malformed") and about_replaces)


# A newOrder naming ``replaces`` that fails with a server error is asked once more, then placed without it
# (:func:`server_error_may_spare_replaces`): the other retries would only wait out a CA failing on the field.
REPLACES_SERVER_ERROR_ATTEMPTS = 2


def server_error_may_spare_replaces(status: int | None) -> bool:
    """After a newOrder carrying ``replaces`` failed with the HTTP ``status`` (retries exhausted), is the same order
    without it worth one more request?

    A server error (5xx) may be the CA failing on the field it rarely sees: Pebble 2.10 answers 500 "could not find
    an order for the given certificate" for about one certificate in 256 of its own, whose serial's DER content
    octets (what RFC 9773 section 4.1 names) start with the zero byte that keeps the number positive, since it
    looks serials up without that byte.  A CA that is really down fails the second order too, and the failure is
    reported as before.  Not after 429: a rate limit is not the field's fault, and an order without ``replaces``
    would not be exempt from it.  Not without an answer (a timeout, no connection): nothing said it was the field.
    """
    return is_server_error(status)


def describe_profile_refusal(directory_url: str, profile: str, offered: Iterable[str]) -> str:
    """A profile the CA does not offer, with the ones it does (``meta.profiles``, RFC 8555 profiles extension)."""
    listed = ", ".join(sorted(offered)) or "none"
    return (f"the CA at {directory_url} does not offer the profile {profile!r} (it offers: {listed}); "
            f"change or remove profile in the issuer's configuration")


_PROBLEM_WORDS = {
    "connection": "the CA could not connect to the server to fetch the answer",
    "unauthorized": "the CA did not get the expected answer",
    "incorrectResponse": "the CA got a wrong answer",
    "dns": "the CA's DNS lookup failed",
    "caa": "a CAA record of the domain does not allow this CA to issue",
    "rejectedIdentifier": "the CA will not issue for this name",
    "tls": "the TLS connection of the validation failed",
}


def describe_validation_failure(problem_type: str, detail: str, challenge_type: str, identifier: str,
                                http_port: int) -> str:
    """A failed validation in a mail administrator's words: what the CA saw, and where to look."""
    short = problem_type.rsplit(":", 1)[-1]
    if challenge_type == "http-01":
        advice = (f"check that http://{identifier.removeprefix('*.')}:{http_port}/.well-known/acme-challenge/ "
                  f"reaches this host from the internet (firewall, NAT, another web server on the port)")
    else:
        advice = (f"check that the TXT record _acme-challenge.{identifier.removeprefix('*.')} is published on "
                  f"every authoritative server of the zone")
    words = _PROBLEM_WORDS.get(short, "validation failed")
    return f"{challenge_type} validation failed: {words}: {detail} [{short}]; {advice}"
