"""``certkeeper doctor --exim-config FILE`` against the test bed's real Exim 4.96: it reads what ``exim -bP`` says
the daemon runs with, judges the files Exim loads and what each listener serves, and fixes in Exim's words."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certkeeper.app import build_app
from certkeeper.cli import main
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.exim import HOSTNAME, Exim, share_with_exim
from certkeeper.testbed.install import EXIM_USER
from certkeeper.testbed.server import make_traversable
from tests.lifecycle_helpers import write_config

pytestmark = pytest.mark.testbed


def doctor(capsys: pytest.CaptureFixture[str], exim: Exim, ca_file: Path,
           config: Path = Path("/nonexistent/certkeeper.toml")) -> tuple[int, dict[str, Any]]:
    status = main(["-c", str(config), "doctor", "--exim-config", str(exim.config_file), "--exim", str(exim.binary),
                   "--ca-file", str(ca_file), "--json", "--timeout", "5"])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    return status, json.loads(captured.out)


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, (code, json.dumps(report, indent=1))
    first: dict[str, Any] = found[0]
    return first


def reload_line(exim: Exim) -> str:
    return f'{exim.binary} -C {exim.config_file} -bV && kill -HUP "$(cat {exim.pid_file})"'


def test_a_healthy_exim_reads_its_listeners_from_exim_bp(
        capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    exim = exim_factory()
    status, report = doctor(capsys, exim, exim.ca_file)
    assert report["findings"] == [] and status == 0
    titles = [section["title"] for section in report["sections"]]
    assert f"Exim ({exim.config_file})" in titles
    assert f"Exim smtp on 127.0.0.1:{exim.ports['smtp']} (STARTTLS, exim:{exim.ports['smtp']})" in titles
    assert f"Exim submissions on 127.0.0.1:{exim.ports['smtps']} (implicit TLS, exim:{exim.ports['smtps']})" in titles


def test_missing_intermediate_and_world_readable_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     exim_factory: Callable[..., Exim]) -> None:
    root = TestCA("exim doctor root")
    leaf = root.intermediate("exim doctor intermediate").issue([HOSTNAME, "127.0.0.1"])
    make_traversable(tmp_path)
    key = tmp_path / "exim.key"
    key.write_bytes(leaf.key_pem)
    key.chmod(0o644)
    cert = tmp_path / "exim.crt"
    cert.write_bytes(leaf.cert_pem)  # the leaf alone: no intermediate
    exim = exim_factory(start=False)
    exim.use_certificate(cert, key)
    exim.start()

    status, report = doctor(capsys, exim, root.write_cert(tmp_path / "ca.pem"))

    assert status == 2
    chain = finding(report, "chain-incomplete")
    assert chain["where"] == f"Exim ({exim.config_file})"
    assert "fullchain" in chain["fix"] and reload_line(exim) in chain["fix"]
    assert "serves no intermediate" in finding(report, "served-chain-incomplete")["message"]
    assert finding(report, "key-world-readable")["fix"].startswith(f"chown root:{EXIM_USER} {key}\nchmod 0640 {key}")


def test_a_key_that_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   exim_factory: Callable[..., Exim], testbed_ca: TestCA) -> None:
    make_traversable(tmp_path)
    other_key, _ = testbed_ca.issue([HOSTNAME]).write(tmp_path, "other")
    share_with_exim(other_key)
    _, fullchain = testbed_ca.issue([HOSTNAME]).write(tmp_path, "served")
    exim = exim_factory(start=False)
    exim.use_certificate(fullchain, other_key)
    exim.start()

    status, report = doctor(capsys, exim, exim.ca_file)

    assert status == 2
    mismatch = finding(report, "key-certificate-mismatch")
    assert str(other_key) in mismatch["message"]
    assert "certkeeper setup exim --certificate NAME" in mismatch["fix"]
    handshake = [f for f in report["findings"] if f["where"].startswith("Exim submissions on 127.0.0.1:")]
    assert handshake and "mainlog" in handshake[0]["fix"]


def test_stale_files_a_stale_copy_and_a_daemon_not_reloaded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            exim_factory: Callable[..., Exim]) -> None:
    """A copy of an old version nobody renews; and the preloaded pair after ``current`` moved on without SIGHUP."""
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["{HOSTNAME}"]
        group = "{EXIM_USER}"
        """)
    app = build_app(config)
    assert app.run_pass()[0].result == "renewed"
    home = CertificateHome(tmp_path / "state", "mail")
    make_traversable(home.current_link.parent.parent)
    copy = tmp_path / "copy"
    copy.mkdir()
    make_traversable(copy)
    for name in ("fullchain.pem", "privkey.pem"):
        shutil.copy2(home.current_link / name, copy / name)
    share_with_exim(copy / "privkey.pem")
    stale = exim_factory(start=False)
    stale.use_certificate(copy / "fullchain.pem", copy / "privkey.pem")
    stale.start()
    served = exim_factory(start=False)
    served.use_certificate(home.current_link / "fullchain.pem", home.current_link / "privkey.pem")
    served.start()
    assert build_app(config).run_pass(force=True)[0].result == "renewed"  # no reload hook: nobody told Exim
    ca_file = tmp_path / "ca" / "root.pem"

    status, report = doctor(capsys, stale, ca_file, config.path)
    assert status == 2
    copied = finding(report, "stale-copy")
    assert f"MAIN_TLS_CERTIFICATE = {home.current_link / 'fullchain.pem'}" in copied["fix"]
    assert f"MAIN_TLS_PRIVATEKEY = {home.current_link / 'privkey.pem'}" in copied["fix"]

    status, report = doctor(capsys, served, ca_file, config.path)
    assert status == 2
    not_reloaded = finding(report, "served-certificate-stale")
    assert not_reloaded["where"].startswith("Exim ")
    assert reload_line(served) in not_reloaded["fix"]
    hook = finding(report, "reload-hook-missing")
    assert (f'reload = ["exim"] and hook_env = {{ EXIM_CONFIG = "{served.config_file}", EXIM = "{served.binary}" }}'
            in hook["fix"])


def test_a_fresh_exim_with_no_certificate_of_its_own(
        capsys: pytest.CaptureFixture[str], exim_factory: Callable[..., Exim]) -> None:
    """Debian's default: tls_certificate unset, STARTTLS with a certificate Exim made up; named, with the way out."""
    exim = exim_factory(listeners=["smtp"], tls=False)
    status, report = doctor(capsys, exim, exim.ca_file)
    assert status == 2
    assert finding(report, "certificate-missing")["fix"].startswith("certkeeper setup exim --certificate NAME")
    assert finding(report, "self-signed")["where"] == f"Exim smtp on 127.0.0.1:{exim.ports['smtp']} " \
                                                      f"(STARTTLS, exim:{exim.ports['smtp']})"


def test_an_exim_path_the_daemon_cannot_re_execute(capsys: pytest.CaptureFixture[str],
                                                   exim_factory: Callable[..., Exim]) -> None:
    """Debian's template sets exim_path = /usr/sbin/exim4; an unpacked binary elsewhere dies on its next SIGHUP."""
    exim = exim_factory(exim_path=Path("/usr/sbin/exim4"))
    status, report = doctor(capsys, exim, exim.ca_file)
    assert status == 2
    missing = finding(report, "exim-path-missing")
    assert missing["fix"] == f"in {exim.config_file}: exim_path = {exim.binary}"

