"""What every test bed server shares: free ports, readiness polling, logs in failures.

Ports are never fixed: each start claims free loopback ports (:func:`allocate_port`), so test runs of
several engineers on one machine do not collide. Between asking and the daemon binding, another
process may take the port; :meth:`Server.start` therefore retries with fresh ports when the log
says the address was in use.
"""

from __future__ import annotations

import fcntl
import os
import random
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"
IPV6_LOOPBACK = "::1"
_START_ATTEMPTS = 3
_STOP_TIMEOUT = 10.0
_ADDRESS_IN_USE_MARKERS = ("address already in use", "address in use", "addrinuse")


class ServerStartError(RuntimeError):
    """A test bed server did not come up; the message carries the tail of its log."""

    def __init__(self, name: str, reason: str, log_path: Path | None) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        self.log_tail = read_log_tail(log_path) if log_path is not None else ""
        where = f"\n--- last lines of {log_path} ---\n{self.log_tail}" if log_path is not None else ""
        super().__init__(f"{name} did not start: {reason}{where}")


def read_log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file, or a note that there is none yet."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# Ports are handed out from below Linux's ephemeral range (32768-60999 by default), so the kernel never gives
# one of them to an outgoing connection or to another program's bind(0) in the meantime.
_PORT_RANGE = range(20000, 32768)
_CLAIMS = Path(tempfile.gettempdir()) / "certkeeper-testbed-ports"
_claimed: dict[int, int] = {}  # port -> the open claim file, held (and locked) for the life of this process
_claim_lock = threading.Lock()


def allocate_port(*, udp_too: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (also free for UDP when ``udp_too``), unique within the machine's test runs.

    Asking the kernel for port 0 hands out the same port again as soon as the probing socket is closed (seen:
    9 duplicates in 20 calls).  Each port here is claimed instead: an ``flock`` on a file named for it, held
    until this process exits, so no other allocation in this process or any concurrent test run returns it.
    """
    _CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    with _claim_lock:
        for _ in range(2000):
            port = random.choice(_PORT_RANGE)
            if port in _claimed or not _bindable(port, udp_too=udp_too):
                continue
            descriptor = os.open(_CLAIMS / str(port), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)  # another test run holds it
                continue
            _claimed[port] = descriptor
            return port
    msg = f"no free loopback port in {_PORT_RANGE.start}-{_PORT_RANGE.stop - 1}"
    raise RuntimeError(msg)


def _bindable(port: int, *, udp_too: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return False
    return True




def allocate_shared_port(addresses: tuple[str, ...]) -> int:
    """A claimed port (:func:`allocate_port`, free on 127.0.0.1) that is also free for
    TCP and UDP on every other one of ``addresses`` (the IPv6 loopback)."""
    while True:
        port = allocate_port(udp_too=True)
        if all(_free(address, port, kind) for address in addresses if address != LOOPBACK
               for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return port


def _free(address: str, port: int, kind: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def allocate_address(ports: Sequence[int]) -> str:
    """A random address in 127.0.0.0/8 on which every one of ``ports`` is free.

    For servers that must listen on their well-known port (MX hosts on 25, MTA-STS policy hosts on 443), as a
    sender connects to them: each gets an address of its own, so test runs side by side never collide.
    """
    while True:
        address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
        try:
            for port in ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((address, port))
        except OSError:
            continue
        return address


def accepts_tcp(port: int, address: str = LOOPBACK) -> bool:
    """Tell whether something listens on ``address``:``port`` (127.0.0.1 by default)."""
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], *, timeout: float, alive: Callable[[], bool]) -> bool:
    """Poll ``ready`` until it holds, the process dies (``alive`` false) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return ready()
        time.sleep(0.05)
    return False


def make_traversable(directory: Path) -> None:
    """Let unprivileged daemon users reach ``directory`` by adding search (x) permission up the path.

    Postfix and Dovecot drop to their own users, who cannot enter pytest's 0700 temporary
    folders otherwise. Only search is added, never read: names inside stay unlisted.
    """
    for folder in (directory, *directory.parents):
        mode = folder.stat().st_mode
        if mode & 0o001 == 0:
            folder.chmod(mode | 0o011)


def spawn(
    command: Sequence[str], log_path: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a foreground daemon with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a daemon started by :func:`spawn` and wait for it; SIGKILL if it lingers."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_checked(command: Sequence[str], what: str) -> str:
    """Run a control command (``postfix reload``, ``doveadm reload``); raise with its output on failure."""
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        msg = f"{what} failed (exit {result.returncode}): {result.stdout}{result.stderr}"
        raise RuntimeError(msg)
    return result.stdout + result.stderr


class Server(ABC):
    """A daemon under test: ``start``/``stop``, a context manager, logs in :attr:`directory`."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.running = False
        self._ports_allocated = False

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """The file the daemon logs to; its tail goes into start failures."""

    @abstractmethod
    def _allocate_ports(self) -> None:
        """Pick fresh ports for the next start attempt."""

    @abstractmethod
    def _launch(self) -> None:
        """Write the configuration, start the daemon and wait until it answers, or raise."""

    @abstractmethod
    def _terminate(self) -> None:
        """Stop the daemon and wait until its ports are free."""

    def start(self) -> Self:
        """Start the daemon; retry with new ports if another process took one meanwhile.

        A restart keeps the ports of the previous start, so URLs handed out stay valid.
        """
        for attempt in range(1, _START_ATTEMPTS + 1):
            if attempt > 1 or not self._ports_allocated:
                self._allocate_ports()
                self._ports_allocated = True
            try:
                self._launch()
            except ServerStartError as error:
                self._terminate()
                in_use = any(marker in error.log_tail.lower() for marker in _ADDRESS_IN_USE_MARKERS)
                if not in_use or attempt == _START_ATTEMPTS:
                    raise
                continue
            self.running = True
            return self
        msg = "unreachable"
        raise AssertionError(msg)  # the loop returns or raises

    def stop(self) -> None:
        """Stop the daemon; safe to call twice."""
        if self.running:
            self._terminate()
            self.running = False

    def restart(self) -> Self:
        """Stop and start again on the same ports."""
        self.stop()
        return self.start()

    def fail(self, reason: str) -> ServerStartError:
        """Build the start error for this server, with its log tail."""
        return ServerStartError(self.name, reason, self.log_path)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
