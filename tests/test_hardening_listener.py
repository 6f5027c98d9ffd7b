"""An open listener gets nowhere: idle floods cost bounded descriptors, loopback by default, TLS and basic auth."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from certkeeper import tls
from certkeeper.config import Config
from certkeeper.errors import UnsafePath
from certkeeper.monitoring.metrics import ListenerSecurity, start_metrics_server
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.server import allocate_port
from tests.lifecycle_helpers import write_config
from tests.test_daemon import daemon_log, successes, wait_for

FLOOD = 300  # more connections than the daemon may open files


@contextmanager
def daemon_with_256_files(config: Config) -> Iterator[subprocess.Popen[str]]:
    log = (config.path.parent / "daemon.log").open("w")  # closed below, read by the tests
    process = subprocess.Popen(["prlimit", "--nofile=256", sys.executable, "-m", "certkeeper", "-c",
                                str(config.path), "daemon"], stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()


def scrape(url: str, *, context: tls.Context | None = None, auth: str | None = None,
           timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def idle_connections(stack: ExitStack, port: int, count: int) -> int:
    """Open ``count`` connections that never send a byte; returns how many the kernel accepted."""
    opened = 0
    for _ in range(count):
        sock = stack.enter_context(socket.socket())
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            continue
        opened += 1
    return opened


def test_idle_connections_under_ulimit_256_neither_stop_metrics_nor_the_sighup_reload(tmp_path: Path) -> None:
    port = allocate_port()
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """, settings=f'metrics_listen = ":{port}"')
    with daemon_with_256_files(config) as process, ExitStack() as stack:
        assert wait_for(lambda: successes(config) >= 1, 60), daemon_log(config)
        assert idle_connections(stack, port, FLOOD) > 200
        # While the flood holds (well inside the listener's 10 s idle timeout, which alone would free them later):
        status, text = scrape(f"http://127.0.0.1:{port}/metrics", timeout=3)
        assert status == 200 and "certkeeper_renewals_total{" in text
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "configuration reloaded" in daemon_log(config), 30), daemon_log(config)
        assert scrape(f"http://127.0.0.1:{port}/metrics")[0] == 200
        assert "Too many open files" not in daemon_log(config)
        assert process.poll() is None


def test_colon_port_listens_on_loopback_only() -> None:
    server = start_metrics_server(":0", lambda: "up 1\n")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
        others = [str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
                  if not str(a[4][0]).startswith("127.")]
        for address in others:
            with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
                pass
    finally:
        server.stop()


@pytest.fixture
def listener_tls(tmp_path: Path) -> tuple[TestCA, Path, Path]:
    ca = TestCA("metrics listener CA")
    key_file, cert_file = ca.issue(["127.0.0.1", "localhost"]).write(tmp_path, "metrics")
    return ca, cert_file, key_file


def test_tls_and_basic_auth_from_files(tmp_path: Path, listener_tls: tuple[TestCA, Path, Path]) -> None:
    ca, cert_file, key_file = listener_tls
    users = tmp_path / "metrics.users"
    users.write_text("# scrapers\nprometheus:scrape-secret\n")
    users.chmod(0o600)
    server = start_metrics_server("127.0.0.1:0", lambda: "up 1\n",
                                  ListenerSecurity(cert_file, key_file, users))
    url = f"https://127.0.0.1:{server.port}/metrics"
    trusting = tls.client_context(ca.write_cert(tmp_path / "ca.pem"))
    try:
        assert scrape(url, context=trusting, auth="prometheus:scrape-secret") == (200, "up 1\n")
        assert scrape(url, context=trusting)[0] == 401
        assert scrape(url, context=trusting, auth="prometheus:wrong")[0] == 401
        assert scrape(url, context=trusting, auth="mallory:scrape-secret")[0] == 401
        with pytest.raises(OSError):
            scrape(f"http://127.0.0.1:{server.port}/metrics")  # plain HTTP gets no answer
    finally:
        server.stop()


def test_a_basic_auth_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "metrics.users"
    users.write_text("prometheus:scrape-secret\n")
    users.chmod(0o644)
    with pytest.raises(UnsafePath, match=r"metrics_basic_auth_file .* is readable by every user.*chmod 0600"):
        start_metrics_server("127.0.0.1:0", lambda: "", ListenerSecurity(basic_auth_file=users))
