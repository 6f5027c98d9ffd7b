"""Installing key pairs: one version folder per issuance, one ``current`` symlink flipped atomically.

Layout under ``state_dir/certs/<name>/``::

    versions/<version>/              one issuance; never modified after it is complete
        version.json                 what is in it (serials, fingerprints, expiry per key type)
        privkey.pem cert.pem chain.pem fullchain.pem combined.pem      (one key type)
        ecdsa/… rsa/…                the same five files per key family (two key types)
    current -> versions/<version>    the one symlink daemons read through

``version.json`` records each file's size and SHA-256, so a pass sees a file changed, truncated or swapped after
the install (mtime kept or not) without loading a key: such a version, or a ``current`` that is not a relative
link to a complete version folder, is "nothing usable installed" (:class:`InputError` naming the path).

A version is written into ``versions/.incoming-<version>``, every file fsynced, the folder renamed into place,
and only then is ``current`` replaced by ``rename(2)`` of a fresh symlink: a reader sees the whole old pair
or the whole new pair, never a mix.  A crash leaves at worst an ``.incoming-*`` folder, removed by
:func:`recover`.  certbot flips four symlinks one at a time; lego and acme.sh overwrite files in place; both
have produced key/certificate mismatches in the field.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from certkeeper import pki
from certkeeper.config import CopyTarget
from certkeeper.errors import CertkeeperError, InputError, InstallRefused, VersionWriteFailed
from certkeeper.model import KeyType
from certkeeper.permissions import check_trusted_dir, read_nofollow
from certkeeper.store.atomic import fsync_dir, make_dirs, set_dir_mode, write_atomic

FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "combined.pem")
_SECRET_FILES = {"privkey.pem", "combined.pem"}
_INCOMING = ".incoming-"


@dataclass(frozen=True)
class KeyPair:
    """One key type's issued material, ready to install."""

    key_type: KeyType
    key: pki.PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class InstalledPair:
    """What ``version.json`` says about one key type of an installed version."""

    key_type: str
    serial: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    directory: Path
    files: tuple[tuple[str, int, str], ...] = ()  # (file name, size, SHA-256 hex) as installed; () before 0.x

    @property
    def fullchain(self) -> Path:
        return self.directory / "fullchain.pem"

    @property
    def privkey(self) -> Path:
        return self.directory / "privkey.pem"


@dataclass(frozen=True)
class Version:
    name: str
    id: str
    path: Path
    created_at: datetime
    issuer: str
    domains: tuple[str, ...]
    pairs: tuple[InstalledPair, ...]

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(p.fingerprint for p in self.pairs)

    @property
    def not_after(self) -> datetime:
        return min(p.not_after for p in self.pairs)

    @property
    def not_before(self) -> datetime:
        return max(p.not_before for p in self.pairs)


@dataclass(frozen=True)
class Ownership:
    """Who may read the key: root only (0600), or root and ``group`` (0640)."""

    group: str | None = None

    @property
    def gid(self) -> int:
        if self.group is None:
            return -1
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            msg = (
                f"group {self.group!r} does not exist on this host "
                                  f"(configured as the certificate's group)"
            )
            raise CertkeeperError(msg) from None

    @property
    def key_mode(self) -> int:
        # 0640 root:<group>: the mail daemon's group reads it, nobody else can.
        return 0o640 if self.group else 0o600

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.group else 0o700


def check_pairs(name: str, pairs: Sequence[KeyPair], domains: Sequence[str],
                roots: Sequence[x509.Certificate], *, now: datetime) -> None:
    """The gate before install: key matches, chain verifies, names cover the configuration.

    Raises :class:`InstallRefused`; nothing has been written when it does.
    """
    for pair in pairs:
        label = f"{pair.key_type.value} certificate (serial {pki.serial_hex(pair.certificate)})"
        if not pki.key_matches(pair.key, pair.certificate):
            raise InstallRefused(name, f"the {label} does not match its private key")
        missing = pki.names_cover(pki.subject_alternative_names(pair.certificate), domains)
        if missing:
            raise InstallRefused(name, f"the {label} does not cover {', '.join(missing)}")
        check = pki.verify_chain(pair.certificate, pair.chain, roots, at=now)
        if not check.valid:
            raise InstallRefused(name, f"the chain of the {label} does not verify: {check.error}")


class CertificateHome:
    """The folder of one managed certificate: its versions and its ``current`` link."""

    def __init__(self, state_dir: Path, name: str, ownership: Ownership = Ownership()) -> None:
        self.name = name
        self.root = state_dir / "certs" / name
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.ownership = ownership

    # -- reading -----------------------------------------------------------------------------------------------

    def current(self) -> Version | None:
        """The installed version, or None before the first install.

        Raises :class:`InputError` naming the path when ``current`` is not a relative link to a complete version
        folder (a file or folder in its place, absolute, dangling or looping) or that version's metadata is bad.
        """
        try:
            target = self.current_link.readlink()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a file or a folder where the link belongs
            raise InputError(str(self.current_link), f"not a symbolic link to a version ({exc.strerror})") from None
        parts = target.parts
        if len(parts) != 2 or parts[0] != "versions" or parts[1].startswith("."):
            raise InputError(str(self.current_link), f"points to {str(target)!r}, not to a folder in versions/; "
                             "certkeeper only ever links versions/<version> (restore it with certkeeper rollback)")
        if not (self.root / target).is_dir():
            raise InputError(str(self.current_link), f"points to {str(target)!r}, which does not exist")
        return self._load(self.root / target)

    def readable_current(self) -> Version | None:
        """:meth:`current`, or None when what is installed cannot be read (the renewal pass reports it)."""
        try:
            return self.current()
        except InputError:
            return None

    def changed_files(self, pair: InstalledPair) -> list[str]:
        """The pair's files whose size or content differ from what ``version.json`` recorded at install."""
        changed = []
        for filename, size, digest in pair.files:
            path = pair.directory / filename
            try:
                if path.stat().st_size != size or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    changed.append(str(path))
            except OSError:
                changed.append(str(path))
        return changed

    def versions(self) -> list[Version]:
        """Complete versions, oldest first; one whose metadata cannot be read is left out (``current`` reports it)."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for entry in sorted(self.versions_dir.iterdir()):
            if not entry.name.startswith(".") and (entry / "version.json").is_file():
                with contextlib.suppress(InputError):
                    found.append(self._load(entry))
        return found

    def version(self, version_id: str) -> Version:
        path = self.versions_dir / version_id
        if version_id.startswith(".") or "/" in version_id or not (path / "version.json").is_file():
            known = ", ".join(v.id for v in self.versions()) or "none"
            msg = f"certificate {self.name!r} has no version {version_id!r} (versions: {known})"
            raise CertkeeperError(msg)
        return self._load(path)

    def load_pair_key(self, pair: InstalledPair) -> pki.PrivateKey:
        try:
            return pki.load_key(read_nofollow(pair.privkey))
        except (OSError, ValueError) as exc:
            raise InputError(str(pair.privkey), str(exc)) from None

    def load_pair_certificate(self, pair: InstalledPair) -> x509.Certificate:
        try:
            return pki.load_certificates(read_nofollow(pair.fullchain))[0]
        except (OSError, ValueError) as exc:
            raise InputError(str(pair.fullchain), str(exc)) from None

    def _load(self, path: Path) -> Version:
        meta_path = path / "version.json"
        try:
            meta = json.loads(read_nofollow(meta_path))
            pairs = tuple(
                InstalledPair(
                    key_type=p["key_type"], serial=p["serial"], fingerprint=p["fingerprint"],
                    not_before=datetime.fromisoformat(p["not_before"]),
                    not_after=datetime.fromisoformat(p["not_after"]),
                    directory=path / p["subdir"] if p["subdir"] else path,
                    files=tuple((str(name), int(size), str(digest)) for name, (size, digest)
                                in p.get("files", {}).items()),
                )
                for p in meta["pairs"]
            )
            version = Version(self.name, path.name, path, datetime.fromisoformat(meta["created_at"]),
                              meta["issuer"], tuple(meta["domains"]), pairs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(str(meta_path), f"unreadable version metadata ({exc})") from None
        if not pairs:
            raise InputError(str(meta_path), "unreadable version metadata (no key pairs listed)")
        return version

    # -- writing -----------------------------------------------------------------------------------------------

    def write_version(self, pairs: Sequence[KeyPair], *, issuer: str, domains: Sequence[str],
                      now: datetime) -> Version:
        """Write a complete version folder (not yet current) and return it.  A write that fails (a full disk)
        removes what it wrote, the private key with it, and raises :class:`VersionWriteFailed`."""
        self._ensure_dirs()
        version_id = self._new_version_id(now)
        incoming = self.versions_dir / f"{_INCOMING}{version_id}"
        try:
            return self._write_version(incoming, version_id, pairs, issuer=issuer, domains=domains, now=now)
        except OSError as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise VersionWriteFailed(incoming, exc.strerror or str(exc)) from None

    def _write_version(self, incoming: Path, version_id: str, pairs: Sequence[KeyPair], *, issuer: str,
                       domains: Sequence[str], now: datetime) -> Version:
        incoming.mkdir()
        self._set_mode(incoming)
        dual = len(pairs) > 1
        meta_pairs = []
        for pair in pairs:
            subdir = pair.key_type.family if dual else ""
            folder = incoming / subdir if subdir else incoming
            if subdir:
                folder.mkdir()
                self._set_mode(folder)
            written = self._write_pair_files(folder, pair)
            meta_pairs.append({
                "key_type": pair.key_type.value, "subdir": subdir,
                "serial": pki.serial_hex(pair.certificate), "fingerprint": pki.fingerprint(pair.certificate),
                "not_before": pki.not_before(pair.certificate).isoformat(),
                "not_after": pki.not_after(pair.certificate).isoformat(),
                "files": {name: [len(data), hashlib.sha256(data).hexdigest()] for name, data in written.items()},
            })
        meta = {"created_at": now.isoformat(), "issuer": issuer, "domains": list(domains), "pairs": meta_pairs}
        write_atomic(incoming / "version.json", json.dumps(meta, indent=2).encode(), mode=0o644)
        fsync_dir(incoming)
        final = self.versions_dir / version_id
        incoming.rename(final)
        fsync_dir(self.versions_dir)
        return self._load(final)

    def activate(self, version: Version) -> None:
        """Point ``current`` at ``version`` with one atomic rename (a folder in its place is removed first)."""
        if self.current_link.is_dir() and not self.current_link.is_symlink():
            shutil.rmtree(self.current_link)  # no daemon can be reading a whole pair from it: it was never flipped
        relative = os.path.relpath(version.path, self.root)
        temporary = self.root / f".current-{os.getpid()}-{version.id}"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        try:
            temporary.symlink_to(relative)
            temporary.replace(self.current_link)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise VersionWriteFailed(self.current_link, exc.strerror or str(exc)) from None
        fsync_dir(self.root)

    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` versions; never the current one."""
        current = self.current()
        versions = self.versions()
        removable = [v for v in versions[:-keep] if current is None or v.id != current.id] if keep else []
        for version in removable:
            shutil.rmtree(version.path)
        return [v.id for v in removable]

    def recover(self) -> list[str]:
        """Remove folders left by an interrupted install and a dangling temporary link; report what went."""
        removed = []
        if self.versions_dir.is_dir():
            for entry in self.versions_dir.iterdir():
                if entry.name.startswith(_INCOMING):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(".current-"):
                    entry.unlink()
                    removed.append(entry.name)
        return removed

    def check_copy_targets(self, targets: Mapping[CopyTarget, Path]) -> None:
        """:class:`UnsafePath` when someone else could change a copy's folder (and so swap the copy for a link)."""
        for kind, destination in targets.items():
            check_trusted_dir(destination.parent, f"copy_to.{kind} folder")

    def has_leftovers(self) -> bool:
        """Whether :meth:`recover` has anything to remove (cheap: two folder listings)."""
        for folder, prefix in ((self.versions_dir, _INCOMING), (self.root, ".current-")):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if any(entry.name.startswith(prefix) for entry in folder.iterdir()):
                    return True
        return False

    def copy_to(self, version: Version, targets: Mapping[CopyTarget, Path]) -> None:
        """Replace each fixed-path copy by an atomic rename in its own directory (single key type only).

        Each file on its own is always whole; between two renames a reader may see a new certificate with an
        old key, so ``combined`` (key and chain in one file) is the copy to prefer.
        """
        pair = version.pairs[0]
        self.check_copy_targets(targets)  # again: the folders may have changed while the order ran
        for kind, destination in targets.items():
            source = pair.directory / f"{kind}.pem"
            secret = f"{kind}.pem" in _SECRET_FILES
            write_atomic(destination, read_nofollow(source), mode=self.ownership.key_mode if secret else 0o644,
                         gid=self.ownership.gid if secret else -1)

    def _write_pair_files(self, folder: Path, pair: KeyPair) -> dict[str, bytes]:
        key_pem = pki.key_to_pem(pair.key)
        cert_pem = pki.cert_to_pem(pair.certificate)
        chain_pem = b"".join(pki.cert_to_pem(c) for c in pair.chain)
        contents = {
            "privkey.pem": key_pem,
            "cert.pem": cert_pem,
            "chain.pem": chain_pem,
            "fullchain.pem": cert_pem + chain_pem,
            # Key first, then leaf and chain: the order Postfix's smtpd_tls_chain_files and HAProxy read.
            "combined.pem": key_pem + cert_pem + chain_pem,
        }
        gid = self.ownership.gid
        for filename in FILES:
            secret = filename in _SECRET_FILES
            write_atomic(folder / filename, contents[filename], mode=self.ownership.key_mode if secret else 0o644,
                         gid=gid if secret else -1)
        return contents

    def _ensure_dirs(self) -> None:
        # certs/ itself only lists names (0755); each certificate's folder carries the restrictive mode.  Modes
        # are set explicitly: under the unit's UMask=0077 a 0750 folder would come out 0700, and the group
        # named by `group` could not reach its key.
        make_dirs(self.root.parent, mode=0o755)
        set_dir_mode(self.root.parent, mode=0o755)
        for folder in (self.root, self.versions_dir):
            make_dirs(folder, mode=self.ownership.dir_mode)
            self._set_mode(folder)

    def _set_mode(self, path: Path) -> None:
        set_dir_mode(path, mode=self.ownership.dir_mode, gid=self.ownership.gid if self.ownership.group else -1)

    def _new_version_id(self, now: datetime) -> str:
        """Sortable by time; a counter breaks ties within one second."""
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        existing = {p.name.removeprefix(_INCOMING) for p in self.versions_dir.iterdir()}
        for counter in range(1000):
            candidate = stamp if counter == 0 else f"{stamp}-{counter}"
            if candidate not in existing:
                return candidate
        msg = f"{self.versions_dir}: too many versions created in one second"
        raise CertkeeperError(msg)
