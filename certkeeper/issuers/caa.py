"""CAA pre-flight (RFC 8659, RFC 8657): would the CA be allowed to issue for a name, for this account and challenge?

The rules are pure (the DNS lookup is passed in), so every one is tested without a server; :func:`caa_preflight`
is the thin shell asking a resolver through :mod:`certkeeper.dnsclient`.  The CA checks CAA itself; certkeeper
asks first so that a forbidding record stops the order before it is placed, with the record quoted and the fix
named, instead of an order spent and a ``caa`` problem.

- The relevant record set (RFC 8659 section 3): the CAA RRset of the name itself, else of its parent, and so on
  up to (not including) the root; a wildcard's search starts at its base name.
- ``issue`` governs names, ``issuewild`` wildcards when the set has any (else ``issue`` does); a set with neither
  allows every CA (RFC 8659 section 4.2, 4.3).  ``issue ";"`` allows none.  An unknown tag with the critical
  flag (128) allows none (section 4.1).
- RFC 8657 parameters: ``accounturi`` must equal the ordering account's URI, ``validationmethods`` must list
  the challenge type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from certkeeper.errors import DnsError
from certkeeper.values import frozen

log = logging.getLogger("certkeeper.issuers.caa")

KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "contactemail", "contactphone"})


@frozen
class CaaRecord:
    """One CAA record: ``flags tag "value"`` (RFC 8659 section 4.1)."""

    flags: int
    tag: str
    value: str

    @property
    def text(self) -> str:
        return f'{self.flags} {self.tag} "{self.value}"'

    @property
    def issuer_domain_name(self) -> str:
        return self.value.split(";", 1)[0].strip()

    @property
    def parameters(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for parameter in self.value.split(";")[1:]:
            key, _, value = parameter.strip().partition("=")
            if key:
                found[key.strip().lower()] = value.strip()
        return found


def parse_caa(text: str) -> CaaRecord | None:
    """A record in master-file syntax (``0 issue "letsencrypt.org"``); None when it is not one."""
    parts = text.split(None, 2)
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    value = parts[2].strip() if len(parts) == 3 else ""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return CaaRecord(int(parts[0]), parts[1].lower(), value)


@frozen
class CaaVerdict:
    """The relevant set for ``identifier`` (found at ``owner``) and, when it forbids, why and what to do."""

    identifier: str
    owner: str  # "" when no name up the tree has CAA records
    records: tuple[CaaRecord, ...]
    problem: str | None  # None: the CA may issue

    @property
    def allowed(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        if self.problem is None:
            where = f"CAA at {self.owner}" if self.owner else "no CAA record up to the root"
            return f"{self.identifier}: allowed ({where})"
        return f"{self.identifier}: {self.problem}"


def relevant_caa(name: str, lookup: Callable[[str], Sequence[str]]) -> tuple[str, tuple[CaaRecord, ...]]:
    """RFC 8659 section 3: the first non-empty CAA RRset from ``name`` up, and the name it was found at."""
    labels = name.removeprefix("*.").rstrip(".").split(".")
    for start in range(len(labels)):
        owner = ".".join(labels[start:]) + "."
        records = tuple(r for r in (parse_caa(text) for text in lookup(owner)) if r is not None)
        if records:
            return owner, records
    return "", ()


def judge_caa(identifier: str, owner: str, records: Sequence[CaaRecord], *, issuer_domain_names: Sequence[str],
              account_uri: str, challenge: str) -> CaaVerdict:
    """May a CA known as ``issuer_domain_names`` issue for ``identifier``, ordered by ``account_uri`` by
    ``challenge``, under ``records`` (the relevant set found at ``owner``)?"""
    records = tuple(records)
    wildcard = identifier.startswith("*.")
    ours = issuer_domain_names[0] if issuer_domain_names else "the CA's domain"
    fix_name = owner or identifier.removeprefix("*.") + "."

    def verdict(problem: str | None) -> CaaVerdict:
        return CaaVerdict(identifier, owner, records, problem)

    critical = [r for r in records if r.flags & 128 and r.tag not in KNOWN_TAGS]
    if critical:
        return verdict(f"CAA at {owner} has a critical property certkeeper and CAs do not know: "
                       f"{critical[0].text}; no CA may issue until it is removed")
    tag = "issuewild" if wildcard and any(r.tag == "issuewild" for r in records) else "issue"
    governing = [r for r in records if r.tag == tag]
    if not governing:
        return verdict(None)
    quoted = ", ".join(f'"{owner} CAA {r.text}"' for r in governing)
    for_ours = [r for r in governing if r.issuer_domain_name in issuer_domain_names]
    if not for_ours:
        return verdict(f"CAA at {owner} does not allow {ours} to issue ({quoted}); add "
                       f'"{fix_name} CAA 0 {tag} \\"{ours}\\"" or change the issuer')
    reasons: list[str] = []
    for record in for_ours:
        parameters = record.parameters
        named = parameters.get("accounturi")
        methods = [m.strip() for m in parameters.get("validationmethods", "").split(",") if m.strip()]
        if named is not None and named != account_uri:
            reasons.append(f"{record.text} names accounturi={named}, but this account is {account_uri} "
                           f"(RFC 8657)")
        elif methods and challenge not in methods:
            reasons.append(f"{record.text} allows validationmethods={','.join(methods)}, not {challenge} "
                           f"(RFC 8657)")
        else:
            return verdict(None)
    return verdict(f"CAA at {owner} forbids this order: {'; '.join(reasons)}; add "
                   f'"{fix_name} CAA 0 {tag} \\"{ours}; accounturi={account_uri}\\"" or change the challenge')


def caa_preflight(domains: Sequence[str], *, resolver: str, issuer_domain_names: Sequence[str], account_uri: str,
                  challenge: str) -> list[CaaVerdict]:
    """Each name's verdict, the records asked of ``resolver`` ("system": /etc/resolv.conf, or "host[:port]").

    The CA looks itself: a resolver that cannot be asked skips the pre-flight (logged), it never stops a renewal.
    """
    from certkeeper import dnsclient  # here, not at the top: an order without the pre-flight needs no dnspython

    try:
        if resolver == "system":
            host, port = dnsclient.default_resolver(), 53
        else:
            host, port = dnsclient.parse_server(resolver)
        address = dnsclient.resolve_address(host)
    except DnsError as exc:
        log.warning("CAA pre-flight skipped: %s", exc)
        return []

    def lookup(name: str) -> Sequence[str]:
        answer = dnsclient.query(address, port, name, "CAA", recursive=True)
        return answer.values if answer.rcode == "NOERROR" else ()

    verdicts: list[CaaVerdict] = []
    for domain in dict.fromkeys(domains):
        try:
            owner, records = relevant_caa(domain, lookup)
        except DnsError as exc:
            log.warning("CAA pre-flight for %s skipped: %s", domain, exc)
            continue
        verdicts.append(judge_caa(domain, owner, records, issuer_domain_names=issuer_domain_names,
                                  account_uri=account_uri, challenge=challenge))
    return verdicts
