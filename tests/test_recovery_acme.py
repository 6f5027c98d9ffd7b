"""Crash-only recovery against real Pebble: an ARI or ``replaces`` problem never blocks a renewal (issue 21.1)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.config import Config, load_config
from certkeeper.renewal.policy import Result
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.pebble import Pebble
from tests.lifecycle_helpers import write_config

pytestmark = pytest.mark.testbed


def two_issuers(tmp_path: Path, pebble: Pebble, issuer: str) -> Config:
    """``mail`` from ``issuer``; the internal CA and Pebble (HTTP-01, standalone) both configured."""
    roots = pebble.write_issuer_chain(tmp_path / "pebble-roots.pem")
    return write_config(tmp_path, f"""
        [issuers.pebble]
        type = "acme"
        directory = {json.dumps(pebble.directory_url)}
        challenge = "http-01"
        http_address = "127.0.0.1"
        http_port = {pebble.http_port}
        ca_bundle = {json.dumps(str(pebble.ca_file))}
        trust_roots = {json.dumps(str(roots))}

        [certificates.mail]
        issuer = "{issuer}"
        domains = ["mail.example.test"]
        """)


def test_switching_to_an_acme_issuer_renews_without_replaces_and_skips_ari(
        tmp_path: Path, pebble: Pebble, caplog: pytest.LogCaptureFixture) -> None:
    config = two_issuers(tmp_path, pebble, "internal")
    assert [o.result for o in build_app(config).run_pass()] == [Result.RENEWED]
    switched = two_issuers(tmp_path, pebble, "pebble")
    app = build_app(switched)
    with caplog.at_level(logging.INFO):
        [outcome] = app.run_pass(force=True)
    assert outcome.result == Result.RENEWED, outcome.detail
    assert "ordering without replaces: the installed certificate came from issuer 'internal'" in caplog.text
    current = CertificateHome(config.settings.state_dir, "mail").current()
    assert current is not None and current.issuer == "pebble"


def test_after_a_ca_restart_renewals_go_through_and_ari_is_skipped_for_the_unknown_certificate(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], caplog: pytest.LogCaptureFixture) -> None:
    own = pebble_factory()
    config = two_issuers(tmp_path, own, "pebble")
    assert [o.result for o in build_app(config).run_pass()] == [Result.RENEWED]
    own.restart()  # a new issuing chain: the CA no longer knows the installed certificate's AKI
    config = load_config(two_issuers(tmp_path, own, "pebble").path)
    app = build_app(config)
    with caplog.at_level(logging.INFO):
        [quiet] = app.run_pass()
    assert quiet.result == Result.NOT_DUE, quiet.detail
    assert "not asking again for this certificate" in caplog.text
    state = app.store.get_state("mail")
    current = CertificateHome(config.settings.state_dir, "mail").current()
    assert state is not None and current is not None and state.ari_retry_after == current.not_after
    caplog.clear()
    with caplog.at_level(logging.INFO):
        [forced] = app.run_pass(force=True)
    assert forced.result == Result.RENEWED, forced.detail
    assert "the CA refused an order replacing" in caplog.text
    assert "no renewal information" not in caplog.text  # skipped, not asked again
