"""Install, reload, verify and roll back against the test bed's real Postfix and Dovecot."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from certkeeper import pki
from certkeeper.app import build_app
from certkeeper.config import Config
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.postfix import Postfix
from tests.lifecycle_helpers import hook_script, run_cli, write_config

pytestmark = pytest.mark.testbed


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[Postfix]:
    with Postfix(tmp_path / "postfix") as instance:
        yield instance


def postfix_endpoints(postfix: Postfix) -> list[str]:
    return [f"smtp://127.0.0.1:{postfix.ports['smtp']}", f"smtp://127.0.0.1:{postfix.ports['submission']}",
            f"smtps://127.0.0.1:{postfix.ports['submissions']}"]


def served(endpoints: list[str]) -> set[str]:
    results = probe_sync([parse_target(e) for e in endpoints], ProbeOptions(timeout=10), now=pki.now_utc())
    for result in results:
        assert result.certificate is not None, (result.target.text, result.message)
    return {r.certificate.fingerprint_sha256 for r in results if r.certificate}


def certificate_table(name: str, domains: str, *, endpoints: list[str], hooks: list[str],
                      hook_env: dict[str, str]) -> str:
    env = ", ".join(f'{k} = "{v}"' for k, v in hook_env.items())
    return textwrap.dedent(f"""
        [certificates.{name}]
        issuer = "internal"
        domains = [{domains}]
        reload = {json.dumps(hooks)}
        hook_env = {{ {env} }}
        endpoints = {json.dumps(endpoints)}
        """)


def reloaded_by(tmp_path: Path, hook: str, hook_env: dict[str, str], endpoints: list[str]) -> Config:
    """The certificate ``mail`` with one shipped reload hook and the endpoints to verify."""
    return write_config(tmp_path, certificate_table("mail", '"mail.example.test"', endpoints=endpoints,
                                                    hooks=[hook], hook_env=hook_env))


def install_first_version(tmp_path: Path, name: str = "mail") -> Config:
    """What an administrator does first: issue once, before any daemon reads certkeeper's files."""
    config = write_config(tmp_path, f'[certificates.{name}]\nissuer = "internal"\ndomains = ["mail.example.test"]\n')
    [outcome] = build_app(config).run_pass()
    assert outcome.result == "renewed", outcome.detail
    return config


def test_a_renewal_is_installed_reloaded_and_verified_on_every_postfix_listener(
        tmp_path: Path, postfix: Postfix) -> None:
    install_first_version(tmp_path)
    current = tmp_path / "state" / "certs" / "mail" / "current"
    postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    postfix.reload()
    endpoints = postfix_endpoints(postfix)
    home = CertificateHome(tmp_path / "state", "mail")
    first = home.current()
    assert first is not None and served(endpoints) == first.fingerprints
    config = reloaded_by(tmp_path, "postfix", {"POSTFIX_CONFIG_DIR": str(postfix.config_dir)}, endpoints)
    result = run_cli(config, "renew", "--force", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome["result"] == "renewed"
    second = home.current()
    assert second is not None and second.id == outcome["version"] != first.id
    assert served(endpoints) == second.fingerprints


def test_five_certificates_served_by_one_postfix_reload_it_once(tmp_path: Path, postfix: Postfix) -> None:
    install_first_version(tmp_path)
    current = tmp_path / "state" / "certs" / "mail" / "current"
    postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    postfix.reload()
    env = {"POSTFIX_CONFIG_DIR": str(postfix.config_dir)}
    tables = certificate_table("mail", '"mail.example.test"', endpoints=postfix_endpoints(postfix),
                               hooks=["postfix"], hook_env=env)
    tables += "".join(certificate_table(f"extra{i}", f'"extra{i}.example.test"', endpoints=[], hooks=["postfix"],
                                        hook_env=env) for i in range(4))
    config = write_config(tmp_path, tables)
    reloads_before = postfix.log_path.read_text().count("refreshing the Postfix mail system")
    result = run_cli(config, "renew", "--force", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [o["result"] for o in json.loads(result.stdout)] == ["renewed"] * 5
    reloads = postfix.log_path.read_text().count("refreshing the Postfix mail system") - reloads_before
    assert reloads == 1


def test_rollback_serves_the_previous_version_on_postfix(tmp_path: Path, postfix: Postfix) -> None:
    install_first_version(tmp_path)
    home = CertificateHome(tmp_path / "state", "mail")
    current = home.current_link
    postfix.use_certificate(current / "privkey.pem", current / "fullchain.pem")
    postfix.reload()
    endpoints = postfix_endpoints(postfix)
    config = reloaded_by(tmp_path, "postfix", {"POSTFIX_CONFIG_DIR": str(postfix.config_dir)}, endpoints)
    first = home.current()
    assert run_cli(config, "renew", "--force").returncode == 0
    result = run_cli(config, "rollback", "mail")
    assert result.returncode == 0, result.stderr
    assert first is not None and served(endpoints) == first.fingerprints
    assert home.current() == first


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path / "dovecot") as instance:
        yield instance


def dovecot_endpoints(dovecot: Dovecot) -> list[str]:
    return [
        f"imap://127.0.0.1:{dovecot.ports['imap']}",
        f"imaps://127.0.0.1:{dovecot.ports['imaps']}",
        f"pop3://127.0.0.1:{dovecot.ports['pop3']}",
        f"pop3s://127.0.0.1:{dovecot.ports['pop3s']}",
        f"sieve://127.0.0.1:{dovecot.ports['sieve']}",
    ]


def point_dovecot_at_certkeeper(tmp_path: Path, dovecot: Dovecot) -> CertificateHome:
    home = CertificateHome(tmp_path / "state", "mail")
    dovecot.use_certificate(home.current_link / "fullchain.pem", home.current_link / "privkey.pem")
    dovecot.reload()
    return home


def test_a_renewal_is_verified_on_every_dovecot_listener(tmp_path: Path, dovecot: Dovecot) -> None:
    install_first_version(tmp_path)
    home = point_dovecot_at_certkeeper(tmp_path, dovecot)
    endpoints = dovecot_endpoints(dovecot)
    config = reloaded_by(tmp_path, "dovecot", {"DOVECOT_CONFIG": str(dovecot.config_file)}, endpoints)
    result = run_cli(config, "renew", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    current = home.current()
    assert current is not None and served(endpoints) == current.fingerprints


def test_a_hook_that_does_not_reload_leads_to_a_rollback_and_the_old_certificate_served(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    install_first_version(tmp_path)
    home = point_dovecot_at_certkeeper(tmp_path, dovecot)
    endpoints = dovecot_endpoints(dovecot)
    before = home.current()
    assert before is not None and served(endpoints) == before.fingerprints
    # A hook that reloads nothing: Dovecot keeps serving the old certificate.
    noop = hook_script(tmp_path, "no-reload")
    config = write_config(
        tmp_path,
        certificate_table("mail", '"mail.example.test"', endpoints=endpoints, hooks=[str(noop)], hook_env={}),
        settings='verify_timeout = "3s"',
    )
    result = run_cli(config, "renew", "--force", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome["result"] == "rolled-back"
    assert "was not served after two reloads" in outcome["detail"]
    assert "the previous certificate is served again" in outcome["detail"]
    assert home.current() == before
    assert served(endpoints) == before.fingerprints
    assert len(home.versions()) == 2  # the refused version is kept for inspection, not current
    assert build_app(config).store.renewals("mail", limit=1)[0].result == "rollback"


def test_an_endpoint_serving_a_stale_certificate_is_reloaded_without_renewing(tmp_path: Path, dovecot: Dovecot) -> None:
    install_first_version(tmp_path)
    home = point_dovecot_at_certkeeper(tmp_path, dovecot)
    endpoints = dovecot_endpoints(dovecot)
    before = home.current()
    # A running Dovecot has served connections: its config process holds the certificate it read then.
    assert before is not None and served(endpoints) == before.fingerprints
    # Someone installs a new version and forgets to reload: no hooks configured.
    forgetful = write_config(
        tmp_path, certificate_table("mail", '"mail.example.test"', endpoints=[], hooks=[], hook_env={})
    )
    assert build_app(forgetful).run_pass(force=True)[0].result == "renewed"
    current = home.current()
    assert current is not None and served(endpoints) != current.fingerprints
    config = reloaded_by(tmp_path, "dovecot", {"DOVECOT_CONFIG": str(dovecot.config_file)}, endpoints)
    result = run_cli(config, "renew", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome == {
        "name": "mail",
        "result": "reloaded",
        "detail": f"endpoints now serve {current.id}",
        "version": current.id,
    }
    assert home.current() == current
    assert served(endpoints) == current.fingerprints
    stale = [r for r in build_app(config).store.endpoints() if r.stale]
    assert {r.endpoint for r in stale} == set(endpoints)
