"""Renewals against the test bed's real Exim 4.96: the shipped ``exim`` hook makes the daemon serve the new pair on
25-, 465- and 587-style listeners; a hook that does not reload is rolled back with the old certificate served."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from certkeeper.app import build_app
from certkeeper.config import Config
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.exim import Exim
from certkeeper.testbed.install import EXIM_USER
from certkeeper.testbed.server import make_traversable
from tests.lifecycle_helpers import hook_script, run_cli, write_config
from tests.test_renewal_testbed import served

pytestmark = pytest.mark.testbed

EXIM_HOOK = Path(__file__).resolve().parent.parent / "hooks" / "exim"


def exim_endpoints(exim: Exim) -> list[str]:
    return [f"smtp://127.0.0.1:{exim.ports['smtp']}", f"smtps://127.0.0.1:{exim.ports['smtps']}",
            f"smtp://127.0.0.1:{exim.ports['submission']}"]


def exim_hook_env(exim: Exim) -> dict[str, str]:
    return {"EXIM": str(exim.binary), "EXIM_CONFIG": str(exim.config_file)}


def mail_config(tmp_path: Path, *, reload: list[str], hook_env: dict[str, str], endpoints: list[str]) -> Config:
    """Certificate ``mail``, its key 0640 root:Debian-exim (the daemon runs as Debian-exim and reads it)."""
    env = ", ".join(f'{key} = "{value}"' for key, value in hook_env.items())
    return write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        group = "{EXIM_USER}"
        reload = {json.dumps(reload)}
        hook_env = {{ {env} }}
        endpoints = {json.dumps(endpoints)}
        """, settings='verify_timeout = "5s"')


@pytest.fixture
def exim_on_certkeeper(tmp_path: Path, exim_factory: Callable[..., Exim]) -> tuple[Exim, CertificateHome]:
    """A running Exim whose tls_certificate/tls_privatekey are certkeeper's ``current`` files for ``mail``."""
    [outcome] = build_app(mail_config(tmp_path, reload=[], hook_env={}, endpoints=[])).run_pass()
    assert outcome.result == "renewed", outcome.detail
    home = CertificateHome(tmp_path / "state", "mail")
    # The test bed's daemon runs as Debian-exim (see certkeeper.testbed.exim): let it through the 0750 state_dir
    # to the certificate's folder, which is 0750 root:Debian-exim already.
    make_traversable(home.current_link.parent.parent)
    exim = exim_factory(start=False)
    exim.use_certificate(home.current_link / "fullchain.pem", home.current_link / "privkey.pem")
    exim.start()
    first = home.current()
    assert first is not None and served(exim_endpoints(exim)) == first.fingerprints
    return exim, home


def test_a_renewal_reloads_exim_and_is_verified_on_25_465_and_587(
        tmp_path: Path, exim_on_certkeeper: tuple[Exim, CertificateHome]) -> None:
    exim, home = exim_on_certkeeper
    first = home.current()
    endpoints = exim_endpoints(exim)
    config = mail_config(tmp_path, reload=[str(EXIM_HOOK)], hook_env=exim_hook_env(exim), endpoints=endpoints)

    result = run_cli(config, "renew", "--force", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome["result"] == "renewed", outcome
    second = home.current()
    assert first is not None and second is not None and second.id == outcome["version"] != first.id
    assert served(endpoints) == second.fingerprints
    assert "SIGHUP received: re-exec daemon" in exim.log_path.read_text()


def test_a_hook_that_does_not_reload_exim_is_rolled_back_with_the_old_certificate_served(
        tmp_path: Path, exim_on_certkeeper: tuple[Exim, CertificateHome]) -> None:
    exim, home = exim_on_certkeeper
    before = home.current()
    endpoints = exim_endpoints(exim)
    # What the previous exim hook did: nothing (it assumed Exim reads the files per connection).
    noop = hook_script(tmp_path, "no-reload")
    config = mail_config(tmp_path, reload=[str(noop)], hook_env={}, endpoints=endpoints)

    result = run_cli(config, "renew", "--force", "--json")

    assert result.returncode == 1, result.stdout + result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome["result"] == "rolled-back", outcome
    assert "was not served after two reloads" in outcome["detail"]
    assert before is not None and home.current() == before
    assert served(endpoints) == before.fingerprints


def test_the_hook_refuses_to_sighup_an_exim_whose_configuration_no_longer_parses(
        exim_on_certkeeper: tuple[Exim, CertificateHome]) -> None:
    """A SIGHUP would re-execute into the broken configuration and kill the daemon; the hook fails instead."""
    exim, home = exim_on_certkeeper
    exim.macros_file.write_text("tls_certificate_typo = 1\n")
    environment = {"PATH": os.environ["PATH"], **exim_hook_env(exim)}

    result = subprocess.run([str(EXIM_HOOK)], env=environment, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert 'exim -bV rejects the configuration; not sending SIGHUP' in result.stderr
    assert 'main option "tls_certificate_typo" unknown' in result.stderr
    current = home.current()
    assert exim.pid is not None and current is not None and served(exim_endpoints(exim)) == current.fingerprints


def test_the_hook_refuses_to_sighup_an_exim_that_could_not_re_execute(exim_factory: Callable[..., Exim]) -> None:
    """exim_path is what the daemon execs on SIGHUP; Debian's /usr/sbin/exim4 is absent for an unpacked binary."""
    exim = exim_factory(exim_path=Path("/usr/sbin/exim4"))
    assert not Path("/usr/sbin/exim4").exists()
    environment = {"PATH": os.environ["PATH"], **exim_hook_env(exim)}

    result = subprocess.run([str(EXIM_HOOK)], env=environment, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "exim_path /usr/sbin/exim4 is not an executable: the daemon could not re-execute on SIGHUP" in result.stderr
    assert exim.pid is not None and "SIGHUP received" not in exim.log_path.read_text()

