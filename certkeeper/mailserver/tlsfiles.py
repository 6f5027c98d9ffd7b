"""A daemon's certificate and key files as found on disk, and what is wrong with them.

:func:`read_file` is the only IO (stat and read); :func:`judge_pair` is pure: given the files' facts, the
host names the daemon announces, the trust anchors and ``now``, it says whether the key matches, the chain is
complete and in order (leaf first, each certificate signed by the next), the names are covered, the dates are
good and the modes are safe.  It knows nothing of Postfix or Dovecot: :mod:`certkeeper.mailserver.doctor` turns its
issues into findings with each daemon's fix.
"""

from __future__ import annotations

import grp
import itertools
import pwd
import re
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certkeeper import pki
from certkeeper.permissions import read_regular
from certkeeper.probe.judge import thresholds_for
from certkeeper.values import field, frozen

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_DAY = 86400.0


@frozen
class FileFacts:
    """What ``stat`` and ``read`` said about one file; ``data`` holds key material and is never printed."""

    path: Path
    exists: bool
    error: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    owner: str = ""
    group: str = ""
    mtime: float = 0.0
    realpath: Path | None = None
    data: bytes = field(default=b"", repr=False)


def read_file(path: Path) -> FileFacts:
    try:
        info = path.stat()
        data = read_regular(path)  # a named pipe configured by mistake would hang, a huge file fill memory
    except FileNotFoundError:
        return FileFacts(path, exists=False, error="no such file")
    except OSError as exc:
        return FileFacts(path, exists=path.exists(), error=exc.strerror or str(exc))
    return FileFacts(path, True, "", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, _user(info.st_uid),
                     _group(info.st_gid), info.st_mtime, path.resolve(), data)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@frozen
class Issue:
    """One thing wrong with a pair; ``severity`` is "problem" or "warning"."""

    code: str
    severity: Literal["problem", "warning"]
    message: str
    path: Path | None = None


@frozen
class Pair:
    """A key and the certificate chain it serves, as a daemon reads them (the same file may hold both)."""

    key_file: FileFacts | None
    cert_file: FileFacts
    key: pki.PrivateKey | None
    certificates: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.certificates[0] if self.certificates else None


def pem_objects(data: bytes) -> list[pki.PrivateKey | x509.Certificate]:
    """Keys and certificates in a PEM file, in file order; ValueError on a malformed block."""
    objects: list[pki.PrivateKey | x509.Certificate] = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1)
        if label == b"CERTIFICATE":
            objects.append(x509.load_pem_x509_certificate(match.group(0)))
        elif label.endswith(b"PRIVATE KEY"):
            objects.append(pki.load_key(match.group(0)))
    return objects


def pairs_from_chain_files(files: Sequence[FileFacts]) -> tuple[list[Pair], list[Issue]]:
    """Postfix ``smtpd_tls_chain_files``: keys and certificates read in order, each key followed by its chain."""
    pairs: list[Pair] = []
    issues: list[Issue] = []
    key: pki.PrivateKey | None = None
    key_file: FileFacts | None = None
    certs: list[x509.Certificate] = []
    cert_file: FileFacts | None = None
    for facts in files:
        objects, issue = _objects(facts)
        if issue is not None:
            issues.append(issue)
            continue
        for item in objects:
            if isinstance(item, x509.Certificate):
                if key is None and not certs:
                    issues.append(Issue("chain-order", "problem", f"{facts.path} starts with a certificate; "
                                        "smtpd_tls_chain_files wants each private key before its chain", facts.path))
                certs.append(item)
                cert_file = cert_file or facts
            else:
                if key is not None or certs:
                    pairs.append(Pair(key_file, cert_file or facts, key, tuple(certs)))
                key, key_file, certs, cert_file = item, facts, [], None
    if key is not None or certs:
        pairs.append(Pair(key_file, cert_file or key_file or files[-1], key, tuple(certs)))
    return pairs, issues


def pair_from_files(cert_file: FileFacts, key_file: FileFacts) -> tuple[list[Pair], list[Issue]]:
    """A certificate file (leaf and chain) and a key file, as Dovecot and Postfix's older settings name them."""
    cert_objects, cert_issue = _objects(cert_file)
    key_objects, key_issue = _objects(key_file) if key_file.path != cert_file.path else (cert_objects, None)
    issues = [i for i in (cert_issue, key_issue) if i is not None]
    if issues:
        return [], issues
    keys = [o for o in key_objects if not isinstance(o, x509.Certificate)]
    certs = tuple(o for o in cert_objects if isinstance(o, x509.Certificate))
    return [Pair(key_file, cert_file, keys[0] if keys else None, certs)], []


def _objects(facts: FileFacts) -> tuple[list[pki.PrivateKey | x509.Certificate], Issue | None]:
    if not facts.exists:
        return [], Issue("file-missing", "problem", f"{facts.path} does not exist", facts.path)
    if facts.error:
        return [], Issue("file-unreadable", "problem", f"cannot read {facts.path}: {facts.error}", facts.path)
    try:
        objects = pem_objects(facts.data)
    except ValueError as exc:
        return [], Issue("file-malformed", "problem", f"{facts.path} holds a malformed PEM block ({exc})", facts.path)
    if not objects:
        return [], Issue("file-malformed", "problem", f"{facts.path} holds no PEM certificate or key", facts.path)
    return objects, None


def judge_pair(pair: Pair, *, hostnames: Sequence[str], roots: Sequence[x509.Certificate], now: datetime,
               warning_days: float = 21, critical_days: float = 7) -> list[Issue]:
    """Everything wrong with one key and chain; an empty list when the pair is sound."""
    issues: list[Issue] = []
    where = pair.cert_file.path
    if pair.key is None:
        issues.append(Issue("key-missing", "problem", f"no private key comes with the certificate in {where}", where))
    if not pair.certificates:
        issues.append(Issue("certificate-missing", "problem", f"no certificate follows the key in {where}", where))
        return issues
    leaf = pair.certificates[0]
    name = f"'{pki.common_name(leaf.subject)}'"
    if pair.key is not None and not pki.key_matches(pair.key, leaf):
        key_path = pair.key_file.path if pair.key_file else where
        issues.append(Issue("key-certificate-mismatch", "problem", f"the private key in {key_path} does not "
                            f"belong to the certificate {name} in {where}; every TLS handshake fails", key_path))
    issues += _chain_issues(pair.certificates, where, roots, now)
    missing = pki.names_cover(pki.subject_alternative_names(leaf), [h for h in hostnames if h])
    if missing:
        names = ", ".join(pki.subject_alternative_names(leaf)) or "no subject alternative names"
        issues.append(Issue("certificate-host-mismatch", "problem", f"the certificate {name} in {where} names "
                            f"{names}, not {', '.join(missing)} (the name the daemon announces)", where))
    issues += _date_issues(leaf, name, where, now, warning_days, critical_days)
    issues += _mode_issues(pair)
    return issues


def _chain_issues(certs: Sequence[x509.Certificate], where: Path, roots: Sequence[x509.Certificate],
                  now: datetime) -> list[Issue]:
    if pki.is_ca(certs[0]):
        return [Issue("chain-order", "problem", f"{where} starts with the CA certificate "
                      f"'{pki.common_name(certs[0].subject)}'; the server's own certificate must come first", where)]
    for index, (child, parent) in enumerate(itertools.pairwise(certs), 1):
        if not _issued_by(child, parent):
            return [Issue("chain-order", "problem", f"in {where}, certificate #{index + 1} "
                          f"'{pki.common_name(parent.subject)}' did not issue #{index} "
                          f"'{pki.common_name(child.subject)}': put leaf first, then each issuer in turn", where)]
    last = certs[-1]
    anchors = {root.subject for root in roots}
    if not pki.is_self_signed(last) and last.issuer not in anchors:
        return [Issue("chain-incomplete", "problem", f"{where} lacks the intermediate certificate "
                      f"'{pki.common_name(last.issuer)}' that issued '{pki.common_name(last.subject)}'; clients "
                      "that do not fetch it cannot verify the server: use the full chain (fullchain.pem)", where)]
    served = [c for c in certs[1:] if not pki.is_self_signed(c)]
    check = pki.verify_chain(certs[0], served, roots, at=max(now, pki.not_before(certs[0])))
    if not check.valid and roots:
        return [Issue("certificate-not-trusted", "problem", f"the chain in {where} does not verify against the "
                      f"trust anchors: {check.error}", where)]
    return []


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _date_issues(leaf: x509.Certificate, name: str, where: Path, now: datetime, warning_days: float,
                 critical_days: float) -> list[Issue]:
    not_before, not_after = pki.not_before(leaf), pki.not_after(leaf)
    if now >= not_after:
        return [Issue("certificate-expired", "problem", f"the certificate {name} in {where} expired on "
                      f"{not_after:%Y-%m-%d %H:%M} UTC", where)]
    if now < not_before:
        return [Issue("certificate-not-yet-valid", "problem", f"the certificate {name} in {where} is not valid "
                      f"before {not_before:%Y-%m-%d %H:%M} UTC", where)]
    days_left = (not_after - now).total_seconds() / _DAY
    warning, critical = thresholds_for((not_after - not_before).total_seconds() / _DAY, warning_days, critical_days)
    if days_left <= warning:
        return [Issue("certificate-expiring", "problem" if days_left <= critical else "warning",
                      f"the certificate {name} in {where} expires in {days_left:.1f} days "
                      f"({not_after:%Y-%m-%d %H:%M} UTC)", where)]
    return []


def _mode_issues(pair: Pair) -> list[Issue]:
    issues = []
    key_file = pair.key_file or pair.cert_file
    if key_file.exists and key_file.mode & 0o004:
        issues.append(Issue("key-world-readable", "problem", f"the private key {key_file.path} is readable by "
                            f"every user (mode {key_file.mode:04o}, {key_file.owner}:{key_file.group})",
                            key_file.path))
    if key_file.exists and key_file.uid != 0 and key_file.owner not in {"postfix", "dovecot", "Debian-exim"}:
        issues.append(Issue("key-owner", "warning", f"the private key {key_file.path} belongs to {key_file.owner}, "
                            "who can replace it; keys belong to root", key_file.path))
    for facts in {pair.cert_file.path: pair.cert_file, key_file.path: key_file}.values():
        if facts.exists and facts.mode & 0o002:
            issues.append(Issue("file-world-writable", "problem", f"{facts.path} is writable by every user "
                                f"(mode {facts.mode:04o})", facts.path))
    return issues


def describe_leaf(pair: Pair, now: datetime) -> str:
    """``ecdsa-p256 'mail.example.org' until 2026-01-02 (41 days), sha256 ab12cd34...``, for the report."""
    leaf = pair.leaf
    if leaf is None:
        return "no certificate"
    days = (pki.not_after(leaf) - now).total_seconds() / _DAY
    return (f"{pki.key_type_of(leaf.public_key())} '{pki.common_name(leaf.subject)}' "  # type: ignore[arg-type]
            f"until {pki.not_after(leaf):%Y-%m-%d} ({days:.0f} days), "
            f"{len(pair.certificates)} certificate(s), sha256 {pki.fingerprint(leaf)[:16]}...")
