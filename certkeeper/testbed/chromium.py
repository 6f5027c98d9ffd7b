"""Headless Chromium (Debian's ``chromium``) to load a page as a browser does: the DOM after parsing, a screenshot.

Each call gets a fresh profile folder, and the switches keep Chromium off the network except for the URL
given (no component updates, sync, QUIC or background fetches), so a test on loopback stays on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BINARY = "chromium"
SWITCHES = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars")


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(BINARY)
    if binary is None:
        msg = f"{BINARY} is not installed (python3 -m certkeeper.testbed.install)"
        raise RuntimeError(msg)
    with tempfile.TemporaryDirectory(prefix="ck-chromium-") as profile:
        return subprocess.run([binary, *SWITCHES, f"--user-data-dir={profile}", *arguments], capture_output=True,
                              text=True, timeout=timeout, check=True)


def dump_dom(url: str, *, timeout: float = 60) -> str:
    """The document as Chromium built it (``--dump-dom``)."""
    return _run(["--dump-dom", url], timeout).stdout


def screenshot(url: str, path: Path, *, width: int = 1200, height: int = 1600, timeout: float = 60) -> Path:
    """A PNG of the page at ``width`` x ``height`` CSS pixels."""
    _run([f"--screenshot={path}", f"--window-size={width},{height}", url], timeout)
    return path
