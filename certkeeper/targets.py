"""What an endpoint string means: ``smtps://mail.example.org:465``, ``imap://[2001:db8::1]``, ``mx:25``.

Parsed once, in the configuration and on the command line, into a :class:`Target` that says where to connect
and how to get to TLS (implicit, or which STARTTLS dialect).
"""

from __future__ import annotations

import ipaddress

from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from typing import Literal

    Dialect = Literal["smtp", "imap", "pop3", "sieve"]
    TlsMode = Literal["implicit", "starttls"]


@frozen
class Protocol:
    """A scheme: its well-known port, implicit TLS or STARTTLS, and the STARTTLS dialect."""

    name: str
    default_port: int
    tls: TlsMode
    dialect: Dialect | None


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("smtps", 465, "implicit", None),
        Protocol("smtp", 25, "starttls", "smtp"),
        Protocol("imaps", 993, "implicit", None),
        Protocol("imap", 143, "starttls", "imap"),
        Protocol("pop3s", 995, "implicit", None),
        Protocol("pop3", 110, "starttls", "pop3"),
        Protocol("sieve", 4190, "starttls", "sieve"),
        Protocol("https", 443, "implicit", None),
        # Generic implicit TLS on a port with no well-known protocol (``--starttls none`` on port 2465).
        Protocol("tls", 0, "implicit", None),
    )
}

# RFC 8314 names for the submission ports, accepted as URL schemes too.
SCHEME_ALIASES = {"submissions": "smtps", "submission": "smtp", "managesieve": "sieve"}

WELL_KNOWN_PORTS: dict[int, str] = {
    465: "smtps", 25: "smtp", 587: "smtp", 993: "imaps", 143: "imap",
    995: "pop3s", 110: "pop3", 4190: "sieve", 443: "https",
}

# ``--starttls`` values: a dialect, or "none" for implicit TLS.
STARTTLS_CHOICES = ("auto", "smtp", "imap", "pop3", "sieve", "none")


@frozen
class Target:
    """One endpoint to probe.  ``text`` is what the user wrote, kept for messages and JSON output."""

    text: str
    host: str
    port: int
    protocol: str

    @property
    def tls(self) -> TlsMode:
        return PROTOCOLS[self.protocol].tls

    @property
    def dialect(self) -> Dialect | None:
        return PROTOCOLS[self.protocol].dialect

    @property
    def is_ip_literal(self) -> bool:
        return is_ip_literal(self.host)

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 literals bracketed, as people write it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_ip_literal(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address rather than a host name (``[...]`` brackets not allowed)."""
    # A host name is refused without ipaddress's three exceptions (3 us, once per probed endpoint): an IPv6
    # literal has a colon, an IPv4 one only digits and dots.
    if ":" not in name and not name.replace(".", "").isdigit():
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_target(text: str, starttls: str = "auto") -> Target:
    """Parse one endpoint; ValueError with a reason a person understands otherwise.

    ``starttls`` overrides the protocol of a bare ``host:port`` (and of a URL whose scheme it contradicts is
    not allowed to: a URL says what it means).
    """
    raw = text.strip()
    if not raw:
        msg = "empty endpoint"
        raise ValueError(msg)
    if starttls not in STARTTLS_CHOICES:
        msg = f"--starttls must be one of {', '.join(STARTTLS_CHOICES)}, not {starttls!r}"
        raise ValueError(msg)
    scheme = ""
    rest = raw
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        scheme = SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
        if scheme not in PROTOCOLS or scheme == "tls":
            known = ", ".join(sorted(name for name in PROTOCOLS if name != "tls"))
            msg = f"unknown scheme {scheme!r} in {raw!r} (known: {known})"
            raise ValueError(msg)
        rest = rest.rstrip("/")
        if "/" in rest:
            msg = f"an endpoint has no path: {raw!r}"
            raise ValueError(msg)
    host, port = _split_host_port(rest, raw)
    if scheme:
        protocol = scheme
        if port is None:
            port = PROTOCOLS[scheme].default_port
    else:
        if port is None:
            msg = f"no port in {raw!r}: write host:port or a URL such as smtps://{rest}"
            raise ValueError(msg)
        protocol = _protocol_for_port(port, starttls, raw)
    return Target(text=raw, host=host, port=port, protocol=protocol)


def _split_host_port(rest: str, raw: str) -> tuple[str, int | None]:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            msg = f"unclosed '[' in {raw!r}"
            raise ValueError(msg)
        host = rest[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            msg = f"not an IPv6 address in brackets: {host!r} in {raw!r}"
            raise ValueError(msg) from None
        tail = rest[end + 1 :]
        if not tail:
            return host, None
        if not tail.startswith(":"):
            msg = f"unexpected {tail!r} after ']' in {raw!r}"
            raise ValueError(msg)
        return host, _port(tail[1:], raw)
    if rest.count(":") > 1:
        msg = f"IPv6 addresses go in brackets: [{rest}] in {raw!r}"
        raise ValueError(msg)
    host, _, port_text = rest.partition(":")
    if not host:
        msg = f"no host in {raw!r}"
        raise ValueError(msg)
    return host.lower(), (_port(port_text, raw) if port_text else None)


def _port(text: str, raw: str) -> int:
    if not text.isdigit():
        msg = f"port {text!r} is not a number in {raw!r}"
        raise ValueError(msg)
    if not 0 < int(text) < 65536:
        msg = f"port {int(text)} out of range in {raw!r}"
        raise ValueError(msg)
    return int(text)


def _protocol_for_port(port: int, starttls: str, raw: str) -> str:
    if starttls == "auto":
        if port not in WELL_KNOWN_PORTS:
            msg = (
                f"port {port} has no well-known mail protocol in {raw!r}: write a URL "
                f"(smtp://, smtps://, imap://, ...) or pass --starttls smtp|imap|pop3|sieve|none"
            )
            raise ValueError(msg)
        return WELL_KNOWN_PORTS[port]
    if starttls == "none":
        known = WELL_KNOWN_PORTS.get(port)
        return known if known and PROTOCOLS[known].tls == "implicit" else "tls"
    return starttls


def encode_host_name(name: str) -> bytes:
    """``name`` as SNI and certificates carry it (A-labels, RFC 5890); UnicodeError when it is not a host name.

    An ASCII name with labels of 1 to 63 octets is its own encoding (what the ``idna`` codec returns for it), so
    ``certkeeper check`` on such a name never loads the codec and its Unicode tables (milliseconds per process).
    """
    if name.isascii() and all(0 < len(label) <= 63 for label in name.removesuffix(".").split(".")):
        return name.encode("ascii")
    return name.encode("idna")
