"""The configuration's TOML kept between runs (certkeeper.config.cache): read once per content, checked every run,
and never taken from a place or a file someone else could have written."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from certkeeper.config import cache, load_config
from certkeeper.errors import ConfigError
from tests.configs import internal_ca_config


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of this test's own, as certkeeper makes one (0700)."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(path))
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text tomllib is asked to read, from now on."""
    texts: list[str] = []
    real = tomllib.loads

    def counted(text: str, **kwargs: Any) -> dict[str, Any]:
        texts.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(tomllib, "loads", counted)
    return texts


def entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def test_an_unchanged_file_is_read_once_and_gives_the_same_configuration(tmp_path: Path, folder: Path,
                                                                         reads: list[str]) -> None:
    config = internal_ca_config(tmp_path, domains=("mail.example.org", "smtp.example.org"))
    first = load_config(config)
    second = load_config(config)
    assert len(reads) == 1
    assert second == first
    assert second.certificates["mail"].domains == ("mail.example.org", "smtp.example.org")
    assert folder.stat().st_mode & 0o777 == 0o700
    [entry] = entries(folder)
    assert entry.stat().st_mode & 0o777 == 0o600


def test_a_file_changed_by_one_byte_is_read_again(tmp_path: Path, folder: Path, reads: list[str]) -> None:
    config = internal_ca_config(tmp_path, domains=("mxa.example.org",))
    load_config(config)
    stat = config.stat()
    config.write_text(config.read_text().replace("mxa.example.org", "mxb.example.org"))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time: only the bytes differ
    assert load_config(config).certificates["mail"].domains == ("mxb.example.org",)
    assert len(reads) == 2
    assert len(entries(folder)) == 1  # one entry per configuration path, rewritten


def test_a_mistake_in_a_kept_file_is_reported_on_every_run(tmp_path: Path, folder: Path, reads: list[str]) -> None:
    config = internal_ca_config(tmp_path, certificate="reuse_kye = true")
    for _ in range(2):
        with pytest.raises(ConfigError, match='reuse_kye: found an unknown key.*did you mean "reuse_key"' ):
            load_config(config)
    assert len(reads) == 1  # the second run checked what the first one read


def test_a_file_that_is_not_toml_is_never_kept(tmp_path: Path, folder: Path, reads: list[str]) -> None:
    config = tmp_path / "certkeeper.toml"
    config.write_text("[certkeeper\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="invalid TOML"):
            load_config(config)
    assert len(reads) == 2
    assert [p.name for p in entries(folder)] == []


def test_a_damaged_entry_is_a_miss_and_is_written_again(tmp_path: Path, folder: Path, reads: list[str]) -> None:
    config = internal_ca_config(tmp_path)
    expected = load_config(config)
    [entry] = entries(folder)
    damaged = bytearray(entry.read_bytes())
    damaged[-3] ^= 0xFF  # inside marshal's payload: its digest no longer matches
    entry.write_bytes(bytes(damaged))
    assert load_config(config) == expected
    entry.write_bytes(entry.read_bytes()[:40])  # torn
    assert load_config(config) == expected
    assert len(reads) == 3
    assert load_config(config) == expected
    assert len(reads) == 3  # the entry written after the tear is whole


def test_a_temporary_entry_left_by_a_killed_run_does_not_stop_the_next_one(tmp_path: Path, folder: Path,
                                                                          reads: list[str]) -> None:
    config = internal_ca_config(tmp_path)
    expected = load_config(config)
    [entry] = entries(folder)
    entry.unlink()
    (folder / f".{entry.name}.{os.getpid()}").write_bytes(b"half an entry")  # this pid's, as after a kill
    assert load_config(config) == expected
    assert load_config(config) == expected
    assert len(reads) == 2  # the second run took what the first one wrote, over the leftover
    assert entries(folder) == [entry]


def test_a_named_pipe_in_an_entrys_place_is_a_miss_not_a_wait(tmp_path: Path, folder: Path) -> None:
    """Opened as a file, a FIFO would wait for a writer for ever: the run is a child, so that a wait fails the
    test instead of holding the suite."""
    config = internal_ca_config(tmp_path)
    load_config(config)
    [entry] = entries(folder)
    entry.unlink()
    os.mkfifo(entry)
    code = ("import sys; from pathlib import Path; from certkeeper.config import load_config; "
            "print(load_config(Path(sys.argv[1])).certificates['mail'].domains)")
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('mail.example.org',)"


def planted(config: Path, folder: Path) -> Path:
    """An entry for ``config``'s exact bytes that says something else (another state_dir), made as certkeeper makes
    its own: what someone able to write the folder could leave there."""
    raw = config.read_bytes()
    forged = tomllib.loads(raw.decode().replace('state_dir = "', 'state_dir = "/forged'))
    folder.mkdir(mode=0o700, exist_ok=True)
    for entry in entries(folder):
        entry.unlink()
    assert cache.cached_toml(config, raw, lambda _: forged) is forged  # a miss, written to $CERTKEEPER_CACHE_DIR
    [entry] = entries(folder)
    return entry


def test_an_entry_is_taken_only_from_a_folder_and_a_file_no_one_else_could_write(
        tmp_path: Path, folder: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = internal_ca_config(tmp_path)
    entry = planted(config, folder)
    reads.clear()  # the forging's own
    # The control: in the user's own 0700 folder, as its own 0600 file, the planted entry is taken.
    assert str(load_config(config).settings.state_dir).startswith("/forged")
    assert reads == []

    folder.chmod(0o770)  # a folder the group may write
    assert not str(load_config(config).settings.state_dir).startswith("/forged")
    folder.chmod(0o700)
    entry.chmod(0o620)  # a file the group may write
    assert not str(load_config(config).settings.state_dir).startswith("/forged")

    entry = planted(config, folder)
    os.chown(entry, 65534, 65534)  # another user's file (the suite runs as root)
    assert not str(load_config(config).settings.state_dir).startswith("/forged")

    entry = planted(config, folder)
    elsewhere = tmp_path / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)  # a link to the forged entry
    assert not str(load_config(config).settings.state_dir).startswith("/forged")

    real = tmp_path / "real-folder"
    real.mkdir(mode=0o700)
    monkeypatch.setenv(cache.CACHE_ENV, str(real))
    planted(config, real)
    linked = tmp_path / "linked-folder"
    linked.symlink_to(real)  # the folder itself a link
    monkeypatch.setenv(cache.CACHE_ENV, str(linked))
    assert not str(load_config(config).settings.state_dir).startswith("/forged")


def test_a_toml_date_leaves_the_file_uncached_and_read_as_before(tmp_path: Path, folder: Path,
                                                                 reads: list[str]) -> None:
    """marshal holds no datetime: a file with a TOML date (which no key takes: moments are strings) is read with
    tomllib on every run, and its mistake reported on every run."""
    config = internal_ca_config(tmp_path, certificate="renew_before = 2027-06-01T00:00:00Z")
    for _ in range(2):
        with pytest.raises(ConfigError, match="renew_before: found datetime"):
            load_config(config)
    assert len(reads) == 2
    assert entries(folder) == []


def test_an_empty_cache_setting_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             reads: list[str]) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, "")
    assert cache.cache_dir() is None
    config = internal_ca_config(tmp_path)
    assert load_config(config) == load_config(config)
    assert len(reads) == 2


def test_without_a_setting_root_keeps_it_in_var_cache_and_others_in_their_home(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.CACHE_ENV)
    assert cache.cache_dir() == Path("/var/cache/certkeeper")  # the suite runs as root
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", "/home/ann/.cache")
    assert cache.cache_dir() == Path("/home/ann/.cache/certkeeper")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as the XDG specification says
    monkeypatch.setenv("HOME", "/home/ann")
    assert cache.cache_dir() == Path("/home/ann/.cache/certkeeper")
