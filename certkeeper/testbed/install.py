"""Put the test bed's programs in place on Debian 12: ``python3 -m certkeeper.testbed.install``.

Standard library only, because it runs on the system Python before any virtualenv exists.
Idempotent and quick on a machine that has everything: ``dpkg-query`` first, ``apt-get`` only
for what is missing.

Pebble 2.10 and lego 4.35 come from Debian testing ("forky"), not bookworm: Pebble 2.10 has
certificate profiles, dns-persist-01, dns-account-01, ``alreadyReplaced`` and refuses requests
without a User-Agent, as the CAs of today do; lego is the peer of the issuance benchmark. Only
those ``.deb`` files are fetched, through a testing source list given to those ``apt-get``
commands alone (lists and package cache in our own folder), and unpacked with ``dpkg -x`` into
cache folders named by the version series (``pebble-2.10``, ``lego-4.35``), so that a cache of
an older Pebble is never taken for this one. The system's sources and packages stay bookworm.
Both binaries are Go and need only libc 2.34, so they run on bookworm.

Exim comes from bookworm itself (4.96: ``exim4-daemon-light``, ``exim4-base``, ``exim4-config``), but
cannot be installed: ``exim4-config`` conflicts with ``postfix``. So its three ``.deb`` files are
fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into the cache, beside Postfix. What
the package scripts would have done is done here instead, and no more:

* the shared libraries ``exim4`` links against are installed as ordinary packages
  (:data:`EXIM_LIBRARIES`; only ``libidn12`` is not already pulled in by the other packages);
* the ``Debian-exim`` system user is created as ``exim4-base``'s postinst does: the binary has
  ``EXIM_USER=ref:Debian-exim`` compiled in and refuses to run at all without it.

Nothing is written to the compiled-in paths (``/etc/exim4``, ``/var/spool/exim4``,
``/run/exim4``, ``/usr/sbin/exim4``): the test bed's Exim gets all of them from its own
configuration (:mod:`certkeeper.testbed.exim`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from certkeeper.values import frozen

DEBIAN_PACKAGES = (
    "postfix",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-managesieved",
    "bind9",
    "bind9-utils",
    "bind9-dnsutils",
    "postgresql",
    "openssl",
    "publicsuffix",  # the Public Suffix List: registered domains of the order budget (certkeeper.public_suffix)
    "nginx",  # serves MTA-STS policies from a webroot over HTTPS (tests/test_mtasts_*.py)
    "systemd",  # systemd-analyze verify checks the unit files in deploy/
    "python3-venv",  # deploy/debian/build makes the package's virtualenv with the system python3
    "groff",  # renders the generated manual page in tests/test_docs.py
    "pipx",  # the README's install path, tried in tests/test_packaging.py
    # The monitoring people already run, side by side with certkeeper's (tests/test_*_parity.py):
    "monitoring-plugins-contrib",  # check_ssl_cert 2.60
    "prometheus-blackbox-exporter",  # 0.23
    "prometheus",  # promtool: check metrics, test rules
    "chromium",  # the status page, loaded headless
)
EXIM_PACKAGES = ("exim4-daemon-light", "exim4-base", "exim4-config")
# exim4-daemon-light's Depends: its shared libraries (libidn12 is the one nothing else installs).
EXIM_LIBRARIES = (
    "libc6", "libcrypt1", "libdb5.3", "libgnutls-dane0", "libgnutls30", "libidn12", "libidn2-0", "libnsl2",
    "libpcre2-8-0",
)  # fmt: skip
EXIM_USER = "Debian-exim"
DEFAULT_CACHE = Path("/var/cache/certkeeper-testbed")
CACHE_ENV = "CERTKEEPER_TESTBED_CACHE"
# Verified with bookworm's own archive keyring, no trusted=yes: testing's InRelease is signed by the
# bookworm and the trixie automatic signing keys, and debian-archive-keyring 2023.3+deb12u2 holds both
# (checked with gpgv on 2026-12-01). Once testing stops signing with the bookworm key, apt-get update
# fails with NO_PUBKEY and nothing is unpacked; the keyring of a newer release must then come first.
TESTING_SOURCE = (
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian testing main\n"
)


@frozen
class TestingPackage:
    """One package taken from Debian testing: its name, the version series wanted, its binary."""

    name: str
    series: str  # "2.10": any 2.10.x is accepted, nothing else
    binary: str

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.series}"


PEBBLE = TestingPackage("pebble", "2.10", "usr/bin/pebble")
LEGO = TestingPackage("lego", "4.35", "usr/bin/lego")


def cache_dir() -> Path:
    """The folder holding the unpacked packages (``$CERTKEEPER_TESTBED_CACHE`` overrides it)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def package_binary(package: TestingPackage) -> Path:
    """Where ``package``'s binary lives once :func:`install_testing_packages` ran."""
    return cache_dir() / package.folder / package.binary


def pebble_binary() -> Path:
    """Where the unpacked Pebble 2.10 binary lives."""
    return package_binary(PEBBLE)


def lego_binary() -> Path:
    """Where the unpacked lego 4.35 binary lives."""
    return package_binary(LEGO)


def exim_root() -> Path:
    """The folder the three Exim packages are unpacked into (``usr/sbin/exim4`` below it)."""
    return cache_dir() / "exim"


def exim_binary() -> Path:
    """Where the unpacked Exim binary lives (it exists once :func:`install_exim` ran)."""
    return exim_root() / "usr" / "sbin" / "exim4"


def missing_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES + EXIM_LIBRARIES) -> list[str]:
    """Return the packages dpkg does not report as installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,  # dpkg-query exits 1 when a package was never known; the output still counts
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [package for package in packages if package not in installed]


def install_packages() -> None:
    """``apt-get install`` whatever is missing, after one ``apt-get update``."""
    missing = missing_packages()
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}", file=sys.stderr)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=environment)


def _series_version(madison: str, package: TestingPackage) -> str | None:
    """The newest version of ``package.series`` in ``apt-cache madison`` output (newest first), if any."""
    for line in madison.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) >= 2 and fields[0] == package.name and fields[1].startswith(package.series + "."):
            return fields[1]
    return None


def install_testing_packages(packages: tuple[TestingPackage, ...] = (PEBBLE, LEGO)) -> list[Path]:
    """Fetch and unpack each package from Debian testing unless its cache folder is there."""
    cache = cache_dir()
    wanted = [package for package in packages if not package_binary(package).is_file()]
    if wanted:
        apt_cache = cache / "apt-testing"
        (apt_cache / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (apt_cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            source_list = Path(scratch) / "testing.list"
            source_list.write_text(TESTING_SOURCE)
            # Lists and package cache go to our folder: the system's apt state never sees testing.
            apt_options = [
                "-q",
                "-o", f"Dir::Etc::SourceList={source_list}",
                "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={apt_cache / 'lists'}",
                "-o", f"Dir::Cache={apt_cache}",
                # apt drops to the _apt user for downloads; it cannot write into our private folder.
                "-o", "APT::Sandbox::User=root",
            ]  # fmt: skip
            subprocess.run(["apt-get", *apt_options, "update"], check=True)
            for package in wanted:
                _unpack(package, apt_options, Path(scratch), cache)
    return [package_binary(package) for package in packages]


def _unpack(package: TestingPackage, apt_options: list[str], scratch: Path, cache: Path) -> None:
    madison = subprocess.run(["apt-cache", *apt_options, "madison", package.name], check=True,
                             capture_output=True, text=True).stdout
    version = _series_version(madison, package)
    if version is None:
        msg = (
            f"Debian testing offers no {package.name} {package.series}.x (it has: "
                         f"{madison.strip() or 'none'}); update {package.name.upper()} in {__file__}"
        )
        raise SystemExit(msg)
    subprocess.run(["apt-get", *apt_options, "download", f"{package.name}={version}"], check=True, cwd=scratch)
    (deb,) = scratch.glob(f"{package.name}_*.deb")
    unpacked = cache / f"{package.folder}.partial"
    shutil.rmtree(unpacked, ignore_errors=True)
    subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    deb.unlink()
    # Rename last, so a half-unpacked folder never passes for a finished one.
    shutil.rmtree(cache / package.folder, ignore_errors=True)
    unpacked.rename(cache / package.folder)


def install_exim() -> Path:
    """Fetch and unpack bookworm's Exim into the cache unless it is there; return the binary.

    Also creates the ``Debian-exim`` user the binary needs (see the module docstring).
    """
    if subprocess.run(["getent", "passwd", EXIM_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["adduser", "--system", "--group", "--quiet", "--home", "/var/spool/exim4", "--no-create-home",
             "--disabled-login", "--force-badname", EXIM_USER],
            check=True,
        )  # fmt: skip
    binary = exim_binary()
    if binary.is_file():
        return binary
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        # apt drops to the _apt user for downloads, who cannot write into a root-only scratch folder.
        subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *EXIM_PACKAGES],
                       check=True, cwd=scratch)  # fmt: skip
        unpacked = cache / "exim.partial"
        shutil.rmtree(unpacked, ignore_errors=True)
        for package in EXIM_PACKAGES:
            (deb,) = Path(scratch).glob(f"{package}_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        shutil.rmtree(exim_root(), ignore_errors=True)
        unpacked.rename(exim_root())
    return binary


def main() -> int:
    """Install everything the test bed needs; print the paths of the Pebble, lego and Exim binaries."""
    install_packages()
    for binary in install_testing_packages():
        print(binary)
    print(install_exim())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
