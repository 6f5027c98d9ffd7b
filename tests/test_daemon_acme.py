"""The daemon against the test bed: a short-lived ACME certificate from Pebble renewed twice, alone, and verified
on every Postfix and Dovecot listener.

Pebble issues 60-second certificates.  ``renew_before = "30s"`` (a duration rather than the default "1/3"): the
daemon then renews about every 30 s and still has 30 s of margin before expiry for a retry, and the test needs
no more than two minutes.  Pebble's notBefore is the moment of issue (no backdating), so both forms would work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from certkeeper.model import KeyType
from certkeeper.store.sqlite import SqliteStore
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.mailstack import mail_listeners, point_mail_servers_at, served_fingerprints, write_config
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

KEY_TYPES = (KeyType.ECDSA_P256,)


def trusting(pebble: Pebble, directory: Path) -> dict[str, str]:
    """An environment trusting Pebble's HTTPS and the CA it issues from (the probes judge served chains)."""
    bundle = directory / "trust.pem"
    bundle.write_bytes(pebble.ca_file.read_bytes() + pebble.fetch_issuer_chain())
    return {**os.environ, "REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle)}


def successes(state_dir: Path) -> int:
    store = SqliteStore(state_dir)
    try:
        return store.renewal_counts().get(("mail", "success"), 0)
    finally:
        store.close()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@contextmanager
def daemon(config: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with (config.parent / "daemon.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "certkeeper", "-c", str(config), "daemon"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)


def test_the_daemon_renews_a_short_lived_acme_certificate_twice_and_verifies_it_on_postfix_and_dovecot(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], postfix_factory: Callable[..., Postfix],
        dovecot_factory: Callable[..., Dovecot]) -> None:
    pebble = pebble_factory(validity_seconds=60)
    postfix, dovecot = postfix_factory(), dovecot_factory()
    env = trusting(pebble, tmp_path)
    state_dir, config = tmp_path / "state", tmp_path / "certkeeper.toml"
    roots = pebble.write_issuer_chain(tmp_path / "roots.pem")
    write_config(config, state_dir=state_dir, pebble=pebble, trust_roots=roots, key_types=KEY_TYPES,
                 renew_before="30s")
    first = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config), "renew"], env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    home = CertificateHome(state_dir, "mail")
    point_mail_servers_at(home.current_link, KEY_TYPES, postfix, dovecot)
    write_config(config, state_dir=state_dir, pebble=pebble, trust_roots=roots, key_types=KEY_TYPES,
                 renew_before="30s", postfix=postfix, dovecot=dovecot)

    with daemon(config, env) as process:
        renewed = wait_for(lambda: successes(state_dir) >= 3, 150)
        log = (tmp_path / "daemon.log").read_text()
        assert renewed, log
        assert process.poll() is None, log

    current = home.current()
    assert current is not None and len(home.versions()) >= 3
    endpoints = [listener.endpoint for listener in mail_listeners(postfix, dovecot)]
    served = served_fingerprints(endpoints, dual=False)
    assert len(served) == 8
    assert {e: {s.split()[-1] for s in v} for e, v in served.items()} == {e: set(current.fingerprints)
                                                                          for e in endpoints}
    assert log.count("CertificateVerified name=mail") >= 2
    assert "RenewalFailed" not in log and "RolledBack" not in log
