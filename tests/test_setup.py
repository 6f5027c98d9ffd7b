"""``certkeeper setup``: a fresh real Postfix ends up serving SMTPS and STARTTLS submission, verified by probing;
a setup that cannot work is rolled back and the daemon keeps serving."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certkeeper import pki
from certkeeper.cli import main
from certkeeper.mailserver.config import read_dovecot, read_postfix
from certkeeper.mailserver.setup import CertificateFiles, plan_dovecot, plan_postfix
from certkeeper.model import KeyType
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store.versions import CertificateHome, KeyPair
from certkeeper.targets import parse_target
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.server import allocate_port
from tests.configs import internal_ca_config

HOSTNAME = "mail.example.test"


@pytest.fixture
def managed(tmp_path: Path) -> tuple[Path, TestCA, str]:
    """certkeeper.toml with certificate ``mail`` installed (leaf + intermediate) in ``current``."""
    ca = TestCA("setup test root")
    leaf = ca.intermediate("setup test intermediate").issue([HOSTNAME, "localhost"])
    home = CertificateHome(tmp_path / "state", "mail")
    version = home.write_version([KeyPair(KeyType.ECDSA_P256, leaf.key, leaf.certificate, leaf.intermediates)],
                                 issuer="internal", domains=[HOSTNAME, "localhost"], now=datetime.now(UTC))
    home.activate(version)
    config = internal_ca_config(tmp_path, domains=[HOSTNAME, "localhost"], certificate='reload = ["postfix"]')
    return config, ca, pki.fingerprint(leaf.certificate)


@pytest.fixture
def fresh_postfix(tmp_path: Path, managed: tuple[Path, TestCA, str]) -> Iterator[Any]:
    """A running test bed Postfix with only its port-25-style smtp listener and its seed certificate."""
    from certkeeper.testbed.postfix import Postfix

    postfix = Postfix(tmp_path / "postfix", ca=managed[1], listeners=["smtp"]).start()
    yield postfix
    postfix.stop()


def _served(url: str) -> str | None:
    result = probe_sync([parse_target(url)], ProbeOptions(timeout=5), now=datetime.now(UTC))[0]
    return result.certificate.fingerprint_sha256 if result.certificate else None


def test_plan_postfix_reuses_existing_services_and_adds_new_ones(tmp_path: Path) -> None:
    """An existing listener on the port is changed in place (-P), a missing one added (-M); main.cf gets -e."""
    from certkeeper.testbed.postfix import Postfix

    postfix = Postfix(tmp_path / "postfix", listeners=["smtp", "submission"])
    postfix.write_config()
    files = CertificateFiles("mail", (Path("/s/certs/mail/current"),), frozenset(), (HOSTNAME,))
    plan = plan_postfix(read_postfix(postfix.config_dir), files, smtps_port=465,
                        submission_port=postfix.ports["submission"])
    text = plan.text()
    assert "'smtpd_tls_chain_files=/s/certs/mail/current/combined.pem'" in text
    assert "-M 'submissions/inet=submissions inet n - n - - smtpd'" in text
    assert f"'127.0.0.1:{postfix.ports['submission']}/inet/smtpd_tls_auth_only=yes'" in text
    assert plan.new_ports == (465,)


def test_plan_dovecot_writes_a_snippet_with_both_key_types(tmp_path: Path) -> None:
    """Two key types: ssl_cert from ecdsa/, ssl_alt_cert from rsa/; the snippet is included from the main file."""
    if shutil.which("doveconf") is None:
        pytest.skip("doveconf is not installed")
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"protocols = imap\nlisten = 127.0.0.1\nbase_dir = {tmp_path}/run\nssl = no\n")
    current = Path("/s/certs/mail/current")
    files = CertificateFiles("mail", (current / "ecdsa", current / "rsa"), frozenset(), (HOSTNAME,))
    plan = plan_dovecot(read_dovecot(conf), files, imaps_port=10993)
    assert f"ssl_cert = <{current}/ecdsa/fullchain.pem" in plan.snippet
    assert f"ssl_alt_key = <{current}/rsa/privkey.pem" in plan.snippet
    assert "port = 10993" in plan.snippet and plan.include_line == f"!include_try {tmp_path}/certkeeper-tls.conf"


def test_setup_without_apply_changes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            managed: tuple[Path, TestCA, str]) -> None:
    """Printing the plan leaves main.cf and master.cf as they were."""
    from certkeeper.testbed.postfix import Postfix

    postfix = Postfix(tmp_path / "postfix", listeners=["smtp"])
    postfix.write_config()
    before = [(postfix.config_dir / name).read_text() for name in ("main.cf", "master.cf")]
    assert main(["-c", str(managed[0]), "setup", "postfix", "--certificate", "mail",
                 "--postfix-config", str(postfix.config_dir)]) == 0
    out = capsys.readouterr().out
    assert "smtpd_tls_wrappermode=yes" in out and 'reload = ["postfix"]' in out and "--apply" in out
    assert [(postfix.config_dir / name).read_text() for name in ("main.cf", "master.cf")] == before


@pytest.mark.testbed
def test_apply_on_a_fresh_postfix_serves_smtps_and_starttls_submission(
        capsys: pytest.CaptureFixture[str], managed: tuple[Path, TestCA, str], fresh_postfix: Any) -> None:
    """After --apply, SMTPS (implicit TLS), submission (STARTTLS) and smtp serve certkeeper's current pair."""
    config, ca, fingerprint = managed
    smtps, submission = allocate_port(), allocate_port()
    status = main(["-c", str(config), "setup", "postfix", "--certificate", "mail", "--postfix-config",
                   str(fresh_postfix.config_dir), "--smtps-port", str(smtps), "--submission-port", str(submission),
                   "--apply", "--verify-timeout", "20"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "setup: postfix serves mail on every listener" in out
    assert _served(f"smtps://127.0.0.1:{smtps}") == fingerprint
    assert _served(f"smtp://127.0.0.1:{submission}") == fingerprint
    assert _served(f"smtp://127.0.0.1:{fresh_postfix.ports['smtp']}") == fingerprint
    ca_file = ca.write_cert(config.parent / "ca.pem")
    hook_env = f'hook_env = {{ POSTFIX_CONFIG_DIR = "{fresh_postfix.config_dir}" }}'
    config.write_text(config.read_text().replace('reload = ["postfix"]', f'reload = ["postfix"]\n{hook_env}'))
    status = main(["-c", str(config), "doctor", "--postfix-config", str(fresh_postfix.config_dir),
                   "--ca-file", str(ca_file)])
    report = capsys.readouterr().out
    assert status == 0 and report.rstrip().endswith("doctor: healthy"), report


@pytest.mark.testbed
def test_a_taken_port_is_rolled_back_and_postfix_keeps_serving(
        capsys: pytest.CaptureFixture[str], managed: tuple[Path, TestCA, str], fresh_postfix: Any) -> None:
    """Another program holds the SMTPS port: setup fails, main.cf/master.cf are restored, smtp still serves."""
    config, _, fingerprint = managed
    before = [(fresh_postfix.config_dir / name).read_text() for name in ("main.cf", "master.cf")]
    seed = _served(f"smtp://127.0.0.1:{fresh_postfix.ports['smtp']}")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        status = main(["-c", str(config), "setup", "postfix", "--certificate", "mail", "--postfix-config",
                       str(fresh_postfix.config_dir), "--smtps-port", str(taken), "--submission-port",
                       str(allocate_port()), "--apply", "--verify-timeout", "5"])
    captured = capsys.readouterr()
    assert status == 1
    assert f"port {taken} on 127.0.0.1 is already in use" in captured.out
    assert "restored the backup" in captured.out and "every listener serves TLS again" in captured.out
    assert [(fresh_postfix.config_dir / name).read_text() for name in ("main.cf", "master.cf")] == before
    assert _served(f"smtp://127.0.0.1:{fresh_postfix.ports['smtp']}") == seed != fingerprint


@pytest.mark.testbed
def test_a_pair_that_fails_after_reload_is_rolled_back(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, managed: tuple[Path, TestCA, str],
        fresh_postfix: Any) -> None:
    """postfix reload accepts a mismatched key; the probe catches it, and the old configuration comes back."""
    config, ca, _ = managed
    combined = tmp_path / "state" / "certs" / "mail" / "current" / "combined.pem"
    other = ca.issue([HOSTNAME])
    combined.write_bytes(other.key_pem + combined.read_bytes().split(b"-----END PRIVATE KEY-----\n", 1)[1])
    seed = _served(f"smtp://127.0.0.1:{fresh_postfix.ports['smtp']}")
    status = main(["-c", str(config), "setup", "postfix", "--certificate", "mail", "--postfix-config",
                   str(fresh_postfix.config_dir), "--smtps-port", str(allocate_port()), "--submission-port",
                   str(allocate_port()), "--apply", "--verify-timeout", "3"])
    out = capsys.readouterr().out
    assert status == 1 and "FAILED" in out and "restored the backup" in out, out
    assert _served(f"smtp://127.0.0.1:{fresh_postfix.ports['smtp']}") == seed


@pytest.mark.testbed
def test_apply_dovecot_serves_imaps(dovecot_factory: Callable[..., Dovecot], capsys: pytest.CaptureFixture[str],
                                    managed: tuple[Path, TestCA, str]) -> None:
    """With a Dovecot of its own (setup rewrites its configuration): --apply adds IMAPS on the given port."""
    dovecot = dovecot_factory()
    config, _, fingerprint = managed
    config_file = dovecot.config_file
    imaps = allocate_port()
    status = main(["-c", str(config), "setup", "dovecot", "--certificate", "mail", "--dovecot-config",
                   str(config_file), "--imaps-port", str(imaps), "--apply", "--verify-timeout", "20"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert _served(f"imaps://127.0.0.1:{imaps}") == fingerprint
