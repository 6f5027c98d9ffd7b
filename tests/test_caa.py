"""CAA pre-flight (RFC 8659, RFC 8657): the rules pure, then against BIND serving the records and Pebble 2.10
counting its orders (a forbidding record must stop the order before it is placed)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import dns.query
import dns.tsigkeyring
import dns.update
import pytest

from certkeeper import pki
from certkeeper.config import AcmeIssuerConfig
from certkeeper.config.load import caa_resolver_for
from certkeeper.errors import ConfigError, IssuanceError
from certkeeper.issuers.acme import AcmeIssuer
from certkeeper.issuers.base import IssueRequest
from certkeeper.issuers.caa import judge_caa, parse_caa, relevant_caa
from certkeeper.model import KeyType
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble
from certkeeper.values import replace
from tests.configs import acme_issuer_config

CA = ("pebble.letsencrypt.org",)
ME = "https://ca.example/acct/1"


def lookup_in(zone: dict[str, list[str]]) -> Any:
    def lookup(name: str) -> Sequence[str]:
        return zone.get(name, [])
    return lookup


def verdict(zone: dict[str, list[str]], name: str, *, challenge: str = "http-01") -> Any:
    owner, records = relevant_caa(name, lookup_in(zone))
    return judge_caa(name, owner, records, issuer_domain_names=CA, account_uri=ME, challenge=challenge)


def test_the_relevant_set_is_the_closest_one_up_the_tree() -> None:
    zone = {"example.org.": ['0 issue "letsencrypt.org"'], "mx.example.org.": ['0 issue "pebble.letsencrypt.org"']}
    assert relevant_caa("mail.mx.example.org", lookup_in(zone))[0] == "mx.example.org."
    assert relevant_caa("*.example.org", lookup_in(zone))[0] == "example.org."
    assert relevant_caa("other.test", lookup_in(zone)) == ("", ())


def test_caa_rules() -> None:
    assert verdict({}, "mail.example.org").allowed  # no CAA anywhere: any CA
    assert verdict({"example.org.": ['0 iodef "mailto:sec@example.org"']}, "mail.example.org").allowed
    assert not verdict({"example.org.": ['0 issue ";"']}, "mail.example.org").allowed
    assert not verdict({"example.org.": ['128 tbs "x"', '0 issue "pebble.letsencrypt.org"']}, "a.example.org").allowed
    wild = {"example.org.": ['0 issue "pebble.letsencrypt.org"', '0 issuewild ";"']}
    assert verdict(wild, "example.org").allowed and not verdict(wild, "*.example.org").allowed
    methods = {"example.org.": ['0 issue "pebble.letsencrypt.org; validationmethods=dns-01"']}
    assert verdict(methods, "example.org", challenge="dns-01").allowed
    refused = verdict(methods, "example.org")
    assert "validationmethods=dns-01, not http-01" in str(refused.problem)
    account = {"example.org.": [f'0 issue "pebble.letsencrypt.org; accounturi={ME}"']}
    assert verdict(account, "example.org").allowed
    assert parse_caa('0 issue "letsencrypt.org; accounturi=x"') is not None


# --- the default: on for public CAs (resolved at load time, nothing asked) ---------------------------------


LE = "https://acme-v02.api.letsencrypt.org/directory"
PRIVATE = "https://acme.internal.example/directory"


def test_the_preflight_is_on_by_default_for_public_cas_and_off_for_others() -> None:
    assert caa_resolver_for(LE, caa=None, resolver=None) == "system"
    assert caa_resolver_for("https://acme-staging-v02.api.letsencrypt.org/directory", caa=None, resolver=None) \
        == "system"
    assert caa_resolver_for("https://acme.zerossl.com/v2/DV90", caa=None, resolver=None) == "system"
    assert caa_resolver_for("https://dv.acme-v02.api.pki.goog/directory", caa=None, resolver=None) == "system"
    assert caa_resolver_for(PRIVATE, caa=None, resolver=None) is None
    assert caa_resolver_for("https://127.0.0.1:14000/dir", caa=None, resolver=None) is None


def test_caa_resolver_or_caa_true_turns_it_on_and_caa_false_off() -> None:
    assert caa_resolver_for(PRIVATE, caa=None, resolver="192.0.2.53:5353") == "192.0.2.53:5353"
    assert caa_resolver_for(LE, caa=None, resolver="192.0.2.53") == "192.0.2.53"
    assert caa_resolver_for(PRIVATE, caa=True, resolver=None) == "system"
    assert caa_resolver_for(LE, caa=False, resolver=None) is None


def test_the_configuration_resolves_the_default_and_refuses_caa_false_with_a_resolver(tmp_path: Path) -> None:
    assert acme_issuer_config(tmp_path, LE).caa_resolver == "system"
    assert acme_issuer_config(tmp_path, LE, "caa = false").caa_resolver is None
    assert acme_issuer_config(tmp_path, PRIVATE).caa_resolver is None
    assert acme_issuer_config(tmp_path, PRIVATE, "caa = true").caa_resolver == "system"
    with pytest.raises(ConfigError, match=r"issuers\.ca\.caa.*false while caa_resolver is set"):
        acme_issuer_config(tmp_path, LE, 'caa = false\ncaa_resolver = "system"')


# --- against BIND and Pebble -------------------------------------------------------------------------------


def publish_caa(bind: Bind, name: str, *values: str) -> None:
    keyring = dns.tsigkeyring.from_text({bind.tsig_key_name: (bind.tsig_algorithm, bind.tsig_secret)})
    update = dns.update.UpdateMessage(bind.zone, keyring=keyring, keyalgorithm=bind.tsig_algorithm)
    for value in values:
        update.add(name, 60, "CAA", value)
    update.add(name, 60, "A", "127.0.0.1")  # Pebble validates http-01 at the name
    dns.query.tcp(update, bind.address, port=bind.port, timeout=5)


def make_issuer(pebble: Pebble, bind: Bind, state: Path, **overrides: Any) -> AcmeIssuer:
    config = AcmeIssuerConfig(name="pebble", directory=pebble.directory_url, ca_bundle=pebble.ca_file,
                              http_address="127.0.0.1", http_port=pebble.http_port, caa_resolver=bind.nameserver,
                              timeout=timedelta(seconds=60))
    return AcmeIssuer(replace(config, **overrides), state)


def request_for(*domains: str) -> IssueRequest:
    return IssueRequest(certificate="mail", domains=domains, key=pki.generate_key(KeyType.ECDSA_P256),
                        key_type=KeyType.ECDSA_P256)


def unique(bind: Bind) -> str:
    return f"caa-{secrets.token_hex(4)}.{bind.zone}"


@pytest.mark.testbed
def test_caa_forbidding_the_ca_stops_the_order_before_it_is_placed(pebble: Pebble, bind: Bind,
                                                                   tmp_path: Path) -> None:
    parent = unique(bind)
    publish_caa(bind, parent, '0 issue "letsencrypt.org"')
    orders = pebble.count_orders()

    with pytest.raises(IssuanceError, match=rf'mail\.{parent[:-1]}: CAA at {parent} does not allow '
                                            rf'pebble\.letsencrypt\.org to issue \("{parent} CAA 0 issue '
                                            r'"letsencrypt\.org""\); add ".*CAA 0 issue \\"pebble\.letsencrypt') \
            as refused:
        make_issuer(pebble, bind, tmp_path).issue(request_for(f"mail.{parent[:-1]}"))
    assert refused.value.problem_type == "urn:ietf:params:acme:error:caa"
    assert pebble.count_orders() == orders


@pytest.mark.testbed
def test_caa_naming_another_account_stops_the_order_and_ours_lets_it_through(pebble: Pebble, bind: Bind,
                                                                             tmp_path: Path) -> None:
    issuer = make_issuer(pebble, bind, tmp_path)
    ours = issuer._directory(pebble.directory_url).account_uri()
    other_name, our_name = unique(bind), unique(bind)
    publish_caa(bind, other_name, '0 issue "pebble.letsencrypt.org; accounturi=https://127.0.0.1/my-account/x"')
    publish_caa(bind, our_name, f'0 issue "pebble.letsencrypt.org; accounturi={ours}; validationmethods=http-01"')
    orders = pebble.count_orders()

    with pytest.raises(IssuanceError, match=rf"names accounturi=https://127\.0\.0\.1/my-account/x, but this "
                                            rf"account is {ours}"):
        issuer.issue(request_for(other_name[:-1]))
    assert pebble.count_orders() == orders
    issued = issuer.issue(request_for(our_name[:-1]))
    assert pki.subject_alternative_names(issued.certificate) == [our_name[:-1]]
    assert pebble.count_orders() == orders + 1


@pytest.mark.testbed
def test_doctor_and_check_caa_report_what_the_order_would_meet(pebble: Pebble, bind: Bind, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from certkeeper.cli import main

    forbidden, allowed = unique(bind), unique(bind)
    publish_caa(bind, forbidden, '0 issue "letsencrypt.org"')
    config = tmp_path / "certkeeper.toml"
    config.write_text(
        f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{pebble.directory_url}"\nca_bundle = "{pebble.ca_file}"\n'
        f'caa_resolver = "{bind.nameserver}"\n'
        f'[certificates.mail]\nissuer = "pebble"\ndomains = ["{forbidden[:-1]}", "{allowed[:-1]}"]\n')
    expected = (f'{forbidden[:-1]}: CAA at {forbidden} does not allow pebble.letsencrypt.org to issue '
                f'("{forbidden} CAA 0 issue "letsencrypt.org"")')

    assert main(["-c", str(config), "check", "--caa"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"CAA CRITICAL - mail: {expected}")
    assert lines[1] == f"CAA OK - mail: {allowed[:-1]}: allowed (no CAA record up to the root)"

    main(["-c", str(config), "doctor", "--no-probe", "--postfix-config", str(tmp_path / "none")])
    report = capsys.readouterr().out
    assert f"PROBLEM caa-forbids-issuance: mail: {expected}" in report
    assert f"mail: {allowed[:-1]}: allowed (no CAA record up to the root)" in report
