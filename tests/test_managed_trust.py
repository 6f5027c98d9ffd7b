"""Managed endpoints are judged against what their certificate chains to: the issuer's roots and ``ca_file``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.config import CaIssuerConfig
from certkeeper.issuers.internal_ca import revoke_certificate_name, write_crl
from certkeeper.probe import load_trust_anchors
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.postfix import Postfix
from tests.lifecycle_helpers import write_config


@pytest.mark.testbed
def test_internal_ca_endpoints_are_trusted_through_the_ca_root(
        tmp_path: Path, postfix_factory: Callable[..., Postfix]) -> None:
    """Postfix serving an internal-CA chain: OK in status and metrics, not 'certificate-not-trusted'; once revoked
    and in the CA's CRL, certificate-revoked."""
    table = '[certificates.mail]\nissuer = "internal"\ndomains = ["mail.example.test"]\n'
    config = write_config(tmp_path, table)
    assert build_app(config).run_pass()[0].result == "renewed"
    current = CertificateHome(config.settings.state_dir, "mail").current_link
    postfix = postfix_factory()
    postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    postfix.reload()
    port = postfix.ports["submissions"]
    app = build_app(write_config(tmp_path, table + f'endpoints = ["smtps://127.0.0.1:{port}"]\n'))

    (observation,) = app.observe_endpoints()
    assert observation.result.status == "OK", observation.result.message
    assert not observation.stale and observation.result.chain_valid
    (record,) = app.store.endpoints()
    assert record.status == "OK"
    metrics = app.render_metrics()
    assert f'probe_success{{name="mail",endpoint="smtps://127.0.0.1:{port}"}} 1' in metrics

    # Revoked at the CA, which publishes its CRL: the endpoint still serving it is CRITICAL, said in words.
    issuer = app.config.issuers["internal"]
    assert isinstance(issuer, CaIssuerConfig)
    revoke_certificate_name(issuer, "mail", "keyCompromise", now=app.clock())
    write_crl(issuer, app.clock())
    (revoked,) = app.observe_endpoints()
    assert revoked.result.status == "CRITICAL"
    assert [f.code for f in revoked.result.findings] == ["certificate-revoked"]
    assert "revoked on" in revoked.result.message and "(keyCompromise)" in revoked.result.message


def test_issuer_roots_and_ca_file_are_trusted_together(tmp_path: Path) -> None:
    """Both bundles load, the system store does not, and messages name both sources."""
    from tests.probe_servers import Pki

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Pki.create(tmp_path / "a"), Pki.create(tmp_path / "b", name="Other Root")
    roots, source = load_trust_anchors(second.ca_file, [first.ca_file])
    assert [r.subject.rfc4514_string() for r in roots] == ["CN=Test Root", "CN=Other Root"]
    assert source == f"the issuer's roots ({first.ca_file}) and {second.ca_file}"
