"""``certkeeper setup exim --certificate NAME --apply`` against the test bed's real Exim 4.96: a fresh Exim ends up
serving certkeeper's files on 25-, 465- and 587-style listeners; a setup that cannot work is rolled back and Exim
keeps serving what it served before."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.cli import main
from certkeeper.config import Config
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.exim import HOSTNAME, Exim
from certkeeper.testbed.install import EXIM_USER
from certkeeper.testbed.server import allocate_port, make_traversable
from tests.lifecycle_helpers import write_config

pytestmark = pytest.mark.testbed


def managed(tmp_path: Path, *, group: str | None = EXIM_USER,
            key_types: str = '["ecdsa-p256"]') -> tuple[Config, CertificateHome]:
    """certkeeper's ``mail``, installed once; with ``group`` its key is 0640 root:Debian-exim."""
    line = f'group = "{group}"' if group else ""
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["{HOSTNAME}"]
        key_types = {key_types}
        {line}
        """)
    assert build_app(config).run_pass()[0].result == "renewed"
    home = CertificateHome(tmp_path / "state", "mail")
    make_traversable(home.current_link.parent.parent)  # the test bed's Exim runs as Debian-exim
    return config, home


def served(url: str) -> str | None:
    result = probe_sync([parse_target(url)], ProbeOptions(timeout=5), now=datetime.now(UTC))[0]
    return result.certificate.fingerprint_sha256 if result.certificate else None


def setup(config: Config, exim: Exim, *, smtps: int, submission: int, apply: bool = True) -> int:
    return main(["-c", str(config.path), "setup", "exim", "--certificate", "mail", "--exim-config",
                 str(exim.config_file), "--exim", str(exim.binary), "--smtp-port", str(exim.ports["smtp"]),
                 "--smtps-port", str(smtps), "--submission-port", str(submission), "--verify-timeout", "5",
                 *(["--apply"] if apply else [])])


def test_setup_without_apply_prints_the_macros_and_changes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    config, home = managed(tmp_path)
    exim = exim_factory(start=False, listeners=["smtp"], tls=False)
    exim.write_config()
    before = exim.config_file.read_text()

    assert setup(config, exim, smtps=465, submission=587, apply=False) == 0

    out = capsys.readouterr().out
    assert f"MAIN_TLS_CERTIFICATE = {home.current_link / 'fullchain.pem'}" in out
    # The test bed's main file sets daemon_smtp_ports (a second definition would be an error): changed in place.
    assert f"# {exim.config_file}, set in place:\ndaemon_smtp_ports = {exim.ports['smtp']} : 465 : 587\n" in out
    assert "tls_on_connect_ports = 465" in out
    assert f'hook_env = {{ EXIM_CONFIG = "{exim.config_file}", EXIM = "{exim.binary}" }}' in out
    assert exim.config_file.read_text() == before and not exim.macros_file.exists()


def test_apply_on_a_fresh_exim_serves_certkeepers_files_on_25_465_and_587(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    config, home = managed(tmp_path)
    exim = exim_factory(listeners=["smtp"], tls=False)  # Debian's default: port 25, Exim's self-signed certificate
    smtps, submission = allocate_port(), allocate_port()
    current = home.current()
    assert current is not None and served(f"smtp://127.0.0.1:{exim.ports['smtp']}") not in current.fingerprints

    status = setup(config, exim, smtps=smtps, submission=submission)

    out = capsys.readouterr().out
    assert status == 0, out
    for url in (f"smtp://127.0.0.1:{exim.ports['smtp']}", f"smtps://127.0.0.1:{smtps}",
                f"smtp://127.0.0.1:{submission}"):
        assert served(url) in current.fingerprints, url
    assert f"MAIN_TLS_PRIVATEKEY = {home.current_link / 'privkey.pem'}" in exim.macros_file.read_text()
    assert "setup: exim serves mail on every listener" in out


def test_a_taken_port_is_rolled_back_and_exim_keeps_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    config, _ = managed(tmp_path)
    exim = exim_factory()
    seed = served(f"smtps://127.0.0.1:{exim.ports['smtps']}")
    before = exim.config_file.read_text()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        status = setup(config, exim, smtps=exim.ports["smtps"], submission=squatter.getsockname()[1])
    captured = capsys.readouterr()
    assert status == 1
    assert "is already in use by another program" in captured.out
    assert "the previous configuration is back" in captured.err
    assert exim.config_file.read_text() == before and not exim.macros_file.exists()
    assert seed is not None and served(f"smtps://127.0.0.1:{exim.ports['smtps']}") == seed


def test_a_key_exim_cannot_read_is_rolled_back_after_the_reload_and_exim_serves_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    """Without group = "Debian-exim" the key is 0600 root: the re-executed daemon cannot load it."""
    config, _ = managed(tmp_path, group=None)
    exim = exim_factory()
    seed = served(f"smtps://127.0.0.1:{exim.ports['smtps']}")

    status = setup(config, exim, smtps=exim.ports["smtps"], submission=exim.ports["submission"])

    captured = capsys.readouterr()
    assert status == 1, captured.out
    assert "setup: reloaded exim\n" in captured.out
    assert "after the rollback every listener serves TLS again" in captured.out
    assert seed is not None
    for listener in ("smtp", "submission"):
        assert served(f"smtp://127.0.0.1:{exim.ports[listener]}") == seed
    assert served(f"smtps://127.0.0.1:{exim.ports['smtps']}") == seed


def test_two_key_types_are_served_as_exim_lists_of_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    """Exim 4.96 takes a list in tls_certificate/tls_privatekey and picks the pair the client can use."""
    config, home = managed(tmp_path, key_types='["ecdsa-p256", "rsa-2048"]')
    exim = exim_factory()

    status = setup(config, exim, smtps=exim.ports["smtps"], submission=exim.ports["submission"])

    assert status == 0, capsys.readouterr().out
    current = home.current()
    assert current is not None and len(current.fingerprints) == 2
    result = probe_sync([parse_target(f"smtps://127.0.0.1:{exim.ports['smtps']}")],
                        ProbeOptions(timeout=5, key_type="all"), now=datetime.now(UTC))[0]
    assert {leaf.fingerprint_sha256 for leaf in result.served} == current.fingerprints

