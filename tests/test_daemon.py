"""The daemon as a real process: renews on its own, survives a broken SIGHUP, drains on SIGTERM, races cron."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from certkeeper import pki
from certkeeper.config import Config
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome
from tests.lifecycle_helpers import hook_runs, hook_script, run_cli, write_config

SHORT = """
[certificates.mail]
issuer = "internal"
domains = ["mail.example.test"]
reload = ["{hook}"]
renew_before = "20s"
"""


def short_lived(tmp_path: Path, hook_body: str = "") -> Config:
    hook = hook_script(tmp_path, "reload", hook_body)
    config = write_config(tmp_path, SHORT.format(hook=hook))
    text = config.path.read_text().replace('lifetime = "30d"', 'lifetime = "30s"')
    config.path.write_text(text)
    return config


@contextmanager
def daemon(config: Config) -> Iterator[subprocess.Popen[str]]:
    log = (config.path.parent / "daemon.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "certkeeper", "-c", str(config.path), "daemon"],
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()


def successes(config: Config) -> int:
    store = SqliteStore(config.settings.state_dir)
    try:
        return store.renewal_counts().get(("mail", "success"), 0)
    finally:
        store.close()


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def daemon_log(config: Config) -> str:
    return (config.path.parent / "daemon.log").read_text()


def test_the_daemon_issues_and_renews_twice_without_intervention(tmp_path: Path) -> None:
    config = short_lived(tmp_path)
    with daemon(config) as process:
        assert wait_for(lambda: successes(config) >= 3, 90), daemon_log(config)
        assert process.poll() is None
    versions = [line.split()[-1] for line in hook_runs(tmp_path)]
    assert len(set(versions)) >= 3
    current = CertificateHome(config.settings.state_dir, "mail").current()
    assert current is not None and current.id == versions[-1]
    assert "mail: renewed: installed and verified" in daemon_log(config)


def test_sighup_with_a_broken_config_keeps_the_running_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    good = config.path.read_text()
    with daemon(config) as process:
        assert wait_for(lambda: successes(config) >= 1, 60), daemon_log(config)
        config.path.write_text(good.replace('issuer = "internal"\ndomains', 'issuer = "nope"\ndomains'))
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "configuration reload rejected" in daemon_log(config), 20), daemon_log(config)
        assert "certificates.mail.issuer" in daemon_log(config)
        assert process.poll() is None
        config.path.write_text(good.replace('domains = ["mail.example.test"]',
                                            'domains = ["mail.example.test", "smtp.example.test"]'))
        process.send_signal(signal.SIGHUP)
        # The new domain makes the certificate due: the reloaded configuration is in force.
        assert wait_for(lambda: successes(config) >= 2, 60), daemon_log(config)
        assert "configuration reloaded" in daemon_log(config)


def test_sigterm_during_a_renewal_finishes_it_and_leaves_a_whole_install(tmp_path: Path) -> None:
    marker = tmp_path / "hook-started"
    config = short_lived(tmp_path, hook_body=f"touch {marker}; sleep 3")
    with daemon(config) as process:
        assert wait_for(marker.exists, 60), daemon_log(config)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    current = home.current()
    assert current is not None
    key = pki.load_key((current.path / "privkey.pem").read_bytes())
    assert pki.key_matches(key, pki.load_certificates((current.path / "fullchain.pem").read_bytes())[0])
    assert not [p for p in home.versions_dir.iterdir() if p.name.startswith(".")]
    assert "certkeeper daemon stopped" in daemon_log(config)


def test_cron_renew_racing_the_daemon_issues_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    os.environ.pop("NOTIFY_SOCKET", None)
    with daemon(config):
        cron = run_cli(config, "renew")
        assert cron.returncode in (0, 75), cron.stderr
        assert wait_for(lambda: successes(config) >= 1, 60), daemon_log(config)
        time.sleep(2)
    assert successes(config) == 1


def test_the_daemon_serves_metrics_a_prometheus_parser_reads(tmp_path: Path) -> None:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    from certkeeper.testbed.server import allocate_port

    port = allocate_port()
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """, settings=f'metrics_listen = "127.0.0.1:{port}"')
    with daemon(config):
        assert wait_for(lambda: successes(config) >= 1, 60), daemon_log(config)

        def scrape() -> str:
            with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        assert wait_for(lambda: "certkeeper_renewals_total{" in scrape(), 20), scrape()
        families = {f.name: f for f in text_string_to_metric_families(scrape())}
        with urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:  # the status page, next to /metrics
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
            page = response.read().decode()
        assert 'data-name="mail"' in page and 'class="timeline"' in page
    # The parser names a counter's family without its _total suffix; the sample keeps it.
    assert families["certkeeper_renewals"].type == "counter"
    [renewals] = families["certkeeper_renewals"].samples
    assert renewals.name == "certkeeper_renewals_total"
    assert renewals.labels == {"name": "mail", "result": "success"} and renewals.value == 1
    [not_after] = families["ssl_file_cert_not_after"].samples
    assert not_after.labels["dnsnames"] == ",mail.example.test,"
    assert not_after.labels["file"].endswith("/certs/mail/current/cert.pem")
