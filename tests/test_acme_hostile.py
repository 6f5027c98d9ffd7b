"""An ACME CA that answers what it likes: refused with its words and the URL asked, the installed pair kept, never
an internal error (found by a sweep of hostile peers; the CA is tests/acme_fake.py, for misbehaviour Pebble has
not)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper.app import build_issuer
from certkeeper.errors import CertkeeperError
from certkeeper.issuers.acme_rules import parse_retry_after
from certkeeper.pki import now_utc
from tests.acme_fake import FakeAcme, certificate_of
from tests.lifecycle_helpers import run_cli, write_config


@pytest.fixture
def fake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeAcme]:
    ca = FakeAcme(tmp_path, request.param)
    yield ca
    ca.close()


def renew_from(tmp_path: Path, fake: FakeAcme, timeout: str = "20s") -> tuple[str, int]:
    config = write_config(tmp_path, f"""
        [issuers.fake]
        type = "acme"
        directory = {json.dumps(fake.directory_url)}
        ca_bundle = {json.dumps(str(fake.ca_file))}
        trust_roots = {json.dumps(str(fake.roots_file))}
        challenge = "http-01"
        timeout = "{timeout}"

        [certificates.mail]
        issuer = "fake"
        domains = ["mail.example.test"]
        """)
    result = run_cli(config, "renew")
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output and "unexpected error" not in output, output
    return result.stdout, result.returncode


@pytest.mark.parametrize("fake", ["dir-redirect-http", "http-urls"], indirect=True)
def test_nothing_goes_to_plain_http_whatever_the_directory_says(tmp_path: Path, fake: FakeAcme) -> None:
    """A directory redirected to http://, or listing http:// URLs: the order ran in clear (rc 0)."""
    stdout, status = renew_from(tmp_path, fake)
    assert status == 1, stdout
    assert "which is not https:// (ACME is spoken over HTTPS only, RFC 8555 section 6.1)" in stdout
    assert fake.plain_hits == []  # refused before anything was sent
    assert not (tmp_path / "state" / "certs" / "mail" / "current").exists()


@pytest.mark.parametrize(("fake", "says"), [
    ("dir-list", "the answer is not an ACME directory (no newNonce, newAccount, newOrder)"),
    ("no-new-nonce", "the answer is not an ACME directory (no newNonce)"),
    ("dir-huge", "answered with more than 2 MiB"),
    ("cert-garbage", "the CA's certificate download is not a PEM certificate chain"),
    ("cert-huge", "answered with more than 2 MiB"),
    ("final-error-string", "the order ended invalid: boom"),
    ("order-500", "(asked https://127.0.0.1:"),
    # newNonce asked for ever (the pass never ended): a nonce that is not base64url, or the same one again
    ("nonce-not-base64", "answered with a nonce certkeeper cannot sign with: 'not*base64' is not base64url"),
    ("nonce-repeated", "answered with a nonce certkeeper cannot sign with: 'c2FtZS1ub25jZQ' was given before"),
], indirect=["fake"])
def test_an_answer_of_another_shape_is_named_not_an_internal_error(tmp_path: Path, fake: FakeAcme, says: str) -> None:
    stdout, status = renew_from(tmp_path, fake)
    assert status == 1, stdout
    assert "mail: failed: " in stdout and says in stdout, stdout
    if fake.mode == "order-500":
        assert "/order)" in stdout  # the request that failed, not only the directory


@pytest.mark.parametrize("fake", ["ari-list", "ari-int", "ari-not-an-object", "ari-naive"], indirect=True)
def test_renewal_information_of_another_shape_is_the_issuers_error(tmp_path: Path, fake: FakeAcme) -> None:
    """A list, numbers or a window without its time zone: TypeError, AttributeError or a naive-aware comparison
    stopped every ``renew`` (exit 70); an issuer's error is what the pass already survives."""
    config = write_config(tmp_path, f"""
        [issuers.fake]
        type = "acme"
        directory = {json.dumps(fake.directory_url)}
        ca_bundle = {json.dumps(str(fake.ca_file))}

        [certificates.mail]
        issuer = "fake"
        domains = ["mail.example.test"]
        """)
    issuer = build_issuer(config.issuers["fake"], config.settings)
    with pytest.raises(CertkeeperError, match="renewal (information is not RFC 9773's|window .* has no time zone)"):
        issuer.renewal_window(certificate_of(fake), now_utc())  # type: ignore[attr-defined]


def test_a_retry_after_of_other_digits_is_no_delay() -> None:
    """str.isdigit takes "²"; float() does not (it was a ValueError, a temporary 503 made final)."""
    assert parse_retry_after("²", now_utc()) is None
    assert parse_retry_after("120", now_utc()) == 120.0


@pytest.mark.parametrize("fake", ["dir-header-drip"], indirect=True)
def test_a_ca_dripping_its_headers_is_given_up_at_the_timeout(tmp_path: Path, fake: FakeAcme) -> None:
    """The status line, then a header a byte every half second: requests reads headers with its timeout per read,
    so the request lasted as long as the CA liked; the whole answer now has the issuer's timeout (10 s)."""
    started = time.monotonic()
    stdout, status = renew_from(tmp_path, fake, timeout="10s")
    assert status == 1, stdout
    assert "/dir did not finish its answer within 10 s" in stdout, stdout
    assert time.monotonic() - started < 25  # 30 s of dripping, cut at 10 s (and the process's start)


@pytest.mark.parametrize("fake", ["cert-drip"], indirect=True)
def test_a_ca_dripping_its_answer_is_given_up_at_the_timeout(tmp_path: Path, fake: FakeAcme) -> None:
    """A byte every half second: requests' timeout is per read, so the download took as long as the CA liked
    (past every configured timeout); one answer now has the issuer's timeout in all (the shortest, 10 s)."""
    started = time.monotonic()
    stdout, status = renew_from(tmp_path, fake, timeout="10s")
    assert status == 1, stdout
    assert "did not finish its answer within 10 s" in stdout, stdout
    assert time.monotonic() - started < 25  # 30 s of dripping, cut at 10 s (and the process's start)
