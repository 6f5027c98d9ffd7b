"""The DNS questions an MTA-STS sender asks: TXT at ``_mta-sts.<domain>``, MX of the domain, addresses of hosts.

Asked of one resolver (``--resolver HOST[:PORT]``, the test bed's BIND; default the first nameserver of
``/etc/resolv.conf``) through :mod:`certkeeper.dnsclient`.  A name that does not exist or has no such records is
an empty answer; only failing to get an answer (timeout, SERVFAIL, REFUSED) raises :class:`LookupFailed`.
"""

from __future__ import annotations

from certkeeper import dnsclient
from certkeeper.errors import DnsError

_EMPTY_RCODES = ("NOERROR", "NXDOMAIN")


class LookupFailed(Exception):
    """The resolver gave no usable answer; the message names the name and the resolver."""


class Resolver:
    """One resolver for a whole check, one deadline per question."""

    def __init__(self, server: str | None = None, *, timeout: float = 5.0) -> None:
        try:
            host, self.port = dnsclient.parse_server(server or dnsclient.default_resolver())
            self.address = dnsclient.resolve_address(host)
        except (DnsError, ValueError) as exc:
            message = f"no usable resolver: {exc}"
            raise LookupFailed(message) from None
        self.timeout = timeout
        self.name = f"{self.address}:{self.port}"

    def _ask(self, name: str, rdtype: str) -> tuple[str, ...]:
        try:
            answer = dnsclient.query(self.address, self.port, name, rdtype, recursive=True, timeout=self.timeout)
        except DnsError as exc:
            raise LookupFailed(str(exc)) from None
        if answer.rcode not in _EMPTY_RCODES:
            message = f"{self.name} answered {answer.rcode} to the {rdtype} query for {name}"
            raise LookupFailed(message)
        return answer.values

    def txt(self, name: str) -> list[str]:
        """Each TXT record as one string (its character-strings joined)."""
        return list(self._ask(name, "TXT"))

    def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, host) pairs, most preferred first; host names lower case, without the trailing dot."""
        found = []
        for value in self._ask(domain, "MX"):
            preference, _, host = value.partition(" ")
            found.append((int(preference), host.rstrip(".").lower()))
        return sorted(found)

    def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``."""
        return [*self._ask(host, "A"), *self._ask(host, "AAAA")]
