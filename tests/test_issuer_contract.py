"""The Issuer contract: every issuer yields a chain that verifies, SANs equal to the request, a matching key.

Parametrized over every implementation of :class:`certkeeper.issuers.base.Issuer`.  Each factory returns the
issuer and the trust anchors its chains must verify against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509

from certkeeper import pki
from certkeeper.issuers.base import Issuer, IssueRequest
from certkeeper.model import KeyType

Factory = Callable[[pytest.FixtureRequest, Path], tuple[Issuer, Sequence[x509.Certificate]]]


def internal_ca(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Issuer, Sequence[x509.Certificate]]:
    from certkeeper.config import CaIssuerConfig
    from certkeeper.issuers.internal_ca import InternalCaIssuer, init_ca

    passphrase = tmp_path / "ca.pass"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    config = CaIssuerConfig(name="internal", ca_dir=tmp_path / "ca", passphrase_file=passphrase)
    init_ca(config, now=pki.now_utc())
    issuer = InternalCaIssuer(config)
    return issuer, issuer.trust_anchors()


def acme(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Issuer, Sequence[x509.Certificate]]:
    """The ACME issuer against the test bed's Pebble (the suite's ``pebble`` fixture, or one started here)."""
    from datetime import timedelta

    from certkeeper.config import AcmeIssuerConfig
    from certkeeper.issuers.acme import AcmeIssuer
    from certkeeper.testbed.bind import Bind
    from certkeeper.testbed.pebble import Pebble

    try:
        pebble: Pebble = request.getfixturevalue("pebble")
    except pytest.FixtureLookupError:
        bind = Bind(tmp_path / "bind").start()
        request.addfinalizer(bind.stop)
        pebble = Pebble(tmp_path / "pebble", bind=bind).start()
        request.addfinalizer(pebble.stop)
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              http_address="127.0.0.1", http_port=pebble.http_port, timeout=timedelta(seconds=60))
    # Pebble's issuing root comes from its management API (it makes a new one at every start).
    roots = pki.load_certificates(pebble.fetch_issuer_chain())[-1:]
    return AcmeIssuer(config, tmp_path / "state"), roots


FACTORIES: dict[str, Factory] = {"internal-ca": internal_ca, "acme": acme}

DOMAINS = ("mail.example.test", "smtp.example.test")


@pytest.fixture(params=sorted(FACTORIES))
def issuer_and_roots(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Issuer, Sequence[x509.Certificate]]:
    return FACTORIES[request.param](request, tmp_path)


@pytest.mark.parametrize("key_type", [KeyType.ECDSA_P256, KeyType.RSA_2048])
def test_issued_chain_verifies_names_match_and_key_matches(
    issuer_and_roots: tuple[Issuer, Sequence[x509.Certificate]], key_type: KeyType
) -> None:
    issuer, roots = issuer_and_roots
    key = pki.generate_key(key_type)
    issued = issuer.issue(IssueRequest(certificate="mail", domains=DOMAINS, key=key, key_type=key_type))
    assert pki.key_matches(key, issued.certificate)
    assert sorted(pki.subject_alternative_names(issued.certificate)) == sorted(DOMAINS)
    for domain in DOMAINS:
        check = pki.verify_chain(issued.certificate, issued.chain, roots, at=pki.now_utc(), hostname=domain)
        assert check.valid, check.error
    assert pki.key_type_of(issued.certificate.public_key()) == key_type.value  # type: ignore[arg-type]
