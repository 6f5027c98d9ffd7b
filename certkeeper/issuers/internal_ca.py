"""certkeeper's own certificate authority: a root, an issuing intermediate, and TLS leaves for mail hosts.

It implements the same :class:`~certkeeper.issuers.base.Issuer` (and ``Revoker``) protocol as ACME, so
install, reload, verify, alerts and scheduling do not know which CA they talk to.  The certificate profiles
and their reasons are in :mod:`certkeeper.issuers.ca_profile`; the directory layout, encrypted keys and the
index of serials in :mod:`certkeeper.issuers.ca_store`.

Offline root: ``init_ca(..., export_root_key=PATH)`` (``certkeeper ca init --export-root-key PATH``) writes
the root key to PATH instead of ``ca_dir``; issuing, revoking and CRLs need only the intermediate.  Move
PATH to offline storage; it is needed again only for a rollover.

Rollover (a new intermediate under the same root, before ``ca status`` shows the intermediate running out;
``rollover_due`` turns true three leaf lifetimes ahead):

1. ``certkeeper ca init --intermediate-only [--root-key PATH]`` (:func:`init_intermediate`): the old
   intermediate is copied to ``archive/intermediate-<serial>.{pem,key}``, a new one replaces it.  Clients
   trust the root, so nothing needs to be redistributed.
2. No daemon restart is needed: a running issuer notices the new ``intermediate.pem`` (checked at most once
   a second) and loads it on its next issue.  Renewals carry the new intermediate in their chains.
3. Certificates signed by the old intermediate stay valid until they expire (``lifetime``, 30 days by
   default).  The CRL is signed by the current intermediate, so revoke what must be revoked before rolling over.

When the root itself nears its end (``root_days_left``), run ``ca init --force`` and distribute the new
``ca export`` bundle next to the old root before the first certificate from the new CA is installed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certkeeper import pki
from certkeeper.config import CaIssuerConfig
from certkeeper.errors import CaError, IssuanceError
from certkeeper.issuers import ca_store as store
from certkeeper.issuers.base import IssuedCertificate, IssueRequest
from certkeeper.issuers.ca_profile import (
    REASONS,
    LeafProfile,
    Revocation,
    build_crl,
    build_intermediate,
    build_leaf,
    build_root,
    ca_name,
    enforces_name_constraints,
    name_problems,
)
from certkeeper.issuers.ca_store import IssuedEntry, RevokedEntry
from certkeeper.model import KeyType
from certkeeper.store.atomic import write_atomic
from certkeeper.values import fields, frozen

__all__ = ["REASONS", "CaError", "CaInitResult", "CaStatus", "InternalCaIssuer", "ca_status", "export_bundle",
           "init_ca", "init_intermediate", "revoke", "revoke_certificate_name", "revoke_serial", "write_crl"]

log = logging.getLogger(__name__)

_LEAF_KEY_TYPES = frozenset(t.value for t in KeyType)

#: (root, intermediate) key types for ``ca_key_type``.
CA_KEY_TYPES = {"ecdsa": (KeyType.ECDSA_P384, KeyType.ECDSA_P256), "rsa": (KeyType.RSA_4096, KeyType.RSA_3072)}


@frozen
class CaInitResult:
    ca_dir: Path
    root: x509.Certificate
    intermediate: x509.Certificate
    root_key: Path
    replaced: Path | None = None


def _key_types(config: CaIssuerConfig) -> tuple[KeyType, KeyType]:
    try:
        return CA_KEY_TYPES[config.ca_key_type]
    except KeyError:
        raise CaError(config.name, f"unknown ca_key_type {config.ca_key_type!r}; expected one of "
                      + ", ".join(repr(k) for k in CA_KEY_TYPES)) from None


def init_ca(config: CaIssuerConfig, *, now: datetime, force: bool = False,
            export_root_key: Path | None = None) -> CaInitResult:
    """Create a root and an intermediate under ``config.ca_dir``; refuse to replace an existing CA unless ``force``.

    The CA is built in a fresh sibling directory and renamed into place, so a failure leaves nothing half made;
    with ``force`` the previous directory is renamed to ``<ca_dir>.replaced-<time>``, never deleted: its keys
    signed certificates that may still be in service.
    """
    root_type, intermediate_type = _key_types(config)
    passphrase = store.read_passphrase(config)
    ca_dir = config.ca_dir
    store.check_new_ca_dir(config.name, ca_dir)
    present = sorted(p.name for p in ca_dir.iterdir()) if ca_dir.is_dir() else []
    if present and not force:
        found = [name for name in store.CA_FILES if name in present] or present
        raise CaError(config.name, f"{ca_dir} already holds a CA ({', '.join(found)}); nothing was changed. "
                      "Use --force to replace it (the old directory is kept), or --intermediate-only to roll over "
                      "the intermediate")
    if export_root_key is not None:
        if export_root_key.exists() and not force:
            raise CaError(config.name, f"{export_root_key} already exists; refusing to overwrite a root key")
        if export_root_key.resolve().parent == ca_dir.resolve():
            raise CaError(config.name, f"--export-root-key {export_root_key} is inside ca_dir; the point is to "
                          "keep the root key elsewhere")
    root_key = pki.generate_key(root_type)
    intermediate_key = pki.generate_key(intermediate_type)
    root = build_root(root_key, ca_name(config.organization, "root"), now=now, lifetime=config.root_lifetime,
                      permitted_domains=config.permitted_domains)
    intermediate = build_intermediate(
        intermediate_key.public_key(), ca_name(config.organization, f"intermediate {now:%Y-%m-%d}"), root, root_key,
        now=now, lifetime=config.intermediate_lifetime, permitted_domains=config.permitted_domains)
    # 0600 and encrypted: a copied backup or a stray read still does not yield a usable CA key.
    files = {store.ROOT_CERT: (pki.cert_to_pem(root), 0o644),
             store.INTERMEDIATE_CERT: (pki.cert_to_pem(intermediate), 0o644),
             store.INTERMEDIATE_KEY: (pki.key_to_pem(intermediate_key, passphrase), 0o600)}
    root_key_pem = pki.key_to_pem(root_key, passphrase)
    if export_root_key is not None:
        write_atomic(export_root_key, root_key_pem, mode=0o600)
    else:
        files[store.ROOT_KEY] = (root_key_pem, 0o600)
    replaced = store.create_ca_dir(ca_dir, files, replace_suffix=f"replaced-{now:%Y%m%dT%H%M%SZ}" if present else None)
    root_key_path = export_root_key or ca_dir / store.ROOT_KEY
    return CaInitResult(ca_dir, root, intermediate, root_key_path, replaced)


def init_intermediate(config: CaIssuerConfig, *, now: datetime, root_key: Path | None = None) -> CaInitResult:
    """Rollover: a new intermediate under the existing root (whose key is in ``ca_dir`` or at ``root_key``)."""
    _, intermediate_type = _key_types(config)
    passphrase = store.read_passphrase(config)
    ca_dir = config.ca_dir
    root = store.load_certificate(config.name, ca_dir / store.ROOT_CERT, "root certificate")
    root_key_path = root_key or ca_dir / store.ROOT_KEY
    signing_key = store.load_private_key(config.name, root_key_path, passphrase, "root key")
    if not pki.key_matches(signing_key, root):
        raise CaError(config.name, f"root key {root_key_path} does not belong to root certificate "
                      f"{ca_dir / store.ROOT_CERT}")
    if now >= root.not_valid_after_utc:
        raise CaError(config.name, f"the root expired on {root.not_valid_after_utc:%Y-%m-%d}; run ca init --force")
    key = pki.generate_key(intermediate_type)
    intermediate = build_intermediate(
        key.public_key(), ca_name(config.organization, f"intermediate {now:%Y-%m-%d}"), root, signing_key,
        now=now, lifetime=config.intermediate_lifetime, permitted_domains=config.permitted_domains)
    with store.locked(config.name, ca_dir):
        old = store.load_certificate(config.name, ca_dir / store.INTERMEDIATE_CERT, "intermediate certificate")
        archive = ca_dir / store.ARCHIVE
        archive.mkdir(mode=0o700, exist_ok=True)
        stem = f"intermediate-{pki.serial_hex(old)}"
        write_atomic(archive / f"{stem}.pem", pki.cert_to_pem(old), mode=0o644)
        old_key = store.read_file(config.name, ca_dir / store.INTERMEDIATE_KEY, "intermediate key")
        write_atomic(archive / f"{stem}.key", old_key, mode=0o600)
        # Key first, then certificate: a loader in between sees a mismatch, says so, and the next issue retries.
        write_atomic(ca_dir / store.INTERMEDIATE_KEY, pki.key_to_pem(key, passphrase), mode=0o600)
        write_atomic(ca_dir / store.INTERMEDIATE_CERT, pki.cert_to_pem(intermediate), mode=0o644)
    return CaInitResult(ca_dir, root, intermediate, root_key_path)


@frozen
class _Signer:
    intermediate: x509.Certificate
    key: pki.PrivateKey
    profile: LeafProfile
    stamp: tuple[int, int]
    signs_here: bool  # IssuedCertificate.signed_here: name_problems holds names to the intermediate's constraints


def _load_signer(config: CaIssuerConfig) -> _Signer:
    path = config.ca_dir / store.INTERMEDIATE_CERT
    stamp = store.file_stamp(path)
    intermediate = store.load_certificate(config.name, path, "intermediate certificate")
    key_path = config.ca_dir / store.INTERMEDIATE_KEY
    key = store.load_private_key(config.name, key_path, store.read_passphrase(config), "intermediate key")
    if not pki.key_matches(key, intermediate):
        raise CaError(config.name, f"intermediate key {key_path} does not belong to {path} (a rollover in "
                      "progress? try again; otherwise restore both from the same backup)")
    profile = LeafProfile.for_intermediate(intermediate, client_auth=config.client_auth, crl_url=config.crl_url)
    return _Signer(intermediate, key, profile, stamp, enforces_name_constraints(intermediate, config.permitted_domains))


class InternalCaIssuer:
    """The :class:`Issuer` and :class:`Revoker` of an internal CA.

    The intermediate key is decrypted once and kept (decrypting costs more than signing a leaf); one ``stat`` per
    issue notices a rollover and reloads.  Safe to share between threads.
    """

    #: How often (seconds) a running issuer looks for a rolled-over intermediate and reopens the index.
    REFRESH_INTERVAL = 1.0

    def __init__(self, config: CaIssuerConfig, clock: Callable[[], datetime] = pki.now_utc) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self._mutex = threading.Lock()
        self._signer: _Signer | None = None
        self._index = store.IndexWriter(config.name, config.ca_dir / store.INDEX)
        self._checked_at = -math.inf
        self._root: tuple[tuple[int, int], x509.Certificate] | None = None  # (file_stamp, root) as last read
        self._root_checked_at = -math.inf

    def _current_signer(self) -> _Signer:
        # System calls are what the CA adds to the cryptography (a stat costs a fifth of a signature on some
        # virtual machines), so the rollover check runs at most once per REFRESH_INTERVAL, not once per issue.
        with self._mutex:
            if self._signer is None or time.monotonic() - self._checked_at >= self.REFRESH_INTERVAL:
                stamp = store.file_stamp(self.config.ca_dir / store.INTERMEDIATE_CERT)
                if self._signer is None or self._signer.stamp != stamp:
                    self._signer = _load_signer(self.config)
                self._index.reopen()
                self._checked_at = time.monotonic()
            return self._signer

    def close(self) -> None:
        self._index.close()

    def trust_anchors(self) -> Sequence[x509.Certificate]:
        """The root, read again when its file was replaced (looked at, like the intermediate, at most once per
        REFRESH_INTERVAL): the install gate asks for it once per certificate."""
        with self._mutex:
            if self._root is None or time.monotonic() - self._root_checked_at >= self.REFRESH_INTERVAL:
                path = self.config.ca_dir / store.ROOT_CERT
                stamp = store.file_stamp(path)
                if self._root is None or self._root[0] != stamp or stamp == (0, 0):
                    self._root = (stamp, store.load_certificate(self.name, path, "root certificate"))
                self._root_checked_at = time.monotonic()
            return [self._root[1]]

    def issue(self, request: IssueRequest) -> IssuedCertificate:
        def refuse(detail: str) -> IssuanceError:
            return IssuanceError(self.name, request.certificate, detail)

        if not request.domains:
            msg = "no domains to certify"
            raise refuse(msg)
        problems = name_problems(request.domains, self.config.permitted_domains)
        if problems:
            raise refuse("; ".join(problems))
        key = request.key
        key_type = pki.key_type_of(key)
        if key_type not in _LEAF_KEY_TYPES:
            msg = f"unknown key type {key_type}; the CA certifies {', '.join(sorted(_LEAF_KEY_TYPES))}"
            raise refuse(msg)
        if key_type != str(request.key_type):
            msg = f"the key is {key_type} but the request says {request.key_type}"
            raise refuse(msg)
        signer = self._current_signer()
        now = self._clock()
        if now >= signer.profile.max_not_after:
            msg = (
                f"the intermediate expired on {signer.profile.max_not_after:%Y-%m-%d}; roll it over with "
                         "`certkeeper ca init --intermediate-only`"
            )
            raise refuse(msg)
        if now + self.config.lifetime > signer.profile.max_not_after:
            log.warning("issuer %s: the intermediate expires %s, before a full lifetime; the certificate %s is "
                        "cut short. Roll the intermediate over.", self.name, signer.profile.max_not_after,
                        request.certificate)
        certificate = build_leaf(signer.profile, signer.key, key.public_key(), request.domains, now=now,
                                 lifetime=self.config.lifetime)
        entry = IssuedEntry(certificate.serial_number, request.certificate, tuple(request.domains),
                            certificate.not_valid_after_utc, now)
        self._index.append(store.issued_line(entry))
        return IssuedCertificate(certificate, (signer.intermediate,), signed_here=signer.signs_here)

    def revoke(self, certificate: x509.Certificate, reason: str) -> None:
        """Record a revocation of ``certificate`` (issued by this intermediate) and publish a fresh CRL."""
        signer = self._current_signer()
        try:
            certificate.verify_directly_issued_by(signer.intermediate)
        except (ValueError, TypeError, InvalidSignature):
            raise CaError(self.name, f"serial {pki.serial_hex(certificate)} was not issued by the current "
                          "intermediate; refusing to revoke it") from None
        revoke_serial(self.config, certificate.serial_number, reason, now=self._clock(), certificate=certificate)
        write_crl(self.config, self._clock())


def _reason(config: CaIssuerConfig, reason: str) -> str:
    spelled = {name.lower(): name for name in REASONS}.get(reason.lower())
    if spelled is None:
        raise CaError(config.name, f"unknown revocation reason {reason!r}; expected one of {', '.join(REASONS)}")
    return spelled


def revoke_serial(config: CaIssuerConfig, serial: int | str, reason: str = "unspecified", *, now: datetime,
                  certificate: x509.Certificate | None = None) -> RevokedEntry:
    """Revoke by serial (an int, or hex with optional colons).  Revoking twice returns the first revocation."""
    reason = _reason(config, reason)
    if isinstance(serial, str):
        try:
            serial = int(serial.replace(":", "").lower().removeprefix("0x"), 16)
        except ValueError:
            raise CaError(config.name, f"{serial!r} is neither a hex serial number nor a certificate name "
                          "issued by this CA") from None
    index_path = config.ca_dir / store.INDEX
    with store.locked(config.name, config.ca_dir):
        index = store.read_index(config.name, index_path)
        if serial in index.revoked:
            return index.revoked[serial]
        issued = index.find(serial)
        if issued is None and certificate is None:
            raise CaError(config.name, f"serial {serial:x} is not in {index_path}; it was not issued by this CA")
        if issued is not None:
            entry = RevokedEntry(serial, reason, now, issued.certificate, issued.not_after)
        else:
            assert certificate is not None
            entry = RevokedEntry(serial, reason, now, "", pki.not_after(certificate))
        store.append_record(index_path, store.revoked_record(entry), durable=True)
    return entry


def revoke_certificate_name(config: CaIssuerConfig, name: str, reason: str = "unspecified", *,
                            now: datetime) -> RevokedEntry:
    """Revoke the latest serial issued for the certificate called ``name``."""
    latest = store.read_index(config.name, config.ca_dir / store.INDEX).latest_for(name)
    if latest is None:
        raise CaError(config.name, f"no certificate named {name!r} was issued by this CA")
    return revoke_serial(config, latest.serial, reason, now=now)


def revoke(config: CaIssuerConfig, serial_or_name: str, reason: str = "unspecified", *,
           now: datetime) -> RevokedEntry:
    """``ca revoke``'s argument: a certificate name known to the index wins, else it is read as a serial."""
    store.require_ca_dir(config.name, config.ca_dir)
    index = store.read_index(config.name, config.ca_dir / store.INDEX)
    if index.latest_for(serial_or_name) is not None:
        return revoke_certificate_name(config, serial_or_name, reason, now=now)
    return revoke_serial(config, serial_or_name, reason, now=now)


def write_crl(config: CaIssuerConfig, now: datetime) -> Path:
    """Sign a CRL of every revoked serial not yet expired; write crl.pem and crl.der; return the PEM's path."""
    signer = _load_signer(config)
    with store.locked(config.name, config.ca_dir):
        index = store.read_index(config.name, config.ca_dir / store.INDEX)
        # RFC 5280 3.3: an entry may leave the CRL once the certificate has expired; that keeps the CRL small.
        revocations = [Revocation(e.serial, e.revoked_at, e.reason) for e in index.revoked.values()
                       if e.not_after is None or e.not_after > now]
        number = store.read_crl_number(config.name, config.ca_dir / store.CRL_NUMBER) + 1
        crl = build_crl(signer.intermediate, signer.key, revocations, number=number, now=now,
                        next_update=config.crl_next_update)
        write_atomic(config.ca_dir / store.CRL_DER, crl.public_bytes(serialization.Encoding.DER), mode=0o644)
        write_atomic(config.ca_dir / store.CRL_PEM, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        write_atomic(config.ca_dir / store.CRL_NUMBER, f"{number}\n".encode(), mode=0o644)
    return config.ca_dir / store.CRL_PEM


def export_bundle(config: CaIssuerConfig, include_intermediate: bool) -> bytes:
    """What clients need to trust this CA: the root, and optionally the intermediate after it."""
    bundle = pki.cert_to_pem(store.load_certificate(config.name, config.ca_dir / store.ROOT_CERT, "root certificate"))
    if include_intermediate:
        bundle += pki.cert_to_pem(store.load_certificate(
            config.name, config.ca_dir / store.INTERMEDIATE_CERT, "intermediate certificate"))
    return bundle


@frozen
class CaStatus:
    """The CA at a glance, needing no passphrase: what ``ca status`` prints and what expiry alerts read."""

    issuer: str
    ca_dir: Path
    root_subject: str
    root_not_after: datetime
    root_days_left: int
    root_key_offline: bool
    intermediate_subject: str
    intermediate_not_after: datetime
    intermediate_days_left: int
    issued: int
    revoked: int
    active: int
    rollover_due: bool
    crl_next_update: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Path) else v
                for k, v in ((f.name, getattr(self, f.name)) for f in fields(self))}


def _check_intermediate(config: CaIssuerConfig, root: x509.Certificate, intermediate: x509.Certificate) -> None:
    """The intermediate can issue: a CA certificate the root signed (not the root itself, not a leaf).

    Its match with intermediate.key is not checked here: the key is encrypted, and status needs no passphrase.
    """
    path = config.ca_dir / store.INTERMEDIATE_CERT
    fix = "restore it from a backup, or run `certkeeper ca init --intermediate-only`"
    name = pki.common_name(intermediate.subject)
    if not pki.is_ca(intermediate):
        raise CaError(config.name, f"intermediate certificate {path} ({name}) is not a CA certificate and cannot "
                      f"sign; {fix}")
    if intermediate == root:
        raise CaError(config.name, f"intermediate certificate {path} is the root certificate itself; {fix}")
    try:
        intermediate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CaError(config.name, f"intermediate certificate {path} ({name}) is not signed by the root in "
                      f"{config.ca_dir / store.ROOT_CERT}; {fix}") from None


def ca_status(config: CaIssuerConfig, now: datetime) -> CaStatus:
    root = store.load_certificate(config.name, config.ca_dir / store.ROOT_CERT, "root certificate")
    intermediate = store.load_certificate(config.name, config.ca_dir / store.INTERMEDIATE_CERT,
                                          "intermediate certificate")
    _check_intermediate(config, root, intermediate)
    index = store.read_index(config.name, config.ca_dir / store.INDEX)
    active = sum(1 for e in index.issued if e.not_after > now and e.serial not in index.revoked)
    crl_next_update = None
    if (config.ca_dir / store.CRL_DER).exists():
        try:
            crl = x509.load_der_x509_crl(store.read_file(config.name, config.ca_dir / store.CRL_DER, "CRL"))
        except ValueError:
            raise CaError(config.name, f"CRL {config.ca_dir / store.CRL_DER} is corrupted; run ca crl") from None
        crl_next_update = crl.next_update_utc

    def days_left(certificate: x509.Certificate) -> int:
        return (certificate.not_valid_after_utc - now) // timedelta(days=1)

    return CaStatus(
        issuer=config.name, ca_dir=config.ca_dir,
        root_subject=pki.common_name(root.subject), root_not_after=root.not_valid_after_utc,
        root_days_left=days_left(root), root_key_offline=not (config.ca_dir / store.ROOT_KEY).exists(),
        intermediate_subject=pki.common_name(intermediate.subject),
        intermediate_not_after=intermediate.not_valid_after_utc, intermediate_days_left=days_left(intermediate),
        issued=len(index.issued), revoked=len(index.revoked), active=active,
        # Three leaf lifetimes ahead: time to roll over calmly, before any leaf would be cut short.
        rollover_due=intermediate.not_valid_after_utc - now < 3 * config.lifetime,
        crl_next_update=crl_next_update,
    )
