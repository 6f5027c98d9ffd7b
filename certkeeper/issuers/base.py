"""The ``Issuer`` protocol, and the small optional abilities some issuers have.

Both the ACME issuer and the internal CA implement :class:`Issuer`; everything downstream (install, reload,
verify, alerts, scheduling) sees only this.  Abilities not every CA has (revocation, renewal information) are
separate protocols checked with ``isinstance``, as certmagic does with ``Revoker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from certkeeper.config import AcmeIssuerConfig, IssuerConfig
from certkeeper.model import KeyType
from certkeeper.values import frozen

if TYPE_CHECKING:
    from cryptography import x509

    from certkeeper.pki import PrivateKey


@frozen
class IssueRequest:
    """Certify ``key`` for ``domains``.  The key is made (or reused) by the caller, never by the issuer."""

    certificate: str
    domains: tuple[str, ...]
    key: PrivateKey
    key_type: KeyType
    replaces: x509.Certificate | None = None
    dry_run: bool = False


@frozen
class IssuedCertificate:
    """A leaf and the intermediates that lead to a trust anchor, leaf excluded, in order."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    # dns-persist-01 records that validated this order but whose persistUntil is closer than persist_warning:
    # (record name, persistUntil). The lifecycle turns each into a PersistRecordExpiring event.
    persist_records_expiring: tuple[tuple[str, datetime], ...] = ()
    # Signed in this process, for the request's key and names, by the key of ``chain[0]`` (checked against it), the
    # names held to that intermediate's own name constraints: the internal CA.  The install gate then verifies
    # the chain's path to the roots once, not each leaf's signature.  Never set for what came over a network.
    signed_here: bool = False


@frozen
class RenewalWindow:
    """The CA's suggested renewal window (RFC 9773 ARI), and when to ask again."""

    start: datetime
    end: datetime
    retry_after: datetime
    explanation_url: str | None = None


@runtime_checkable
class Issuer(Protocol):
    name: str

    def issue(self, request: IssueRequest) -> IssuedCertificate:
        """Obtain a certificate; raise :class:`certkeeper.errors.IssuanceError` when the CA will not."""
        ...

    def trust_anchors(self) -> Sequence[x509.Certificate]:
        """Roots a freshly issued chain must verify against before install; empty means the system store."""
        ...


def root_files(issuer: IssuerConfig | None) -> tuple[Path, ...]:
    """The files holding the roots an issuer's certificates chain to, when they are not the system store's:
    the internal CA's root, an ACME issuer's ``trust_roots``.  Read from the configuration alone (no issuer is
    built), so a probe of managed endpoints costs no CA setup."""
    if issuer is None:
        return ()
    if isinstance(issuer, AcmeIssuerConfig):
        return (issuer.trust_roots,) if issuer.trust_roots is not None else ()
    from certkeeper.issuers.ca_store import ROOT_CERT

    return (issuer.ca_dir / ROOT_CERT,)


def crl_files(issuer: IssuerConfig | None) -> tuple[Path, ...]:
    """The CRL an issuer publishes locally: the internal CA's ``crl.pem`` (ACME CAs publish theirs remotely)."""
    if issuer is None or isinstance(issuer, AcmeIssuerConfig):
        return ()
    from certkeeper.issuers.ca_store import CRL_PEM

    return (issuer.ca_dir / CRL_PEM,)


@runtime_checkable
class Revoker(Protocol):
    def revoke(self, certificate: x509.Certificate, reason: str) -> None: ...


@runtime_checkable
class RenewalInfoSource(Protocol):
    def renewal_window(self, certificate: x509.Certificate, now: datetime) -> RenewalWindow | None:
        """The CA's window for ``certificate``, or None when the CA does not offer renewal information."""
        ...


@runtime_checkable
class LeftoverRemover(Protocol):
    def remove_leftovers(self, certificate: str) -> list[str]:
        """Take down what an interrupted order of ``certificate`` left published (dns-01 TXT values); returns
        the names cleaned.  Raises :class:`certkeeper.errors.IssuanceError` when that cannot be done yet."""
        ...
