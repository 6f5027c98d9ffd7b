"""What an interrupted run leaves is cleaned by the next run holding the lock, due or not (issue 21.5, 21.8)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from certkeeper.app import build_app
from certkeeper.config import Config, load_config
from certkeeper.dnsclient import parse_tsig_key, send_update
from certkeeper.issuers import journal
from certkeeper.issuers.challenges import ChallengeAnswer
from certkeeper.renewal.policy import Result
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble
from tests.lifecycle_helpers import run_cli, write_config


def test_a_leftover_incoming_folder_is_removed_by_a_run_with_nothing_due(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    assert run_cli(config, "renew").returncode == 0
    home = CertificateHome(config.settings.state_dir, "mail")
    leftover = home.versions_dir / ".incoming-20260101T000000Z"
    leftover.mkdir()
    (leftover / "privkey.pem").write_text("a private key a killed run was writing\n")
    result = run_cli(config, "renew")
    assert result.returncode == 0 and "not-due" in result.stdout, result.stdout + result.stderr
    assert not leftover.exists()
    assert "removed .incoming-20260101T000000Z left by an interrupted install" in result.stderr


def txt_values(bind: Bind, name: str) -> set[str]:
    reply = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), bind.address, port=bind.port, timeout=5)
    return {b"".join(r.strings).decode() for rrset in reply.answer for r in rrset}


def dns01_config(tmp_path: Path, pebble: Pebble, bind: Bind, domain: str) -> Config:
    trust = pebble.write_issuer_chain(tmp_path / "pebble-chain.pem")
    path = tmp_path / "certkeeper.toml"
    path.write_text(textwrap.dedent(f"""\
        [certkeeper]
        state_dir = "{tmp_path / "state"}"
        lock_timeout = "1s"

        [issuers.pebble]
        type = "acme"
        directory = "{pebble.directory_url}"
        ca_bundle = "{pebble.ca_file}"
        trust_roots = "{trust}"
        challenge = "dns-01"
        dns_server = "{bind.nameserver}"
        tsig_key_file = "{bind.tsig_key_file}"
        timeout = "60s"

        [certificates.mail]
        issuer = "pebble"
        domains = ["{domain}"]
        """))
    return load_config(path)


@pytest.mark.testbed
def test_dns01_values_an_interrupted_order_left_are_removed_by_the_next_run(
        tmp_path: Path, pebble: Pebble, bind: Bind) -> None:
    domain = f"stray-{tmp_path.name[-8:].strip('_').lower()}.example.test"
    config = dns01_config(tmp_path, pebble, bind, domain)
    state_dir = config.settings.state_dir
    [first] = build_app(config).run_pass()
    assert first.result == Result.RENEWED, first.detail
    assert not journal.has_pending(state_dir, "mail")  # a finished order leaves nothing to clean
    # What a run SIGKILLed while validating leaves: values recorded, then published, never removed.
    answers = [ChallengeAnswer(domain, f"token{i}", f"token{i}.thumbprint") for i in range(3)]
    journal.record(state_dir, "mail", [(a.identifier, a.token, a.key_authorization) for a in answers])
    key = parse_tsig_key(bind.tsig_key_file.read_text(), str(bind.tsig_key_file))
    send_update(bind.address, bind.port, "example.test.", key, ttl=60,
                add=[(a.dns_name, "TXT", f'"{a.dns_value}"') for a in answers])
    name = answers[0].dns_name
    assert txt_values(bind, name) == {a.dns_value for a in answers}
    result = run_cli(config, "renew", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)[0]["result"] == "not-due"
    assert txt_values(bind, name) == set()
    assert not journal.has_pending(state_dir, "mail")
    assert f"removed the dns-01 values an interrupted order left at {name}" in result.stderr
