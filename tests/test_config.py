"""The configuration: the example parses, and every kind of mistake is reported with file and key path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from certkeeper.config import AcmeIssuerConfig, CaIssuerConfig, load_config, parse_config
from certkeeper.errors import ConfigError
from certkeeper.model import KeyType, RenewBefore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "certkeeper.toml"

MINIMAL = """
[certkeeper]
state_dir = "/tmp/ck"

[issuers.internal]
type = "ca"
ca_dir = "/tmp/ck/ca"

[certificates.mail]
issuer = "internal"
domains = ["mail.example.org"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "certkeeper.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_example_config_parses_with_every_section() -> None:
    config = load_config(EXAMPLE)
    assert config.settings.check_interval == timedelta(hours=12)
    assert str(config.settings.renew_before) == "1/3"
    assert isinstance(config.issuers["letsencrypt"], AcmeIssuerConfig)
    assert isinstance(config.issuers["internal"], CaIssuerConfig)
    mail = config.certificates["mail"]
    assert mail.key_types == (KeyType.ECDSA_P256, KeyType.RSA_2048)
    assert [t.protocol for t in mail.endpoints] == ["smtps", "smtp", "imaps"]
    assert config.alerts is not None and config.alerts.sender == "certkeeper@mail.example.org"
    assert config.watch[0].name == "partner-mx"
    mta = config.mta_sts["example.org"]
    assert (mta.mode, mta.max_age, mta.certificates, mta.rua) == ("testing", 604800, ("relay",),
                                                                  ("mailto:tls-reports@example.org",))


def test_defaults_fill_a_minimal_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    mail = config.certificates["mail"]
    assert mail.key_types == (KeyType.ECDSA_P256,)
    assert config.settings.keep_versions == 5
    assert config.alerts is None


# Each case: a change to the minimal config, the key path the error must name, and words it must say.
MISTAKES = [
    ("unknown issuer", 'issuer = "internal"', 'issuer = "internl"',
     "certificates.mail.issuer", 'found \'internl\'.*did you mean "internal"'),
    ("misspelled key", 'domains = ["mail.example.org"]', 'domain = ["mail.example.org"]',
     "certificates.mail.domain", 'unknown key.*did you mean "domains"'),
    ("bad duration", '', 'check_interval = "12 hours"',
     "certkeeper.check_interval", "expected a duration"),
    ("bad renew_before", '', 'renew_before = "3/2"',
     "certkeeper.renew_before", "fraction of the lifetime"),
    ("unknown key type", 'domains = ["mail.example.org"]', 'domains = ["mail.example.org"]\nkey_types = ["ed25519"]',
     r"certificates.mail.key_types\[0\]", "one or two of ecdsa-p256"),
    ("unsafe certificate name", "[certificates.mail]", '[certificates."../etc"]',
     "certificates.../etc", "names become directory names"),
    ("wrong type", '', 'concurrency = "four"',
     "certkeeper.concurrency", "found string 'four', expected a whole number"),
    ("bad endpoint", 'domains = ["mail.example.org"]', 'domains = ["mail.example.org"]\nendpoints = ["smtpx://m:25"]',
     r"certificates.mail.endpoints\[0\]", "unknown scheme"),
    ("bad domain", '"mail.example.org"]', '"mail..example.org"]',
     r"certificates.mail.domains\[0\]", "a DNS host name"),
    ("password in the file", "", "",
     "alerts.smtp_password", "secrets live in files"),
    ("wildcard with http-01", "", "",
     r"certificates.web.domains\[0\]", "only with an issuer whose challenge is dns-01"),
    ("issuer type", 'type = "ca"', 'type = "acme2"',
     "issuers.internal.type", 'one of "acme", "ca"'),
    ("two ecdsa key types", 'domains = ["mail.example.org"]',
     'domains = ["mail.example.org"]\nkey_types = ["ecdsa-p256", "ecdsa-p384"]',
     "certificates.mail.key_types", "two of different families"),
    ("dns-01 without a way to publish", "", "",
     "issuers.le.challenge", "dns_server and tsig_key_file"),
    ("bad smtp_security", "", "",
     "alerts.smtp_security", 'one of "none", "starttls", "tls"'),
    ("mta-sts mode", "", "", r"mta_sts.example.org.mode", 'one of "enforce", "testing", "none"'),
    ("mta-sts mx pattern", "", "", r"mta_sts.example.org.mx\[0\]", "wildcard is allowed only as the whole first"),
    ("mta-sts max_age", "", "", r"mta_sts.example.org.max_age", "seconds from 0 to 31557600"),
    ("mta-sts no way to serve", "", "", r"mta_sts.example.org.webroot", "neither webroot nor serve"),
    ("mta-sts serve certificate", "", "", r"mta_sts.example.org.certificate",
     "a certificate whose domains include mta-sts.example.org"),
    ("mta-sts unknown certificate", "", "", r"mta_sts.example.org.certificates\[0\]", 'did you mean "mail"'),
    ("mta-sts rua", "", "", r"mta_sts.example.org.rua\[0\]", 'a "mailto:" or "https://" URI'),
    ("bad smtp_tls_fallback", "", "",
     "alerts.smtp_tls_fallback", 'one of "none", "unverified-no-auth"'),
    ("a password in clear", "", "",
     "alerts.smtp_security", "the password would cross the network in clear"),
    ("acme directory over plain http", "", "",
     "issuers.le.directory", "found 'http://acme.example/dir', expected an https:// URL"),
    ("missing certificate ca_file", 'domains = ["mail.example.org"]',
     'domains = ["mail.example.org"]\nca_file = "/nonexistent/roots.pem"',
     "certificates.mail.ca_file", "does not exist or is not a file"),
    ("warn_days beyond ten years", "", "", "alerts.warn_days",
     "found list \\[300000000\\], expected a list of whole numbers from 1 to 3660"),
    ("watch warn_days beyond ten years", "", "", r"watch\[0\].warn_days", "a list of whole numbers from 1 to 3660"),
    ("dane ttl beyond 2**31-1", 'domains = ["mail.example.org"]',
     'domains = ["mail.example.org"]\ndane = { zone = "example.org", ttl = 5000000000 }',
     "certificates.mail.dane.ttl", "found 5000000000, expected a whole number from 1 to 2147483647"),
    ("dane unsafe_rollover_days", 'domains = ["mail.example.org"]',
     'domains = ["mail.example.org"]\ndane = { zone = "example.org", unsafe_rollover_days = 1000000000 }',
     "certificates.mail.dane.unsafe_rollover_days", "expected a whole number from 0 to 3660"),
    ("dane port beyond 65535", 'domains = ["mail.example.org"]',
     'domains = ["mail.example.org"]\ndane = { zone = "example.org", ports = [25, 99999999999] }',
     "certificates.mail.dane.ports", "expected a list of TCP ports from 1 to 65535"),
    ("mta-sts ttl", "", "", r"mta_sts.example.org.ttl", "expected a whole number from 1 to 2147483647"),
    ("an integer beyond 2**31-1", "", "keep_versions = 99999999999999999999",
     "certkeeper.keep_versions", "expected a whole number from 1 to 2147483647"),
    ("empty state_dir", 'state_dir = "/tmp/ck"', 'state_dir = ""',
     "certkeeper.state_dir", 'found an empty string, expected an absolute path, starting with "/"'),
    ("relative state_dir", 'state_dir = "/tmp/ck"', 'state_dir = "relative/state"',
     "certkeeper.state_dir", 'found "relative/state", a relative path, expected an absolute path'),
    ("relative ca_dir", 'ca_dir = "/tmp/ck/ca"', 'ca_dir = "ca"',
     "issuers.internal.ca_dir", 'found "ca", a relative path'),
    ("empty passphrase_file", 'ca_dir = "/tmp/ck/ca"', 'ca_dir = "/tmp/ck/ca"\npassphrase_file = ""',
     "issuers.internal.passphrase_file", "found an empty string, expected an absolute path"),
    ("relative hooks_dir", "", 'hooks_dir = "hooks"', "certkeeper.hooks_dir", 'found "hooks", a relative path'),
]

_MTA = '\n[mta_sts."example.org"]\n'

EXTRA = {
    "password in the file": '\n[alerts]\nto = ["a@example.org"]\nfrom = "b@example.org"\nsmtp_password = "x"\n',
    "wildcard with http-01": '\n[issuers.le]\ntype = "acme"\ndirectory = "https://acme.example/dir"\n'
                             '[certificates.web]\nissuer = "le"\ndomains = ["*.example.org"]\n',
    "dns-01 without a way to publish": '\n[issuers.le]\ntype = "acme"\ndirectory = "https://acme.example/dir"\n'
                                       'challenge = "dns-01"\n',
    "bad smtp_security": '\n[alerts]\nto = ["a@example.org"]\nfrom = "b@example.org"\nsmtp_security = "ssl"\n',
    "mta-sts mode": _MTA + 'mode = "strict"\nwebroot = "/var/www/mta-sts"\n',
    "mta-sts mx pattern": _MTA + 'mx = ["mail.*.example.org"]\nwebroot = "/var/www/mta-sts"\n',
    "mta-sts max_age": _MTA + 'max_age = 40000000\nwebroot = "/var/www/mta-sts"\n',
    "mta-sts no way to serve": _MTA + 'mode = "enforce"\n',
    "mta-sts serve certificate": _MTA + 'serve = "127.0.0.1:8443"\ncertificate = "mail"\n',
    "mta-sts unknown certificate": _MTA + 'certificates = ["mial"]\nwebroot = "/var/www/mta-sts"\n',
    "mta-sts rua": _MTA + 'rua = ["tls@example.org"]\nwebroot = "/var/www/mta-sts"\n',
    "bad smtp_tls_fallback": '\n[alerts]\nto = ["a@example.org"]\nfrom = "b@example.org"\n'
                             'smtp_tls_fallback = "unverified"\n',
    "acme directory over plain http": '\n[issuers.le]\ntype = "acme"\ndirectory = "http://acme.example/dir"\n',
    "warn_days beyond ten years": '\n[alerts]\nto = ["a@example.org"]\nfrom = "b@example.org"\n'
                                  'warn_days = [300000000]\n',
    "watch warn_days beyond ten years": '\n[[watch]]\nendpoints = ["smtp://mx.example.org:25"]\n'
                                        'warn_days = [14, 4000]\n',
    "mta-sts ttl": _MTA + 'ttl = 5000000000\nwebroot = "/var/www/mta-sts"\n',
    "a password in clear": '\n[alerts]\nto = ["a@example.org"]\nfrom = "b@example.org"\nsmtp_security = "none"\n'
                           'smtp_username = "u"\nsmtp_password_file = "/etc/certkeeper/smtp.pass"\n',
}


@pytest.mark.parametrize(("case", "old", "new", "key_path", "words"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_located_and_explained(
    tmp_path: Path, case: str, old: str, new: str, key_path: str, words: str
) -> None:
    text = MINIMAL
    if old:
        assert old in text
        text = text.replace(old, new, 1)
    elif new:
        text = text.replace('state_dir = "/tmp/ck"', 'state_dir = "/tmp/ck"\n' + new)
    text += EXTRA.get(case, "")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: {key_path}: .*{words}"):
        load_config(path)


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    text = MINIMAL.replace('issuer = "internal"', 'issuer = "nope"').replace("[certkeeper]", "[certkeeper]\nfoo = 1")
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert "certificates.mail.issuer" in str(raised.value)
    assert "certkeeper.foo" in str(raised.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[certkeeper\n")
    with pytest.raises(ConfigError, match=rf"{path}: found invalid TOML"):
        load_config(path)


def test_toml_nested_too_deeply_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=rf"{path}: found TOML nested too deeply to be read"):
        load_config(path)


def test_renew_before_caps_fixed_durations_at_half_the_lifetime() -> None:
    assert RenewBefore.parse("30d").before_expiry(timedelta(days=90)) == timedelta(days=30)
    assert RenewBefore.parse("30d").before_expiry(timedelta(days=6)) == timedelta(days=3)
    assert RenewBefore.parse("1/3").before_expiry(timedelta(days=6)) == timedelta(days=2)


def test_parse_config_takes_plain_data() -> None:
    config = parse_config(
        {"issuers": {"x": {"type": "ca", "ca_dir": "/ca"}},
         "certificates": {"m": {"issuer": "x", "domains": ["m.example.org"]}}},
        Path("inline.toml"),
    )
    assert config.certificates["m"].issuer == "x"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_config_check_exits_78_with_the_located_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"internal"\ndomains', '"internl"\ndomains'))
    result = run_cli("config", "check", "-c", str(path))
    assert result.returncode == 78
    assert f"{path}: certificates.mail.issuer" in result.stderr


def test_config_check_prints_resolved_settings_with_secrets_masked(tmp_path: Path) -> None:
    fleet_key = tmp_path / "fleet.key"
    fleet_key.write_text("k" * 64)
    fleet_key.chmod(0o600)
    text = MINIMAL.replace('state_dir = "/tmp/ck"',
                           'state_dir = "/tmp/ck"\ndatabase = "postgresql://ck:hunter2@db/ck"\n'
                           f'fleet_key_file = "{fleet_key}"')
    result = run_cli("-c", str(write(tmp_path, text)), "config", "check")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "postgresql://ck:***@db/ck" in result.stdout
    assert "keep_versions = 5" in result.stdout


def test_config_path_comes_from_the_environment(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, CERTKEEPER_CONFIG=str(write(tmp_path, MINIMAL)))
    assert run_cli("config", "check", env=env).returncode == 0


def test_version_matches_package_metadata() -> None:
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.stdout.strip() == f"certkeeper {version('certkeeper')}"


def test_config_check_finds_what_renew_would_not_hooks_groups_and_secret_files(tmp_path: Path) -> None:
    """Everything a configuration names on this machine is looked up, and each miss is reported at once."""
    loose_hook = tmp_path / "loose-hook"
    loose_hook.write_text("#!/bin/sh\n")
    loose_hook.chmod(0o777)
    open_secret = tmp_path / "smtp.pass"
    open_secret.write_text("s3cret\n")
    open_secret.chmod(0o644)
    text = MINIMAL.replace('domains = ["mail.example.org"]',
                           'domains = ["mail.example.org"]\n'
                           f'reload = ["dovecott", "/usr/local/bin/nope", "{loose_hook}"]\ngroup = "postfixx"')
    text += (f'\n[alerts]\nto = ["postmaster@example.org"]\nfrom = "certkeeper@example.org"\n'
             f'smtp_username = "ck"\nsmtp_password_file = "{open_secret}"\n')
    text = text.replace('type = "ca"', f'type = "ca"\npassphrase_file = "{tmp_path / "ca.pass"}"')
    result = run_cli("-c", str(write(tmp_path, text)), "config", "check")
    assert result.returncode == 78
    lines = result.stderr
    assert 'certificates.mail.reload: found hook "dovecott", which is not in' in lines
    assert 'certificates.mail.reload: found hook "/usr/local/bin/nope", which does not exist' in lines
    assert f'certificates.mail.reload: found hook "{loose_hook}" with mode 0777, writable by others' in lines
    assert 'certificates.mail.group: found group "postfixx", which does not exist on this machine' in lines
    assert f"alerts.smtp_password_file: found {open_secret}: mode 0644, expected a secret file no wider than " \
           f"0640; chmod 600 {open_secret}" in lines
    assert f"issuers.internal.passphrase_file: found {tmp_path / 'ca.pass'}: no such file" in lines
    assert "s3cret" not in lines + result.stdout
