"""From certbot to certkeeper: real certbot (PyPI) issues three lineages from the test bed's Pebble, certkeeper
takes them over without ordering, then renews each through the same Pebble under certbot's own account."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from certkeeper import pki
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.store.versions import CertificateHome
from certkeeper.targets import parse_target
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix

CERTBOT = Path(sys.executable).parent / "certbot"
LINEAGES = {  # name -> certbot's key options
    "mail.example.test": ["--key-type", "ecdsa"],
    "rsa.example.test": ["--key-type", "rsa"],
    "reuse.example.test": ["--key-type", "ecdsa", "--reuse-key"],
}


def certbot_issue(pebble: Pebble, letsencrypt: Path, hook: Path) -> None:
    for name, options in LINEAGES.items():
        done = subprocess.run(
            [str(CERTBOT), "certonly", "--non-interactive", "--agree-tos", "-m", "hostmaster@example.test",
             "--server", pebble.directory_url, "--standalone", "--http-01-port", str(pebble.http_port),
             "--http-01-address", "127.0.0.1", "--config-dir", str(letsencrypt), "--work-dir",
             str(letsencrypt.parent / "certbot-work"), "--logs-dir", str(letsencrypt.parent / "certbot-logs"),
             "--deploy-hook", str(hook), "-d", name, *options],
            env=pebble.client_env(), check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"certbot could not issue {name}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


def pebble_counts(pebble: Pebble) -> tuple[int, int]:
    """(accounts Pebble holds, orders it was asked for), from its own log."""
    log = pebble.log_path.read_text()
    accounts = [int(n) for n in re.findall(r"There are now (\d+) accounts in memory", log)]
    return (max(accounts) if accounts else 0), len(re.findall(r"Added order \S+ to the db", log))


def run_certkeeper(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=300)


def test_certbot_lineages_are_taken_over_and_renewed_under_certbot_s_account(
    tmp_path: Path, pebble_factory: Callable[..., Pebble], postfix_factory: Callable[..., Postfix],
) -> None:
    # A Pebble of this test's own: its log counts only this test's accounts and orders.  Without Pebble's random
    # badNonce rejections: certbot (the peer whose lineages are taken over, not the code under test) retries a
    # rejected nonce only once, so two in a row (one order in ~400 at Pebble's default 5 %) failed its issuance.
    pebble = pebble_factory(nonce_reject_percent=0)
    letsencrypt = tmp_path / "letsencrypt"
    deployed = tmp_path / "deployed.log"
    hook = tmp_path / "deploy-hook"
    hook.write_text(f'#!/bin/sh\necho "$RENEWED_LINEAGE" >> {deployed}\n')
    hook.chmod(0o755)
    certbot_issue(pebble, letsencrypt, hook)
    deployed.unlink()  # certbot's own runs of the hook
    accounts, orders = pebble_counts(pebble)
    assert accounts == 1 and orders == 3

    config = tmp_path / "certkeeper.toml"
    roots = pebble.write_issuer_chain(tmp_path / "pebble-roots.pem")
    config.write_text(
        f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\nverify_timeout = "20s"\n\n'
        f'[issuers.pebble]\ntype = "acme"\ndirectory = "{pebble.directory_url}"\nchallenge = "http-01"\n'
        f'http_address = "127.0.0.1"\nhttp_port = {pebble.http_port}\nca_bundle = "{pebble.ca_file}"\n'
        f'trust_roots = "{roots}"\n')

    dry = run_certkeeper(config, "import", "certbot", str(letsencrypt), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert '[certificates."rsa.example.test"]' in dry.stdout and 'key_types = ["rsa-2048"]' in dry.stdout
    assert "[issuers." not in dry.stdout  # the configured issuer for that directory is reused
    assert "reuse_key = true" in dry.stdout and json.dumps([str(hook)]) in dry.stdout
    assert "certificates" not in config.read_text()

    done = run_certkeeper(config, "import", "certbot", str(letsencrypt))
    assert done.returncode == 0, done.stderr
    assert "systemctl disable --now certbot.timer" in done.stderr
    assert pebble_counts(pebble) == (1, 3)  # nothing ordered, no account registered
    state = tmp_path / "state"
    [account_json] = (state / "accounts" / "pebble").glob("*/account.json")
    [regr] = letsencrypt.glob("accounts/*/*/*/regr.json")
    assert json.loads(account_json.read_text())["uri"] == json.loads(regr.read_text())["uri"]
    assert stat.S_IMODE((account_json.parent / "account.key").stat().st_mode) == 0o600
    imported = {}
    for name in LINEAGES:
        current = CertificateHome(state, name).current()
        certbot_cert = pki.load_certificates((letsencrypt / "live" / name / "cert.pem").read_bytes())[0]
        assert current is not None and current.pairs[0].fingerprint == pki.fingerprint(certbot_cert)
        imported[name] = current

    postfix = postfix_factory()
    mail_current = state / "certs" / "mail.example.test" / "current"
    postfix.postconf(smtpd_tls_chain_files=str(mail_current / "combined.pem"))
    postfix.reload()
    endpoint = f"smtp://127.0.0.1:{postfix.ports['smtp']}"
    text = config.read_text().replace(
        '[certificates."mail.example.test"]\n',
        f'[certificates."mail.example.test"]\nreload = ["postfix"]\nendpoints = ["{endpoint}"]\n'
        f'hook_env = {{ POSTFIX_CONFIG_DIR = "{postfix.config_dir}" }}\n')
    config.write_text(text)

    renewed = run_certkeeper(config, "renew", "--force")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    accounts, orders = pebble_counts(pebble)
    # One new order per certificate and still one account: every order went under certbot's (whose valid
    # authorizations Pebble even reused, as a CA does only for the account that holds them).
    assert (accounts, orders) == (1, 6)
    for name in LINEAGES:
        current = CertificateHome(state, name).current()
        assert current is not None and current.id != imported[name].id
    home = CertificateHome(state, "reuse.example.test")
    reused = home.current()
    assert reused is not None
    assert pki.key_matches(pki.load_key((letsencrypt / "live" / "reuse.example.test" / "privkey.pem").read_bytes()),
                           pki.load_certificates((reused.pairs[0].directory / "cert.pem").read_bytes())[0])
    rsa = CertificateHome(state, "rsa.example.test").current()
    assert rsa is not None and rsa.pairs[0].key_type == "rsa-2048"
    # certbot-style deploy hooks: once per certificate (one key type each), RENEWED_LINEAGE its current folder
    assert sorted(deployed.read_text().split()) == sorted(str(state / "certs" / n / "current") for n in LINEAGES)
    mail = CertificateHome(state, "mail.example.test").current()
    assert mail is not None
    [served] = probe_sync([parse_target(endpoint)], ProbeOptions(timeout=10), now=pki.now_utc())
    assert served.certificate is not None and served.certificate.fingerprint_sha256 == mail.pairs[0].fingerprint


def test_a_folder_that_is_not_certbot_s_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "certkeeper.toml"
    done = run_certkeeper(config, "import", "certbot", str(tmp_path / "nothing"))
    assert done.returncode == 65
    assert f"{tmp_path / 'nothing'}: no renewal/ folder: not a certbot configuration directory" in done.stderr
    assert not config.exists()


def hand_made_certbot(root: Path, private_key_json: str, *, key: object = None, ca: bool = False) -> Path:
    """certbot's layout for one lineage and its account, written by hand (what is tested is what certkeeper reads
    before it writes anything, which needs no certbot run): live/ links into archive/, a renewal file, an account."""
    from certkeeper.testbed.certs import TestCA, key_to_pem

    letsencrypt = root / "letsencrypt"
    leaf = TestCA().intermediate().issue(["mail.example.test"], key=key)  # type: ignore[arg-type]
    archive, live = letsencrypt / "archive" / "mail", letsencrypt / "live" / "mail"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    chain = leaf.fullchain_pem[len(leaf.cert_pem):]
    pem = {"cert": leaf.cert_pem, "chain": chain, "fullchain": leaf.fullchain_pem, "privkey": leaf.key_pem}
    if ca:  # a CA's certificate and key where the server's belong
        authority = TestCA("not a server")
        pem.update(cert=authority.cert_pem, fullchain=authority.cert_pem, privkey=key_to_pem(authority.key))
    for stem, data in pem.items():
        (archive / f"{stem}1.pem").write_bytes(data)
        (live / f"{stem}.pem").symlink_to(f"../../archive/mail/{stem}1.pem")
    (letsencrypt / "renewal").mkdir()
    (letsencrypt / "renewal" / "mail.conf").write_text(
        f"version = 2.11.0\ncert = {live}/cert.pem\nprivkey = {live}/privkey.pem\nchain = {live}/chain.pem\n"
        f"fullchain = {live}/fullchain.pem\n\n[renewalparams]\naccount = abc123\nauthenticator = standalone\n"
        "server = https://127.0.0.1:14000/dir\nkey_type = ecdsa\n")
    account = letsencrypt / "accounts" / "127.0.0.1:14000" / "dir" / "abc123"
    account.mkdir(parents=True)
    (account / "regr.json").write_text('{"body": {}, "uri": "https://127.0.0.1:14000/my-account/1"}')
    (account / "private_key.json").write_text(private_key_json)
    return letsencrypt


def test_an_account_key_certkeeper_cannot_take_fails_the_import_before_anything_is_written(tmp_path: Path) -> None:
    config = tmp_path / "certkeeper.toml"
    original = f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\n'
    config.write_text(original)
    for key, says in (('[1, 2]', "private_key.json holds no JWK object"),
                      ('{"kty": "oct", "k": "c2VjcmV0"}', "certbot account key: unsupported JWK key type 'oct'")):
        letsencrypt = hand_made_certbot(tmp_path / key[:2], key)
        for dry_run in ((), ("--dry-run",)):
            done = run_certkeeper(config, "import", "certbot", str(letsencrypt), *dry_run)
            assert done.returncode == 65, done.stdout + done.stderr
            assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert done.stdout == ""  # the dry run shows no TOML that the import would not write
    assert config.read_text() == original  # no [certificates] for a lineage whose account was not taken over
    assert not (tmp_path / "state" / "certs").exists()


def test_an_acme_server_over_plain_http_is_refused_by_the_dry_run_too(tmp_path: Path) -> None:
    letsencrypt = hand_made_certbot(tmp_path, "{}")
    renewal = letsencrypt / "renewal" / "mail.conf"
    renewal.write_text(renewal.read_text().replace("server = https://", "server = http://"))
    config = tmp_path / "certkeeper.toml"
    for dry_run in ((), ("--dry-run",)):
        done = run_certkeeper(config, "import", "certbot", str(letsencrypt), *dry_run)
        assert done.returncode == 78, done.stdout + done.stderr
        assert "directory: found 'http://127.0.0.1:14000/dir', expected an https:// URL" in done.stderr
    assert not config.exists()


def test_a_configuration_path_that_is_a_folder_is_named(tmp_path: Path) -> None:
    config = tmp_path / "certkeeper.toml"
    config.mkdir()
    done = run_certkeeper(config, "import", "certbot", str(hand_made_certbot(tmp_path, "{}")), "--dry-run")
    assert done.returncode == 78
    assert f"{config}: found a file that cannot be read (Is a directory), expected a readable configuration file" \
        in done.stderr


def test_a_lineage_of_an_unsupported_key_type_or_with_a_ca_certificate_is_refused_naming_it(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    config = tmp_path / "certkeeper.toml"
    cases = (
        (dict(key=ec.generate_private_key(ec.SECP521R1())), "privkey.pem holds a key of type ecdsa-p521, which "
         "certkeeper does not issue for; supported key types: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"),
        (dict(key=rsa.generate_private_key(public_exponent=65537, key_size=1024)),
         "privkey.pem holds a key of type rsa-1024"),
        (dict(ca=True), "cert.pem is a CA certificate (basicConstraints CA:TRUE), not a server certificate"),
    )
    for i, (how, says) in enumerate(cases):
        letsencrypt = hand_made_certbot(tmp_path / str(i), "{}", **how)  # type: ignore[arg-type]
        for dry_run in ((), ("--dry-run",)):
            done = run_certkeeper(config, "import", "certbot", str(letsencrypt), *dry_run)
            assert done.returncode == 65, done.stdout + done.stderr
            assert f"{letsencrypt / 'live' / 'mail'}: lineage mail: {says}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and done.stdout == ""
    assert not config.exists()
