"""ACME profiles against real Pebble 2.10 offering three: 90-day default, 45-day tlsserver, 160-hour shortlived."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certkeeper import pki
from certkeeper.cli import main
from certkeeper.config import AcmeIssuerConfig
from certkeeper.errors import IssuanceError
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.issuers.base import IssueRequest
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import TODAYS_PROFILES, Pebble
from certkeeper.values import replace

pytestmark = [pytest.mark.testbed]


@pytest.fixture(scope="module")
def profiled_pebble(bind: Bind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with Pebble(tmp_path_factory.mktemp("pebble-profiles"), bind=bind, profiles=TODAYS_PROFILES) as server:
        yield server


def make_issuer(pebble: Pebble, state: Path, **overrides: Any) -> AcmeIssuer:
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              http_address="127.0.0.1", http_port=pebble.http_port, timeout=timedelta(seconds=60))
    return AcmeIssuer(replace(config, **overrides), state)


def request_for(domain: str) -> IssueRequest:
    return IssueRequest(certificate="mail", domains=(domain,), key=pki.generate_key(KeyType.ECDSA_P256),
                        key_type=KeyType.ECDSA_P256)


@pytest.mark.parametrize("profile", sorted(TODAYS_PROFILES))
def test_each_profile_issues_a_certificate_of_its_lifetime(profiled_pebble: Pebble, tmp_path: Path,
                                                           profile: str) -> None:
    issued = make_issuer(profiled_pebble, tmp_path, profile=profile).issue(request_for(f"{profile}.example.test"))

    lifetime = pki.not_after(issued.certificate) - pki.not_before(issued.certificate)
    # RFC 5280 validity is inclusive of not_after: Pebble makes it validityPeriod - 1 s.
    assert lifetime + timedelta(seconds=1) == timedelta(seconds=TODAYS_PROFILES[profile].validity_seconds)


def test_an_unknown_profile_is_refused_before_ordering_with_the_offered_list(profiled_pebble: Pebble,
                                                                            tmp_path: Path) -> None:
    orders = profiled_pebble.count_orders()
    issuer = make_issuer(profiled_pebble, tmp_path, profile="classic")

    with pytest.raises(IssuanceError,
                       match=r"does not offer the profile 'classic' \(it offers: default, shortlived, tlsserver\)"):
        issuer.issue(request_for("classic.example.test"))
    assert profiled_pebble.count_orders() == orders


def test_invalid_profile_from_new_order_names_the_offered_profiles(profiled_pebble: Pebble, tmp_path: Path) -> None:
    # The directory may list a profile that newOrder then refuses (a CA changing its profiles between the two):
    # the refusal is Pebble's real invalidProfile answer, reached by skipping the directory check.
    issuer = make_issuer(profiled_pebble, tmp_path, profile="classic")
    directory = issuer._directory(profiled_pebble.directory_url)
    directory.raw["meta"] = {**directory.raw["meta"], "profiles": {"classic": "listed, but not really offered"}}

    with pytest.raises(IssuanceError, match=r"\(it offers: default, shortlived, tlsserver\).*unrecognized profile") \
            as refused:
        issuer.issue(request_for("classic.example.test"))
    assert refused.value.problem_type == "urn:ietf:params:acme:error:invalidProfile"


def write_config(path: Path, pebble_url: str, ca_file: Path, profile: str) -> Path:
    path.write_text(
        f'[certkeeper]\nstate_dir = "{path.parent / "state"}"\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{pebble_url}"\nca_bundle = "{ca_file}"\n'
        f'profile = "{profile}"\n'
        '[certificates.mail]\nissuer = "pebble"\ndomains = ["mail.example.test"]\n')
    return path


def test_config_check_validates_the_profile_against_the_directory(profiled_pebble: Pebble, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "good.toml", profiled_pebble.directory_url, profiled_pebble.ca_file, "shortlived")
    assert main(["-c", str(good), "config", "check"]) == 0
    assert "issuers.pebble.profile: 'shortlived' is offered by the CA" in capsys.readouterr().out

    bad = write_config(tmp_path / "bad.toml", profiled_pebble.directory_url, profiled_pebble.ca_file, "classic")
    assert main(["-c", str(bad), "config", "check"]) == 78
    error = capsys.readouterr().err
    assert "issuers.pebble.profile: found 'classic'" in error
    assert "(it offers: default, shortlived, tlsserver)" in error


def test_config_check_with_the_ca_unreachable_says_the_profile_was_not_checked(
        profiled_pebble: Pebble, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from certkeeper.testbed.server import allocate_port

    closed = f"https://127.0.0.1:{allocate_port()}/dir"
    config = write_config(tmp_path / "c.toml", closed, profiled_pebble.ca_file, "shortlived")

    assert main(["-c", str(config), "config", "check"]) == 0
    assert "issuers.pebble.profile: 'shortlived' not checked: the CA at" in capsys.readouterr().out
