"""MTA-STS in the renewal pass: published by ``renew``, served by the daemon itself, and the guard that keeps a
certificate senders would refuse from being installed (real Postfix, BIND, the internal CA)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from certkeeper import pki
from certkeeper.mtasts.fetch import fetch_policy
from certkeeper.mtasts.policy import Policy, parse_policy, policy_id
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.server import allocate_address
from tests.lifecycle_helpers import run_cli, write_config
from tests.test_daemon import daemon, daemon_log, wait_for

DOMAIN = "example.test"


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with Bind(tmp_path_factory.mktemp("bind"), zone=DOMAIN) as server:
        yield server


def txt(bind: Bind, name: str) -> list[str]:
    reply = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), bind.address, port=bind.port, timeout=5)
    return sorted(b"".join(r.strings).decode() for rrset in reply.answer for r in rrset)


def mta_sts_table(bind: Bind, max_age: str = "1d", **keys: object) -> str:
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    return textwrap.dedent(f"""
        [mta_sts."{DOMAIN}"]
        mode = "enforce"
        max_age = "{max_age}"
        dns_server = "{bind.nameserver}"
        tsig_key_file = "{bind.tsig_key_file}"
        zone = "{DOMAIN}"
        """) + lines + "\n"


def served_fingerprint(address: str) -> str:
    [result] = probe_sync([parse_target(f"smtp://{address}:25")], ProbeOptions(timeout=10), now=pki.now_utc())
    assert result.certificate is not None, result.message
    return result.certificate.fingerprint_sha256


def test_a_renewal_whose_names_miss_the_published_patterns_is_refused_and_the_old_one_stays_served(
        tmp_path: Path, bind: Bind) -> None:
    address = allocate_address([25])
    webroot = tmp_path / "webroot"
    mail = '[certificates.mail]\nissuer = "internal"\ndomains = ["mail.example.test"]\n'
    config = write_config(tmp_path, mail + mta_sts_table(bind, webroot=str(webroot), certificates=["mail"]))
    first_run = run_cli(config, "renew", "--json")
    assert first_run.returncode == 0, first_run.stdout + first_run.stderr
    published = parse_policy((webroot / ".well-known" / "mta-sts.txt").read_bytes()).policy
    assert published == Policy("enforce", 86400, ("mail.example.test",))
    assert txt(bind, f"_mta-sts.{DOMAIN}") == [
        f"v=STSv1; id={policy_id((webroot / '.well-known' / 'mta-sts.txt').read_bytes().decode())}"]
    home = CertificateHome(tmp_path / "state", "mail")
    first = home.current()
    assert first is not None
    policy = policy_id((webroot / ".well-known" / "mta-sts.txt").read_bytes().decode())
    status = run_cli(config, "status", "--json")
    [row] = json.loads(status.stdout)
    assert row["mta_sts"] == [{"domain": DOMAIN, "policy_id": policy, "mode": "enforce", "mx": ["mail.example.test"],
                               "every_mx_matches": True, "unmatched": [], "txt_in_step": True}]
    metrics = run_cli(config, "metrics").stdout
    assert f'certkeeper_mta_sts_policy_info{{domain="{DOMAIN}",id="{policy}",mode="enforce"}} 1' in metrics
    assert f'certkeeper_mta_sts_mx_match{{domain="{DOMAIN}"}} 1' in metrics
    assert f"{DOMAIN}: policy id {policy}, mode enforce" in run_cli(config, "status").stdout
    with Postfix(tmp_path / "postfix", address=address, fixed_ports={"smtp": 25}, listeners=["smtp"]) as postfix:
        postfix.use_certificate(home.current_link / "privkey.pem", home.current_link / "fullchain.pem")
        postfix.reload()
        before = served_fingerprint(address)
        assert {before} == first.fingerprints
        # The operator renames the MX in the certificate but pins the policy's patterns to the old name.
        renamed = textwrap.dedent(f"""
            [certificates.mail]
            issuer = "internal"
            domains = ["mx9.example.test"]
            endpoints = ["smtp://{address}:25"]
            reload = ["postfix"]
            hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}
            """)
        config = write_config(tmp_path, renamed + mta_sts_table(bind, webroot=str(webroot), certificates=["mail"],
                                                                 mx=["mail.example.test"]))
        result = run_cli(config, "renew", "--force", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        [outcome] = json.loads(result.stdout)
        assert outcome["result"] == "failed"
        assert "mx9.example.test matches none of the mx patterns (mail.example.test)" in outcome["detail"]
        current = home.current()
        assert current is not None and current.id == first.id
        assert served_fingerprint(address) == before


def test_the_daemon_keeps_a_domain_that_check_mta_sts_finds_good(tmp_path: Path, bind: Bind) -> None:
    """The whole loop: the daemon issues the MX and policy-host certificates, reloads Postfix, publishes the policy
    and its TXT record and serves the policy itself; a sender's view (check --mta-sts) finds everything in step."""
    policy_address, mx_address = allocate_address([443]), allocate_address([25])
    current = tmp_path / "state" / "certs" / "mail" / "current"
    with Postfix(tmp_path / "postfix", address=mx_address, fixed_ports={"smtp": 25}, listeners=["smtp"],
                 main_cf={"smtpd_tls_chain_files": f"{current / 'privkey.pem'}, {current / 'fullchain.pem'}"}) \
            as postfix:
        tables = textwrap.dedent(f"""
            [certificates.mail]
            issuer = "internal"
            domains = ["mail.example.test"]
            endpoints = ["smtp://{mx_address}:25"]
            reload = ["postfix"]
            hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}

            [certificates.mta-sts]
            issuer = "internal"
            domains = ["mta-sts.example.test"]
            """) + mta_sts_table(bind, "2d", serve=f"{policy_address}:443", certificate="mta-sts",
                                    certificates=["mail"])
        config = write_config(tmp_path, tables)
        bind.update(add=[f"@ MX 10 mail.{DOMAIN}.", f"mail A {mx_address}", f"mta-sts A {policy_address}"])
        root = tmp_path / "ca" / "root.pem"

        def fetched() -> bytes | None:
            result = fetch_policy(DOMAIN, [policy_address], ca_file=root, timeout=5)
            return result.body if result.finding is None else None

        with daemon(config):
            assert wait_for(lambda: fetched() is not None, 60), daemon_log(config)
            body = fetched()
            assert body is not None
            assert wait_for(lambda: txt(bind, f"_mta-sts.{DOMAIN}") == [f"v=STSv1; id={policy_id(body.decode())}"],
                            20), daemon_log(config)
            result = run_cli(config, "check", "--mta-sts", DOMAIN, "--resolver", bind.nameserver,
                             "--ca-file", str(root), "--json")
    assert parse_policy(body).policy == Policy("enforce", 2 * 86400, ("mail.example.test",))
    [report] = json.loads(result.stdout)
    assert (result.returncode, report["status"]) == (0, "OK"), report["message"]
    assert report["txt"]["id"] == policy_id(body.decode())
    assert [(m["host"], m["pattern"], m["matches"]) for m in report["mx"]] == [
        ("mail.example.test", "mail.example.test", True)]
