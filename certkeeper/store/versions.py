"""Installing key pairs: one version folder per issuance, one ``current`` symlink flipped atomically.

Layout under ``state_dir/certs/<name>/``::

    versions/<version>/              one issuance; never modified after it is complete
        version.json                 what is in it (serials, fingerprints, expiry per key type)
        privkey.pem cert.pem chain.pem fullchain.pem combined.pem      (one key type)
        ecdsa/… rsa/…                the same five files per key family (two key types)
    current -> versions/<version>    the one symlink daemons read through

``version.json`` records each file's size and SHA-256, so a pass sees a file changed, truncated or swapped after
the install (mtime kept or not) without loading a key: such a version, or a ``current`` that is not a relative
link to a complete version folder, is "nothing usable installed" (:class:`InputError` naming the path).  A file
whose hash matched is then trusted while its identity (inode, size, mtime, ctime) stays as it was
(:class:`VerifiedFiles`), so a pass with nothing due stats files instead of reading them.

A version is written into ``versions/.incoming-<version>``, every file fsynced, the folder fsynced once (its
files need no rename of their own: nothing reads the folder before it is complete), the folder renamed into
place and ``versions/`` fsynced, and only then is ``current`` replaced by ``rename(2)`` of a fresh symlink: a
reader sees the whole old pair or the whole new pair, never a mix.  A crash leaves at worst an ``.incoming-*``
folder, removed by :func:`recover`.  certbot flips four symlinks one at a time; lego and acme.sh overwrite files
in place; both have produced key/certificate mismatches in the field.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper import pki
from certkeeper.config import CopyTarget
from certkeeper.errors import CertkeeperError, InputError, InstallRefused, UnsafePath, VersionWriteFailed
from certkeeper.model import KeyType, is_safe_name
from certkeeper.permissions import check_trusted_dir, read_nofollow
from certkeeper.store.atomic import fsync_dir, make_dirs, refuse_special, set_dir_mode, write_atomic, write_new_files
from certkeeper.values import frozen

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "combined.pem")
_SECRET_FILES = {"privkey.pem", "combined.pem"}
_INCOMING = ".incoming-"


@frozen
class KeyPair:
    """One key type's issued material, ready to install."""

    key_type: KeyType
    key: pki.PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    signed_here: bool = False  # IssuedCertificate.signed_here: made in this process by the internal CA


@frozen
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


@frozen
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


@frozen
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


def _pair_files(pair: KeyPair) -> dict[str, bytes]:
    """The five files of one installed pair, by name."""
    key_pem = pki.key_to_pem(pair.key)
    cert_pem = pki.cert_to_pem(pair.certificate)
    chain_pem = b"".join(pki.cert_to_pem(c) for c in pair.chain)
    return {
        "privkey.pem": key_pem,
        "cert.pem": cert_pem,
        "chain.pem": chain_pem,
        "fullchain.pem": cert_pem + chain_pem,
        # Key first, then leaf and chain: the order Postfix's smtpd_tls_chain_files and HAProxy read.
        "combined.pem": key_pem + cert_pem + chain_pem,
    }


def _tighten(path: str, mode: int, key_mode: int) -> None:
    """A key file someone made readable by others (a hook's ``chmod 644``): given its mode back, and said."""
    os.chmod(path, key_mode)  # noqa: PTH101 (a str path)
    log.warning("%s was mode %04o, readable beyond its owner%s; set back to %04o", path, stat.S_IMODE(mode),
                " and group" if key_mode & 0o070 else "", key_mode)


def _subdir(name: object) -> str:
    """A pair's folder inside its version as ``version.json`` names it: a key family's, nothing else (a path
    there would have the pass judge files outside the version)."""
    if name not in _FAMILIES:
        msg = f"a pair's folder is {name!r}, not one of {', '.join(sorted(_FAMILIES))}"
        raise ValueError(msg)
    return str(name)


def _pair_file_entries(files: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``version.json``'s files of a pair, each one of the five (a name there is a path the pass judges)."""
    if not _FILE_NAMES.issuperset(files):
        strange = next(name for name in files if name not in _FILE_NAMES)
        msg = f"{strange!r} is not one of the files of a pair ({', '.join(FILES)})"
        raise ValueError(msg)
    return files.items()


_FAMILIES = frozenset(key_type.family for key_type in KeyType)
_FILE_NAMES = frozenset(FILES)
_LINKED_ROOT = ("is a symbolic link, which certkeeper never follows inside its state directory: move the folder it "
                "points to here, or set state_dir to where the files should be")


def check_pairs(name: str, pairs: Sequence[KeyPair], domains: Sequence[str],
                roots: Sequence[x509.Certificate], *, now: datetime,
                chains: pki.ChainVerifier | None = None) -> None:
    """The gate before install: key matches, chain verifies, names cover the configuration.

    Raises :class:`InstallRefused`; nothing has been written when it does.  ``chains`` (kept by a pass) verifies
    each intermediate's path to the roots once instead of once per pair; a pair signed in this process
    (:attr:`KeyPair.signed_here`) under an intermediate whose path it verified, valid now, is not verified again:
    its signature is that intermediate's key, which the issuer checked, and its names were held to that
    intermediate's constraints before signing.  Anything else (an ACME chain, a fleet's copy) is verified in full.
    """
    verify = chains.verify if chains is not None else pki.verify_chain
    for pair in pairs:
        label = f"{pair.key_type.value} certificate (serial {pki.serial_hex(pair.certificate)})"
        if not pki.key_matches(pair.key, pair.certificate):
            raise InstallRefused(name, f"the {label} does not match its private key")
        names = pki.subject_alternative_names(pair.certificate)
        missing = pki.names_cover(names, domains)
        if missing:
            raise InstallRefused(name, f"the {label} does not cover {', '.join(missing)}")
        if pair.signed_here and chains is not None and chains.anchors(pair.chain, roots, at=now) \
                and pki.not_before(pair.certificate) <= now <= pki.not_after(pair.certificate):
            continue
        # The name verify_chain would look up itself when given none (the first SAN), read once here.
        check = verify(pair.certificate, pair.chain, roots, at=now, hostname=names[0] if names else None)
        if not check.valid:
            raise InstallRefused(name, f"the chain of the {label} does not verify: {check.error}")


def _copy_problem(destination: Path) -> str:
    """Why a copy cannot be written to ``destination`` (its folder probed with a file of its own), or ""."""
    import tempfile  # only where copy_to is configured

    try:
        refuse_special(destination)
    except OSError as exc:
        return f"{destination}: {exc.strerror}"
    # The copy's folder, or the nearest one above it that exists (the copy makes the missing ones, 0755).
    folder = next((p for p in destination.parents if p.exists()), Path("/"))
    try:
        probe_fd, probe = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".certkeeper-probe", dir=folder)
    except OSError as exc:
        return f"{folder} takes no new file ({exc.strerror})"
    os.close(probe_fd)
    Path(probe).unlink()
    return ""


def _remove_tree(path: Path | str, *, ignore_errors: bool = False) -> None:
    """:func:`shutil.rmtree`, imported when a folder is removed: shutil loads zlib, bz2 and lzma, and a pass with
    nothing due removes nothing (``renew`` from cron)."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


class VerifiedFiles:
    """Installed files whose SHA-256 matched ``version.json``, by identity (device, inode, size, mtime, ctime),
    so that a pass with nothing due stats each file instead of reading and hashing it.

    Only the kernel sets ``st_ctime``: any write, rename over, chmod or ``touch`` of a file moves it, so a file
    whose identity is unchanged is the file that was hashed.  As git's index does for "racily clean" entries, a
    file changed less than :data:`RACY_SECONDS` before it was hashed is hashed again next time (a change in the
    same clock tick as the hash would leave ctime as it was).  Kept in ``state_dir/verified-files.json``: losing
    or garbling it only costs one hash per file; it is rewritten only when an entry was added.
    """

    RACY_SECONDS = 2

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, list[object]] = {}
        self._added = False
        self._touched: set[str] = set()
        self._prefix = f"{path.parent}/" if path is not None else ""  # keys relative to the state folder
        if path is not None:
            try:
                loaded = json.loads(read_nofollow(path))  # in the state dir: never through a link
                if isinstance(loaded, dict):
                    self._entries = loaded
            except (OSError, ValueError, RecursionError, UnsafePath):  # a link is replaced by the next save
                pass

    @staticmethod
    def _identity(digest: str, status: os.stat_result) -> list[object]:
        return [digest[:16], status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]

    def _key(self, path: str) -> str:
        return path.removeprefix(self._prefix)

    def unchanged(self, path: str, digest: str, status: os.stat_result) -> bool:
        key = self._key(path)
        self._touched.add(key)
        return self._entries.get(key) == self._identity(digest, status)

    def record(self, path: str, digest: str, status: os.stat_result) -> None:
        key = self._key(path)
        self._touched.add(key)
        if status.st_ctime_ns < time.time_ns() - self.RACY_SECONDS * 1_000_000_000:
            self._entries[key] = self._identity(digest, status)
            self._added = True

    def save(self, *, prune: bool) -> None:
        """Write the entries when one was added; ``prune`` (a pass over every certificate) keeps only the files
        looked at since the last save, so versions pruned or replaced drop out."""
        if self.path is None or not self._added:
            return
        if prune:
            self._entries = {k: v for k, v in self._entries.items() if k in self._touched}
        with contextlib.suppress(OSError):  # a cache: not written now, hashed again next time
            write_atomic(self.path, json.dumps(self._entries, separators=(",", ":")).encode(), mode=0o600)
        self._added = False
        self._touched = set()


class KnownVersions:
    """Versions read in earlier passes of this process, by folder, with the identity of their ``version.json``: a
    complete version folder is never changed by certkeeper, so an unchanged ``version.json`` (ctime included: only
    the kernel sets it) is the metadata already read."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[tuple[int, ...], Version]] = {}
        self._once: set[str] = set()
        self._touched: set[str] = set()

    def load(self, folder: str, read: Callable[[Path], Version]) -> Version:
        """The version in ``folder`` (a str: a pass looks up 1,000 of them), read by ``read`` when it is new or
        its ``version.json`` changed."""
        self._touched.add(folder)
        if folder not in self._read and folder not in self._once:
            self._once.add(folder)  # read once only (a single ``renew``): no stat spent on remembering it
            return read(Path(folder))
        try:
            status = os.lstat(f"{folder}/version.json")
        except OSError:
            return read(Path(folder))  # says what is wrong, in words
        identity = (status.st_mode, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
                    status.st_ctime_ns)
        seen = self._read.get(folder)
        if seen is not None and seen[0] == identity:
            return seen[1]
        version = read(Path(folder))
        self._read[folder] = (identity, version)
        return version

    def forget_untouched(self) -> None:
        """After a pass over every certificate: drop the versions it did not read (pruned, replaced)."""
        self._read = {k: v for k, v in self._read.items() if k in self._touched}
        self._once &= self._touched
        self._touched = set()


class CertificateHome:
    """The folder of one managed certificate: its versions and its ``current`` link."""

    def __init__(self, state_dir: Path, name: str, ownership: Ownership = Ownership()) -> None:
        self.name = name
        self.ownership = ownership
        # str forms for the calls a pass makes per certificate (a Path costs microseconds to build, 1,000 a pass);
        # a name certkeeper accepts is one path component (is_safe_name), anything else is joined as a Path
        base = os.fspath(state_dir)
        self._root = f"{base}/certs/{name}" if is_safe_name(name) and base != "/" \
            else os.fspath(state_dir / "certs" / name)
        self._current_link = f"{self._root}/current"

    @functools.cached_property
    def root(self) -> Path:
        return Path(self._root)

    @functools.cached_property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @functools.cached_property
    def current_link(self) -> Path:
        return self.root / "current"

    # -- reading -----------------------------------------------------------------------------------------------

    def current(self, known: KnownVersions | None = None) -> Version | None:
        """The installed version, or None before the first install.

        Raises :class:`InputError` naming the path when ``current`` is not a relative link to a complete version
        folder (a file or folder in its place, absolute, dangling or looping) or that version's metadata is bad.
        With ``known``, a ``version.json`` whose identity (inode, size, mtime, ctime) is as when it was last read
        is not read again.
        """
        try:
            target = os.readlink(self._current_link)  # noqa: PTH115 (a str: no Path parsed per certificate)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a file or a folder where the link belongs
            raise InputError(str(self.current_link), f"not a symbolic link to a version ({exc.strerror})") from None
        if os.path.islink(self._root):  # noqa: PTH114 (a str: 1,000 a pass)
            raise InputError(self._root, _LINKED_ROOT)
        return self.linked_version(target, known)

    def linked_version(self, target: str, known: KnownVersions | None = None) -> Version:
        """The version ``current`` names when it reads ``target`` (as :meth:`current` reads it; a pass that has
        read the link already passes what it read)."""
        if target.startswith("versions/") and target.count("/") == 1 and target[9:10] not in {"", "."}:
            folder = f"{self._root}/{target}"  # the form certkeeper writes: no Path parsed per certificate
        else:
            parts = Path(target).parts
            if len(parts) != 2 or parts[0] != "versions" or parts[1].startswith("."):
                raise InputError(str(self.current_link), f"points to {str(Path(target))!r}, not to a folder in "
                                 "versions/; certkeeper only ever links versions/<version> (restore it with "
                                 "certkeeper rollback)")
            folder = str(self.root / target)
        try:
            return self._load(Path(folder)) if known is None else known.load(folder, self._load)
        except InputError:
            if not Path(folder).is_dir():  # asked only now: a pass reads each version once, not twice
                raise InputError(str(self.current_link),
                                 f"points to {str(Path(target))!r}, which does not exist") from None
            raise

    def link_text(self) -> str | None:
        """What ``current`` says, as written: None when it is absent, ``<strerror>`` when it is no link."""
        try:
            return os.readlink(self._current_link)  # noqa: PTH115 (a str: no Path parsed per certificate)
        except FileNotFoundError:
            return None
        except OSError as exc:  # not a symbolic link: compared as such; reading the version reports it
            return f"<{exc.strerror}>"

    def readable_current(self) -> Version | None:
        """:meth:`current`, or None when what is installed cannot be read (the renewal pass reports it)."""
        return self.current_or_problem()[0]

    def current_or_problem(self) -> tuple[Version | None, str]:
        """:meth:`current`, and why there is none when what is installed cannot be read ("" when it can): a
        damaged certificate is shown as such beside the others (``status``), not instead of them."""
        try:
            return self.current(), ""
        except (InputError, UnsafePath) as exc:
            return None, str(exc)

    def changed_files(self, pair: InstalledPair, verified: VerifiedFiles | None = None) -> list[str]:
        """The pair's files whose size or content differ from what ``version.json`` recorded at install.

        With ``verified``, a file whose identity is as when its hash last matched is not read again.
        """
        changed = []
        directory = str(pair.directory)
        unchanged = verified.unchanged if verified is not None else None
        key_mode = self.ownership.key_mode
        for filename, size, digest in pair.files:
            path = f"{directory}/{filename}"
            try:
                status = os.stat(path)  # noqa: PTH116 (str paths: no Path built per file, 5,000 a pass)
                if filename in _SECRET_FILES and stat.S_IMODE(status.st_mode) & ~key_mode:
                    _tighten(path, status.st_mode, key_mode)
                if status.st_size != size:
                    changed.append(path)
                elif unchanged is None or not unchanged(path, digest, status):
                    with open(path, "rb") as file:  # noqa: PTH123 (a str path: 1,000 pairs a pass)
                        if hashlib.sha256(file.read()).hexdigest() != digest:
                            changed.append(path)
                        elif verified is not None:
                            verified.record(path, digest, status)
            except OSError:
                changed.append(path)
        return changed

    def versions(self) -> list[Version]:
        """Complete versions, oldest first; one whose metadata cannot be read is left out (``current`` reports it)."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for entry in sorted(self.versions_dir.iterdir()):
            if not entry.name.startswith(".") and (entry / "version.json").is_file():
                with contextlib.suppress(InputError, UnsafePath):  # a link in it: not a version to offer
                    found.append(self._load(entry))
        return found

    def version(self, version_id: str) -> Version:
        path = self.versions_dir / version_id
        if not is_safe_name(version_id) or version_id.startswith(".") or not (path / "version.json").is_file():
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
        meta_path = f"{path}/version.json"  # a str: a pass reads 1,000 of them
        try:
            meta = json.loads(read_nofollow(meta_path))
        except OSError as exc:  # a named pipe, a huge file: read_nofollow's words
            raise InputError(str(meta_path), f"unreadable version metadata ({exc.strerror or exc})") from None
        except (ValueError, RecursionError) as exc:  # not JSON, or JSON nested absurdly deep
            raise InputError(str(meta_path), f"unreadable version metadata ({exc})") from None
        return self._version(path, meta)

    def _version(self, path: Path, meta: Any) -> Version:
        """The :class:`Version` that ``meta`` (the parsed ``version.json`` of the folder ``path``) describes."""
        meta_path = f"{path}/version.json"  # for the messages only
        try:
            pairs = tuple([
                InstalledPair(
                    key_type=p["key_type"], serial=p["serial"], fingerprint=p["fingerprint"],
                    not_before=datetime.fromisoformat(p["not_before"]),
                    not_after=datetime.fromisoformat(p["not_after"]),
                    directory=path / _subdir(p["subdir"]) if p["subdir"] else path,
                    files=tuple([(str(name), int(size), str(digest)) for name, (size, digest)
                                 in _pair_file_entries(p.get("files", {}))]),
                )
                for p in meta["pairs"]
            ])
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
        try:
            version_id = self._new_version_id(now, fresh=self._ensure_dirs())
        except OSError as exc:  # a file where certs/NAME or its versions/ belongs, a full disk, a refusal
            raise VersionWriteFailed(Path(exc.filename or self.versions_dir), exc.strerror or str(exc)) from None
        # str paths down to the Version returned: a pass of 1,000 new certificates builds no Path per file or folder
        incoming = f"{self._root}/versions/{_INCOMING}{version_id}"
        try:
            return self._write_version(incoming, version_id, pairs, issuer=issuer, domains=domains, now=now)
        except OSError as exc:
            _remove_tree(incoming, ignore_errors=True)
            raise VersionWriteFailed(Path(incoming), exc.strerror or str(exc)) from None

    def _write_version(self, incoming: str, version_id: str, pairs: Sequence[KeyPair], *, issuer: str,
                       domains: Sequence[str], now: datetime) -> Version:
        os.mkdir(incoming, self.ownership.dir_mode)  # noqa: PTH102 - never wider than its mode, not even for an instant;
        self._set_mode(incoming)  # and exactly it (a umask narrows it, chmod only then)
        dual = len(pairs) > 1
        final = Path(f"{self._root}/versions/{version_id}")
        meta_pairs, files, subdirs, installed = [], [], [], []
        for pair in pairs:
            subdir = pair.key_type.family if dual else ""
            folder = f"{incoming}/{subdir}" if subdir else incoming
            if subdir:
                os.mkdir(folder, self.ownership.dir_mode)  # noqa: PTH102
                self._set_mode(folder)
                subdirs.append(folder)
            contents = _pair_files(pair)
            files += self._file_entries(folder, contents)
            digests = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in contents.items()}
            facts = InstalledPair(key_type=pair.key_type.value, serial=pki.serial_hex(pair.certificate),
                                  fingerprint=pki.fingerprint(pair.certificate),
                                  not_before=pki.not_before(pair.certificate),
                                  not_after=pki.not_after(pair.certificate),
                                  directory=final / subdir if subdir else final,
                                  files=tuple([(name, size, digest) for name, (size, digest) in digests.items()]))
            installed.append(facts)
            meta_pairs.append({
                "key_type": facts.key_type, "subdir": subdir, "serial": facts.serial, "fingerprint": facts.fingerprint,
                "not_before": facts.not_before.isoformat(), "not_after": facts.not_after.isoformat(),
                "files": {name: list(entry) for name, entry in digests.items()},
            })
        meta = {"created_at": now.isoformat(), "issuer": issuer, "domains": list(domains), "pairs": meta_pairs}
        text = json.dumps(meta)  # one line: the C encoder (indent= takes the pure-Python one, four times slower)
        files.append((f"{incoming}/version.json", text.encode(), 0o644, -1))
        write_new_files(files)  # every file fsynced, their writeback started together (one journal commit)
        for folder in subdirs:
            fsync_dir(folder)
        fsync_dir(incoming)  # once for every file in it: their names are durable before the folder is renamed
        os.rename(incoming, final)  # noqa: PTH104
        fsync_dir(f"{self._root}/versions")
        # What was just written, not read back: what _load would make of it, the same field for field (a test
        # holds the two equal)
        return Version(self.name, version_id, final, now, issuer, tuple(domains), tuple(installed))

    def activate(self, version: Version) -> None:
        """Point ``current`` at ``version`` with one atomic rename (a folder in its place is removed first)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(self._current_link).st_mode):  # a folder, not a link to one
                _remove_tree(self.current_link)  # no daemon can be reading a whole pair from it: it was never flipped
        # The form linked_version reads without parsing a Path (a version of this home, as write_version makes it).
        relative = f"versions/{version.id}" if os.fspath(version.path) == f"{self._root}/versions/{version.id}" \
            else os.path.relpath(version.path, self.root)
        temporary = f"{self._root}/.current-{os.getpid()}-{version.id}"
        try:
            try:
                os.symlink(relative, temporary)  # noqa: PTH211 (str paths, as in write_version)
            except FileExistsError:  # left by a killed process that had this pid: recover() removes such links too
                os.unlink(temporary)  # noqa: PTH108
                os.symlink(relative, temporary)  # noqa: PTH211
            os.replace(temporary, self._current_link)  # noqa: PTH105
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)  # noqa: PTH108
            raise VersionWriteFailed(self.current_link, exc.strerror or str(exc)) from None
        fsync_dir(self._root)

    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` versions; never the current one."""
        if keep:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                # No more folders than are kept (the names alone tell): nothing to read, nothing to remove.
                if sum(not name.startswith(".") for name in os.listdir(f"{self._root}/versions")) <= keep:  # noqa: PTH208
                    return []
        current = self.current()
        versions = self.versions()
        removable = [v for v in versions[:-keep] if current is None or v.id != current.id] if keep else []
        for version in removable:
            _remove_tree(version.path)
        return [v.id for v in removable]

    def _leftover_places(self) -> tuple[tuple[str, str], ...]:
        """Where an interrupted install leaves something, and the name prefix it has there: ``.incoming-*``
        folders in ``versions/``, ``.current-*`` links beside ``current``."""
        return (f"{self._root}/versions", _INCOMING), (self._root, ".current-")

    def recover(self) -> list[str]:
        """Remove folders left by an interrupted install and a dangling temporary link; report what went."""
        removed = []
        for folder, prefix in self._leftover_places():
            try:
                names = os.listdir(folder)  # noqa: PTH208 (a str: no Path per certificate, 1,000 a pass)
            except (FileNotFoundError, NotADirectoryError):  # a certificate never installed has neither
                continue
            for name in names:
                if name.startswith(prefix):
                    if prefix == _INCOMING:
                        _remove_tree(f"{folder}/{name}", ignore_errors=True)
                    else:
                        os.unlink(f"{folder}/{name}")  # noqa: PTH108
                    removed.append(name)
        return removed

    def check_copy_targets(self, targets: Mapping[CopyTarget, Path]) -> None:
        """Before ordering, and again before copying: :class:`UnsafePath` when someone else could change a copy's
        folder (and so swap the copy for a link); :class:`InstallRefused` when the copy cannot be made (its folder
        missing or taking no new file, a device or a folder where the copy goes): no order is spent on it."""
        for kind, destination in targets.items():
            check_trusted_dir(destination.parent, f"copy_to.{kind} folder")
            problem = _copy_problem(destination)
            if problem:
                raise InstallRefused(self.name, f"copy_to.{kind}: {problem}")

    def has_leftovers(self, clean: VerifiedFiles | None = None) -> bool:
        """Whether :meth:`recover` has anything to remove (cheap: two folder listings, names only).

        With ``clean``, a folder whose identity (inode, size, mtime, ctime) is as when it last held no leftovers
        is not listed again: creating, renaming or removing an entry moves a folder's mtime and ctime (an install
        interrupted at any point left its ``.incoming-*`` folder or ``.current-*`` link by doing so), and, as for
        files, a folder changed less than :data:`VerifiedFiles.RACY_SECONDS` before its listing is listed again.
        """
        for folder, prefix in self._leftover_places():
            key = f"{folder}/"
            try:
                status = os.stat(folder) if clean is not None else None  # noqa: PTH116 (a str: 2,000 a pass)
                if clean is not None and status is not None and clean.unchanged(key, "", status):
                    continue
                names = os.listdir(folder)  # noqa: PTH208 (names only)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if any(name.startswith(prefix) for name in names):
                return True
            if clean is not None and status is not None:
                clean.record(key, "", status)
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
            try:
                write_atomic(destination, read_nofollow(source), mode=self.ownership.key_mode if secret else 0o644,
                             gid=self.ownership.gid if secret else -1)
            except OSError as exc:  # named by the copy it was writing (ENOSPC names no file)
                raise OSError(exc.errno, exc.strerror, str(destination)) from None

    def _file_entries(self, folder: str, contents: Mapping[str, bytes]) -> list[tuple[str, bytes, int, int]]:
        """:func:`write_new_files`'s entries for one pair's files in ``folder``: the key and the combined file
        with the key mode and group, the others world-readable."""
        gid, key_mode = self.ownership.gid, self.ownership.key_mode
        return [(f"{folder}/{name}", contents[name], key_mode, gid) if name in _SECRET_FILES
                else (f"{folder}/{name}", contents[name], 0o644, -1) for name in FILES]

    def _ensure_dirs(self) -> bool:
        """The certificate's folders, with their modes; True when ``versions/`` was made now (so is empty)."""
        if os.path.islink(self._root):  # noqa: PTH114 - written through, it would put keys where nobody checks
            raise OSError(errno.ELOOP, _LINKED_ROOT, self._root)
        # certs/ itself only lists names (0755); each certificate's folder carries the restrictive mode.  Modes
        # are set explicitly: under the unit's UMask=0077 a 0750 folder would come out 0700, and the group
        # named by `group` could not reach its key.
        certs = os.path.dirname(self._root)  # noqa: PTH120 (a str: no Path per certificate)
        if not make_dirs(certs, mode=0o755):  # one made here has its mode already
            set_dir_mode(certs, mode=0o755)
        gid = self.ownership.gid if self.ownership.group else -1
        made = False
        for folder in (self._root, f"{self._root}/versions"):
            made = make_dirs(folder, mode=self.ownership.dir_mode, gid=gid)
            if not made:
                self._set_mode(folder)
        return made

    def _set_mode(self, path: Path | str) -> None:
        set_dir_mode(path, mode=self.ownership.dir_mode, gid=self.ownership.gid if self.ownership.group else -1)

    def _new_version_id(self, now: datetime, *, fresh: bool = False) -> str:
        """Sortable by time; a counter breaks ties within one second.  ``fresh``: versions/ was just made, empty."""
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        if fresh:
            return stamp
        existing = {name.removeprefix(_INCOMING) for name in os.listdir(self.versions_dir)}  # noqa: PTH208
        for counter in range(1000):
            candidate = stamp if counter == 0 else f"{stamp}-{counter}"
            if candidate not in existing:
                return candidate
        msg = f"{self.versions_dir}: too many versions created in one second"
        raise CertkeeperError(msg)
