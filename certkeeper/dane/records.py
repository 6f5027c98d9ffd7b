"""DANE for SMTP (RFC 7672): which TLSA records a certificate needs, and when its key may change.

Pure: no clock, no DNS, no files.  :mod:`certkeeper.dane.publish` publishes and looks up the records,
:mod:`certkeeper.dane.rollover` keeps the "next" key and the rollover state on disk and drives these functions.

Why a rollover needs care.  A sending MTA that validates DANE (RFC 7672 section 2.2) defers mail when no TLSA
record of ``_25._tcp.<MX host>`` matches what the server presents.  Resolvers cache the TLSA RRset for its TTL,
so a new key must be in DNS, on every authoritative server, for at least the TTL before the server presents it;
two TTLs here, as RFC 7671 section 8.1 asks (records for the future key added "at least two Times to Live (TTLs)
or longer before the new chain is deployed"), because a resolver may have fetched the old set just before the
new one appeared everywhere.

The rollover, one certificate (RFC 7671 section 8.1, "current + next"):

``unpublished``  the records wanted (current key, next key, issuing CAs) differ from what was published:
                 add the missing ones, and in ``cleanup`` remove those of a key no longer served;
``next-published``  published, not yet answered by every authoritative server, or for less than two TTLs;
``ready``        the next key's records have been visible for two TTLs: a renewal may issue with it;
``stable``       nothing to publish and a renewal changes no record (``reuse_key`` with ``3 1 1``, or only
                 ``2 1 1``): renewals go ahead at any time and touch no DNS.

A renewal that is due while the next key is not ``ready`` waits, as long as the certificate served now is safe;
only when expiry is closer than ``unsafe_rollover_days`` does it go ahead anyway, loudly
(:func:`gate_renewal`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certkeeper.values import field, frozen

# RFC 6698 section 2.1.1 (RFC 7218 acronyms).  SMTP uses only DANE-TA and DANE-EE: RFC 7672 section 3.1.3 makes
# the PKIX usages (0, 1) "unusable" for SMTP, since MTAs have no agreed set of public CAs.
DANE_TA = 2
DANE_EE = 3
# RFC 6698 section 2.1.2 (selector) and 2.1.3 (matching type).
SELECTOR_CERT = 0
SELECTOR_SPKI = 1
MATCH_FULL = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2

Phase = Literal["unpublished", "cleanup", "next-published", "ready", "stable"]


@frozen
class TlsaParameters:
    """A usage/selector/matching-type triple as configured: ``"3 1 1"``."""

    usage: int
    selector: int
    matching_type: int

    @classmethod
    def parse(cls, text: str) -> TlsaParameters:
        parts = text.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            msg = f"not a TLSA usage/selector/matching triple: {text!r}"
            raise ValueError(msg)
        usage, selector, matching = (int(p) for p in parts)
        if usage not in (DANE_TA, DANE_EE):
            msg = f"TLSA usage {usage} is unusable for SMTP (RFC 7672 section 3.1.3); use 3 or 2"
            raise ValueError(msg)
        if selector not in (SELECTOR_CERT, SELECTOR_SPKI) or matching not in (MATCH_FULL, MATCH_SHA256, MATCH_SHA512):
            msg = f"unknown TLSA selector or matching type in {text!r} (RFC 6698 section 2.1)"
            raise ValueError(msg)
        return cls(usage, selector, matching)

    @property
    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type}"


@frozen(order=True)
class TlsaRecord:
    """One TLSA resource record: owner name (absolute, trailing dot) and RDATA (RFC 6698 section 2.1)."""

    name: str
    usage: int
    selector: int
    matching_type: int
    data: str  # the certificate association data, lowercase hex

    @property
    def rdata(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type} {self.data}"

    def zone_line(self, ttl: int) -> str:
        """Master-file syntax (RFC 1035 section 5.1), as ``certkeeper dane show`` prints it."""
        return f"{self.name} {ttl} IN TLSA {self.rdata}"

    @classmethod
    def from_text(cls, name: str, rdata: str) -> TlsaRecord:
        usage, selector, matching, *data = rdata.split()
        return cls(absolute(name), int(usage), int(selector), int(matching), "".join(data).lower())


def absolute(name: str) -> str:
    return name.rstrip(".").lower() + "."


def record_names(hosts: Iterable[str], ports: Iterable[int]) -> list[str]:
    """``_25._tcp.mx.example.org.`` for each host and port (RFC 6698 section 3; for SMTP the TLSA base domain
    is the MX host name, RFC 7672 section 2.2.3).  A wildcard host has no TLSA name of its own and is skipped."""
    return [f"_{port}._tcp.{absolute(host)}" for host in dict.fromkeys(hosts) if not host.startswith("*.")
            for port in dict.fromkeys(ports)]


def association_data(parameters: TlsaParameters, *, certificate_der: bytes | None = None,
                     spki_der: bytes | None = None) -> str:
    """The certificate association data of RFC 6698 section 2.1.3, for a certificate or a bare public key.

    A bare key (the "next" key, not yet certified) only yields selector 1 data: a selector 0 record names one
    certificate, which cannot exist before it is issued.
    """
    if parameters.selector == SELECTOR_SPKI:
        if spki_der is None:
            msg = "selector 1 needs the SubjectPublicKeyInfo"
            raise ValueError(msg)
        selected = spki_der
    else:
        if certificate_der is None:
            msg = "selector 0 needs the whole certificate, which a key without one does not have"
            raise ValueError(msg)
        selected = certificate_der
    if parameters.matching_type == MATCH_SHA256:
        return hashlib.sha256(selected).hexdigest()
    if parameters.matching_type == MATCH_SHA512:
        return hashlib.sha512(selected).hexdigest()
    return selected.hex()


def certificate_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_spki_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


@frozen
class EndEntity:
    """A key of the certificate, with its certificate when it has one (the next key has none yet)."""

    spki_der: bytes
    certificate_der: bytes | None = None


def records_for(parameters: Sequence[TlsaParameters], names: Sequence[str], *, end_entities: Sequence[EndEntity],
                issuing_cas: Sequence[x509.Certificate]) -> frozenset[TlsaRecord]:
    """Every record wanted for ``names``: DANE-EE records for each end-entity key (one per key type, current
    and next), DANE-TA records for each CA certificate that issues or may issue (RFC 7672 section 3.1.1)."""
    records: set[TlsaRecord] = set()
    for p in parameters:
        data: list[str] = []
        if p.usage == DANE_EE:
            data = [association_data(p, certificate_der=e.certificate_der, spki_der=e.spki_der)
                    for e in end_entities if p.selector == SELECTOR_SPKI or e.certificate_der is not None]
        else:
            data = [association_data(p, certificate_der=certificate_der(ca), spki_der=certificate_spki_der(ca))
                    for ca in issuing_cas]
        records |= {TlsaRecord(name, p.usage, p.selector, p.matching_type, d) for name in names for d in data}
    return frozenset(records)


# More TLSA records at one name than this draws a warning: some large senders handle no more than about a dozen
# (issue 16), and current + next per key type plus the issuing CAs add up quickly.
CROWDED_NAME = 8


def crowded_names(records: Iterable[TlsaRecord], limit: int = CROWDED_NAME) -> list[tuple[str, int]]:
    """Each TLSA name that would carry more than ``limit`` records, with how many."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.name] = counts.get(record.name, 0) + 1
    return sorted((name, count) for name, count in counts.items() if count > limit)


def issuing_cas(chain: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates of ``chain`` a DANE-TA record may name: intermediates, not self-signed roots.

    RFC 7672 section 3.1.1 lets the trust anchor be any CA of the served chain, but requires the server to send
    it; servers send intermediates and usually not the root, so the intermediate is the dependable choice.
    """
    found: dict[bytes, x509.Certificate] = {}
    for certificate in chain:
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca and certificate.issuer != certificate.subject:
            found.setdefault(certificate_der(certificate), certificate)
    return list(found.values())


# -- the rollover state machine -------------------------------------------------------------------------------


# -- the retirement of records no longer wanted (decided in certkeeper.dane.retire) --------------------------


@frozen(order=True)
class ProbePoint:
    """One place a sender may reach: an address of an MX host on a DANE port, with or without SNI."""

    host: str
    address: str
    port: int
    sni: bool

    @property
    def label(self) -> str:
        where = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        return f"{self.host} {where} {'with SNI' if self.sni else 'without SNI'}"

    @property
    def key(self) -> str:
        """The point as stored in the rollover state (the store's ``dane_state``)."""
        return f"{self.host}|{self.address}|{self.port}|{int(self.sni)}"

    @classmethod
    def from_key(cls, text: str) -> ProbePoint:
        host, address, port, sni = text.split("|")
        return cls(host, address, int(port), sni == "1")


@frozen
class Streak:
    """Consecutive probes of one point that presented no retiring key, and when the first of them ran."""

    count: int
    first_at: datetime


@frozen
class Retirement:
    """Records still published for keys no longer wanted, since when, and the probe streaks since then."""

    records: frozenset[TlsaRecord]
    since: datetime
    streaks: Mapping[ProbePoint, Streak] = field(default_factory=dict)
    next_probe_at: datetime | None = None  # when the shell should probe again (the daemon wakes for it)
    # Whose records: a key type ("rsa-2048"), each retiring on its own; CA for DANE-TA records; "" not known.
    key: str = ""


@frozen
class RolloverState:
    """What was published, since when each record has been answered by every authoritative server (and the
    validating resolver), the retirement of records no longer wanted, and who lagged at the last look."""

    published: frozenset[TlsaRecord] = frozenset()
    visible_since: Mapping[TlsaRecord, datetime] = field(default_factory=dict)
    last_error: str = ""
    retirements: tuple[Retirement, ...] = ()  # one per key (type): each key's old records retire on their own
    lagging: tuple[str, ...] = ()  # servers (or the resolver) that did not answer the records, with why
    owners: Mapping[TlsaRecord, str] = field(default_factory=dict)  # the key type (or CA) each record names

    @property
    def retiring(self) -> frozenset[TlsaRecord]:
        return frozenset(r for retirement in self.retirements for r in retirement.records)


@frozen
class RolloverStep:
    """Where a rollover stands at ``now`` and what to do: ``publish``, ``confirm`` (ask the authoritative
    servers), ``wait`` (until ``until``) or ``none``.  ``retiring``: records no longer wanted that stay published
    until every address has served the new key over the dwell time (:mod:`certkeeper.dane.retire`); the shell
    probes for them whatever the action."""

    phase: Phase
    action: Literal["publish", "confirm", "wait", "none"]
    reason: str
    until: datetime | None = None
    add: frozenset[TlsaRecord] = frozenset()
    remove: frozenset[TlsaRecord] = frozenset()
    retiring: frozenset[TlsaRecord] = frozenset()
    rolling: tuple[str, ...] = ()  # "ready" for these key types only; the others keep their key (empty: all)


# Who DANE-TA records belong to in :attr:`RolloverState.owners`: the CA, not a key of ours.
CA_OWNER = "ca"


def decide_rollover(state: RolloverState, *, desired: frozenset[TlsaRecord], needed: frozenset[TlsaRecord],
                    current: frozenset[TlsaRecord], now: datetime, ttl: int,
                    retired: frozenset[TlsaRecord] = frozenset(),
                    needed_by_key: Mapping[str, frozenset[TlsaRecord]] | None = None,
                    installed_keys: frozenset[str] = frozenset()) -> RolloverStep:
    """The next step towards publishing ``desired`` (current + next keys + CAs).

    ``needed`` are the records the certificate of the next renewal will match (the next key's, or the current
    key's with ``reuse_key``), ``current`` those the certificate served now matches.  A published record no
    longer desired is removed only once it is in ``retired`` (its retirement is over: see
    :func:`certkeeper.dane.retire.decide_retirement`); until then it is *retiring*.

    Per key (a dual RSA + ECDSA certificate): ``needed_by_key`` splits ``needed`` by key type.  When some key
    types' next records have been visible for two TTLs and the others' not yet, the step is ``ready`` for those
    (:attr:`RolloverStep.rolling`): the renewal certifies their next keys and the others' installed keys, whose
    records stay published (``installed_keys``: the key types installed now; a key type not installed yet
    cannot be kept, and then the renewal waits for it).
    """
    stale = state.published - desired
    remove = stale & retired
    retiring = stale - remove
    add = desired - state.published
    if add or remove:
        phase: Phase = "cleanup" if remove else "unpublished"
        what = [f"{len(add)} to add"] * bool(add) + [f"{len(remove)} to remove"] * bool(remove)
        return RolloverStep(phase, "publish", f"TLSA records: {', '.join(what)}", add=add, remove=remove,
                            retiring=retiring)
    unseen = sorted(r for r in desired if r not in state.visible_since)
    if unseen:
        where = f": {state.lagging[0]}" if state.lagging else ""
        return RolloverStep("next-published", "confirm",
                            f"waiting until every authoritative server answers {unseen[0].name} {unseen[0].rdata}"
                            f"{where}", retiring=retiring)
    if needed <= current:
        return RolloverStep("stable", "none", "a renewal changes no TLSA record", retiring=retiring)
    ready_at = rollover_ready_at(state, needed, ttl)
    if ready_at is None:
        return RolloverStep("unpublished", "publish", "the next key's records are not published", add=needed,
                            retiring=retiring)
    if now < ready_at:
        rolling = _ready_keys(state, needed_by_key or {}, ttl, now)
        waiting = set(needed_by_key or {}) - set(rolling)
        if rolling and waiting <= installed_keys:
            return RolloverStep("ready", "none", f"the next {', '.join(rolling)} key's TLSA records have been "
                                f"visible for two TTLs; {', '.join(sorted(waiting))} keeps its key this renewal",
                                retiring=retiring, rolling=rolling)
        return RolloverStep("next-published", "wait",
                            f"waiting two TTLs ({2 * ttl} s) after the next key's TLSA records became visible",
                            until=ready_at, retiring=retiring)
    return RolloverStep("ready", "none", "the next key's TLSA records have been visible for two TTLs",
                        retiring=retiring)


def _ready_keys(state: RolloverState, needed_by_key: Mapping[str, frozenset[TlsaRecord]], ttl: int,
                now: datetime) -> tuple[str, ...]:
    """The key types whose next records have been visible for two TTLs at ``now``."""
    ready = []
    for key, needed in sorted(needed_by_key.items()):
        at = rollover_ready_at(state, needed, ttl)
        if at is not None and now >= at:
            ready.append(key)
    return tuple(ready)


def rollover_ready_at(state: RolloverState, needed: frozenset[TlsaRecord], ttl: int) -> datetime | None:
    """When every record of ``needed`` will have been visible for two TTLs (RFC 7671 section 8.1); None when
    one of them is not visible at all."""
    if not needed:
        return None
    seen = [state.visible_since.get(record) for record in needed]
    if any(moment is None for moment in seen):
        return None
    return max(m for m in seen if m is not None) + timedelta(seconds=2 * ttl)


@frozen
class Gate:
    """Whether a due renewal may go ahead now; with ``unsafe`` it goes ahead although DNS is not ready."""

    proceed: bool
    unsafe: bool
    reason: str
    retry_at: datetime | None = None


def gate_renewal(step: RolloverStep, *, now: datetime, not_after: datetime | None, unsafe_rollover_days: int,
                 recheck: timedelta = timedelta(minutes=5)) -> Gate:
    """Go ahead when the records are ready (or a renewal changes none); wait while the certificate served now
    is safe; go ahead regardless, flagged unsafe, once expiry is closer than ``unsafe_rollover_days`` (an
    expired certificate breaks every sender, a new key only the DANE-validating ones)."""
    if step.phase in ("ready", "stable"):
        return Gate(True, False, step.reason)
    if not_after is None:
        return Gate(True, False, "nothing installed yet: no sender can rely on a TLSA record of ours")
    limit = not_after - timedelta(days=unsafe_rollover_days)
    if now >= limit:
        return Gate(True, True, f"{step.reason}; but the certificate expires at {not_after:%Y-%m-%d %H:%M} UTC, "
                                f"closer than unsafe_rollover_days ({unsafe_rollover_days}): renewing anyway, "
                                f"DANE-validating senders may defer mail until the TLSA records are visible")
    retry = step.until if step.action == "wait" and step.until is not None else now + recheck
    return Gate(False, False, step.reason, min(retry, limit))


# -- judging what a server presents (certkeeper check --dane) --------------------------------------------------


@frozen
class Presented:
    """One certificate a server presented, as the SHA-256 digests TLSA records name."""

    spki_sha256: str
    sha256: str  # of the whole certificate (DER)


@frozen
class TlsaMatch:
    matched: tuple[TlsaRecord, ...]
    unchecked: tuple[TlsaRecord, ...]  # matching types other than SHA-256, which the probe does not keep


def match_presented(records: Iterable[TlsaRecord], leaf: Presented, chain: Sequence[Presented]) -> TlsaMatch:
    """Which records the presented chain satisfies: DANE-EE against the leaf alone (RFC 7672 section 3.1.2),
    DANE-TA against any certificate the server sent above it (section 3.1.1; name checks are left to the
    probe's own host-name finding)."""
    matched: list[TlsaRecord] = []
    unchecked: list[TlsaRecord] = []
    for record in sorted(records):
        if record.matching_type != MATCH_SHA256 or record.usage not in (DANE_TA, DANE_EE):
            unchecked.append(record)
            continue
        candidates = [leaf] if record.usage == DANE_EE else list(chain)
        digests = {c.spki_sha256 if record.selector == SELECTOR_SPKI else c.sha256 for c in candidates}
        if record.data in digests:
            matched.append(record)
    return TlsaMatch(tuple(matched), tuple(unchecked))
