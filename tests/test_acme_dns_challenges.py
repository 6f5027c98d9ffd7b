"""dns-account-01 and dns-persist-01 against real Pebble 2.10 and BIND from the test bed."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from certkeeper import pki
from certkeeper.cli import main
from certkeeper.config import AcmeIssuerConfig
from certkeeper.errors import IssuanceError
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.issuers.base import IssueRequest
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble
from certkeeper.values import replace

pytestmark = [pytest.mark.testbed]


def make_issuer(pebble: Pebble, bind: Bind, state: Path, **overrides: Any) -> AcmeIssuer:
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              dns_server=bind.nameserver, timeout=timedelta(seconds=60),
                              dns_timeout=timedelta(seconds=20))
    return AcmeIssuer(replace(config, **overrides), state)


def request_for(*domains: str) -> IssueRequest:
    return IssueRequest(certificate="mail", domains=domains, key=pki.generate_key(KeyType.ECDSA_P256),
                        key_type=KeyType.ECDSA_P256)


def unique(bind: Bind, label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}.{bind.zone.rstrip('.')}"


def txt_at(bind: Bind, name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), bind.address, port=bind.port, timeout=2)
    return [b"".join(r.strings).decode() for rrset in reply.answer for r in rrset]


def test_dns_account_01_over_rfc2136_issues_and_cleans_up(pebble: Pebble, bind: Bind, tmp_path: Path) -> None:
    issuer = make_issuer(pebble, bind, tmp_path, challenge="dns-account-01", tsig_key_file=bind.tsig_key_file)
    domain = unique(bind, "account")
    orders = pebble.count_orders()

    issued = issuer.issue(request_for(domain, f"*.{domain}"))

    assert sorted(pki.subject_alternative_names(issued.certificate)) == sorted([domain, f"*.{domain}"])
    assert pebble.count_orders() == orders + 1
    # The records went to the account-scoped name (draft-ietf-acme-dns-account-label 3.2), not dns-01's, and were
    # removed afterwards.
    uri = issuer._directory(pebble.directory_url).account_uri()
    label = base64.b32encode(hashlib.sha256(uri.encode()).digest()[:10]).decode().lower()
    name = f"_{label}._acme-challenge.{domain}"
    log = bind.log_path.read_text()
    assert f"adding an RR at '{name}' TXT" in log
    assert f"adding an RR at '_acme-challenge.{domain}'" not in log
    assert txt_at(bind, name) == []


def test_dns_account_01_through_a_dns_hook_issues(pebble: Pebble, bind: Bind, tmp_path: Path) -> None:
    # The hook publishes with BIND's own nsupdate: it gets the account-scoped FQDN and the value, like dns-01.
    calls = tmp_path / "calls"
    hook = tmp_path / "dns-hook"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {calls}\n'
        'if [ "$1" = present ]; then op=add; else op=delete; fi\n'
        f"printf 'server {bind.address} {bind.port}\\nupdate %s %s 60 TXT \"%s\"\\nsend\\n' "
        f'"$op" "$2" "$3" | /usr/bin/nsupdate -k {bind.tsig_key_file}\n')
    hook.chmod(0o755)
    issuer = make_issuer(pebble, bind, tmp_path, challenge="dns-account-01", dns_server=None, dns_hook=hook)
    domain = unique(bind, "hook")

    issued = issuer.issue(request_for(domain))

    assert pki.subject_alternative_names(issued.certificate) == [domain]
    uri = issuer._directory(pebble.directory_url).account_uri()
    label = base64.b32encode(hashlib.sha256(uri.encode()).digest()[:10]).decode().lower()
    assert calls.read_text().splitlines() == [f"present _{label}._acme-challenge.{domain}.",
                                              f"cleanup _{label}._acme-challenge.{domain}."]


# --- dns-persist-01 ------------------------------------------------------------------------------------------


def write_config(path: Path, pebble: Pebble, bind: Bind, domain: str) -> Path:
    path.write_text(
        f'[certkeeper]\nstate_dir = "{path.parent / "state"}"\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{pebble.directory_url}"\nca_bundle = "{pebble.ca_file}"\n'
        f'challenge = "dns-persist-01"\ndns_server = "{bind.nameserver}"\n'
        f'[certificates.mail]\nissuer = "pebble"\ndomains = ["{domain}", "*.{domain}"]\n')
    return path


def test_dns_persist_01_issues_again_and_again_with_the_record_published_once(
        pebble: Pebble, bind: Bind, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = unique(bind, "persist")
    config = write_config(tmp_path / "certkeeper.toml", pebble, bind, domain)

    # Published once, by the administrator, with the zone's key; the issuer below has no key at all.
    assert main(["-c", str(config), "acme", "persist-record", "mail", "--publish", "--tsig-key-file",
                 str(bind.tsig_key_file)]) == 0
    printed = capsys.readouterr().out
    assert f'_validation-persist.{domain}. IN TXT "pebble.letsencrypt.org; accounturi=https://' in printed
    assert "policy=wildcard" in printed
    issuer = make_issuer(pebble, bind, tmp_path / "state", challenge="dns-persist-01")
    published = txt_at(bind, f"_validation-persist.{domain}")
    (account_uri,) = {line.split("accounturi=")[1].split(";")[0] for line in published}
    assert issuer._directory(pebble.directory_url).account_uri() == account_uri

    for _ in range(2):
        issued = issuer.issue(request_for(domain, f"*.{domain}"))
        assert sorted(pki.subject_alternative_names(issued.certificate)) == sorted([domain, f"*.{domain}"])


def test_dns_persist_01_without_the_record_fails_before_ordering(pebble: Pebble, bind: Bind, tmp_path: Path) -> None:
    domain = unique(bind, "nopersist")
    issuer = make_issuer(pebble, bind, tmp_path, challenge="dns-persist-01")
    orders = pebble.count_orders()

    with pytest.raises(IssuanceError, match=rf"dns-persist-01: _validation-persist\.{domain}\. on 127\.0\.0\.1: no "
                                            r"TXT record for issuer pebble\.letsencrypt\.org.*persist-record"):
        issuer.issue(request_for(domain))
    assert pebble.count_orders() == orders


def test_dns_persist_01_with_another_accounts_record_fails_naming_both_accounts(
        pebble: Pebble, bind: Bind, tmp_path: Path) -> None:
    domain = unique(bind, "otherpersist")
    other = "https://127.0.0.1/my-account/not-ours"
    keyring = dns.tsigkeyring.from_text({bind.tsig_key_name: (bind.tsig_algorithm, bind.tsig_secret)})
    update = dns.update.UpdateMessage(bind.zone, keyring=keyring, keyalgorithm=bind.tsig_algorithm)
    update.add(f"_validation-persist.{domain}.", 60, "TXT", f'"pebble.letsencrypt.org; accounturi={other}"')
    dns.query.tcp(update, bind.address, port=bind.port, timeout=5)
    issuer = make_issuer(pebble, bind, tmp_path, challenge="dns-persist-01")
    orders = pebble.count_orders()

    with pytest.raises(IssuanceError, match=rf"names accounturi={other}, but this account is https://127\.0\.0\.1"):
        issuer.issue(request_for(domain))
    assert pebble.count_orders() == orders


def test_a_persist_until_closer_than_the_warning_raises_an_alert_and_still_issues(
        pebble: Pebble, bind: Bind, tmp_path: Path) -> None:
    from certkeeper.app import build_app
    from certkeeper.config import load_config
    from certkeeper.testbed.server import allocate_port

    domain = unique(bind, "until")
    until = (pki.now_utc() + timedelta(days=10)).replace(microsecond=0)
    config_file = write_config(tmp_path / "certkeeper.toml", pebble, bind, domain)
    text = config_file.read_text().replace(
        'challenge = "dns-persist-01"\n',
        f'challenge = "dns-persist-01"\npersist_until = "{until.isoformat()}"\npersist_warning = "30d"\n'
        f'trust_roots = "{pebble.write_issuer_chain(tmp_path / "roots.pem")}"\n')
    config_file.write_text(text + f'[alerts]\nto = ["postmaster@example.test"]\nfrom = "ck@example.test"\n'
                                  f'smtp_host = "127.0.0.1"\nsmtp_port = {allocate_port()}\nsmtp_security = "none"\n')
    assert main(["-c", str(config_file), "acme", "persist-record", "mail", "--publish", "--tsig-key-file",
                 str(bind.tsig_key_file)]) == 0
    assert all(f"persistUntil={int(until.timestamp())}" in v for v in txt_at(bind, f"_validation-persist.{domain}"))
    app = build_app(load_config(config_file))
    try:
        assert [o.result for o in app.renewer.run(None)] == ["renewed"]
        alerts = [a for a in app.store.pending_alerts() if "dns-persist-01" in a.subject]
    finally:
        app.close()

    assert [a.severity for a in alerts] == ["WARNING"]
    assert alerts[0].subject == f"the dns-persist-01 record of mail ends {until:%Y-%m-%d %H:%M} UTC"
