"""A full disk under the state directory (issue 21): at every fill level ``renew --force`` either succeeds or
fails with a clear error and a non-zero exit, never a traceback; a whole matching pair stays current; and once
space is back the next plain ``renew`` repairs what the full disk cost (the store learns the installed version).

The state directory is a real tmpfs mounted for the test (the suite runs as root), so SQLite, the version folders
and the temporary files meet a real ENOSPC at whatever point the space runs out.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper.store.versions import CertificateHome
from tests.lifecycle_helpers import run_cli, write_config
from tests.test_recovery_install import assert_whole_pair_current

ONE = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
"""
SIZE = 2 * 1024 * 1024
# Bytes left free: from nothing at all to enough for a whole version folder but not the database's growth.
FREE = (0, 4096, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 98304, 131072, 196608, 262144)


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    where.mkdir(mode=0o711)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0711", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A filler file taking all of ``disk`` but ``leave`` bytes (tmpfs counts whole pages)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk[:4096])
        stat = os.statvfs(disk)
        assert stat.f_bavail * stat.f_frsize < 4096
        os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("leave", FREE)
def test_a_full_state_disk_never_loses_the_installed_pair_and_the_next_run_repairs(leave: int,
                                                                                    tmp_path: Path) -> None:
    with small_disk(tmp_path / "state"):
        config = write_config(tmp_path, ONE)
        first = run_cli(config, "renew")
        assert first.returncode == 0, first.stderr
        home = CertificateHome(config.settings.state_dir, "mail")
        before = assert_whole_pair_current(home)

        filler = fill(tmp_path / "state", leave)
        full = run_cli(config, "renew", "--force")
        output = full.stdout + full.stderr
        assert "Traceback" not in output and "internal error" not in output, output
        if full.returncode != 0:
            assert "No space left on device" in output or "bytes free" in output, output
        during = assert_whole_pair_current(home)
        assert during.id in (before.id, *(v.id for v in home.versions()))

        filler.unlink()
        again = run_cli(config, "renew")
        assert again.returncode == 0, again.stdout + again.stderr
        current = assert_whole_pair_current(home)
        status = run_cli(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        (entry,) = json.loads(status.stdout)
        # What is served is what status names, and no reload is owed for it: the full disk cost nothing lasting.
        assert (entry["version"], entry["reload_pending"]) == (current.id, False), entry
        assert not list(home.root.glob(".incoming-*"))


def test_a_copy_the_full_disk_refuses_is_retried_with_its_reload_once_space_is_back(tmp_path: Path) -> None:
    reload = tmp_path / "reload.sh"
    reload.write_text(f"#!/bin/sh\necho reloaded >> {tmp_path / 'reloads'}\n")
    reload.chmod(0o755)
    with small_disk(tmp_path / "disk") as disk:
        copy = disk / "mail.pem"
        config = write_config(tmp_path, ONE + f'reload = ["{reload}"]\ncopy_to = {{ combined = "{copy}" }}\n')
        assert run_cli(config, "renew").returncode == 0
        home = CertificateHome(tmp_path / "state", "mail")
        first = home.current()
        assert first is not None and copy.read_bytes() == (first.pairs[0].directory / "combined.pem").read_bytes()
        filler = fill(disk, 0)  # the copy's folder still takes an empty file (the check before ordering passes)

        full = run_cli(config, "renew", "--force")

        assert full.returncode == 1, full.stdout + full.stderr
        assert "Traceback" not in full.stdout + full.stderr
        second = home.current()
        assert second is not None and second.id != first.id  # installed in the state directory, which had room
        assert f"mail: failed: {second.id} is installed but not copied ({disk}" in full.stdout
        assert "No space left on device); the copy and the reload are retried" in full.stdout
        assert copy.read_bytes() == (first.pairs[0].directory / "combined.pem").read_bytes()  # whole, the old one

        filler.unlink()
        again = run_cli(config, "renew")

        assert again.returncode == 0, again.stdout + again.stderr
        assert f"mail: reloaded: endpoints now serve {second.id}" in again.stdout
        assert copy.read_bytes() == (second.pairs[0].directory / "combined.pem").read_bytes()
        assert (tmp_path / "reloads").read_text().count("reloaded") == 2  # the first install, the retry
