"""``certkeeper doctor``: each broken configuration is named with its exact fix.

Two layers: the pure judgement fed with postconf/doveconf-style text (read by the real parsers) and real files
under ``tmp_path``; then real Postfix instances of the test bed, started broken, diagnosed through the CLI
with probing.  Dovecot's part uses the real ``doveconf`` on a configuration written here.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certkeeper.cli import main
from certkeeper.mailserver import doctor
from certkeeper.mailserver.config import PostfixConfig, parse_doveconf, parse_master, parse_settings, read_dovecot
from certkeeper.mailserver.rules import Diagnosis, protocol_floor
from certkeeper.mailserver.tlsfiles import read_file
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.testbed.certs import LeafCertificate, TestCA

HOSTNAME = "mail.example.test"


def now() -> datetime:
    """The time of the call: the test bed's certificates are valid from 5 minutes before they were made, and a
    module-level constant taken at collection is older than that by the time a slow run reaches these tests."""
    return datetime.now(UTC)


def _codes(report: doctor.Report) -> set[str]:
    return {d.code for d in report.diagnoses}


def _one(report: doctor.Report, code: str) -> Diagnosis:
    found = [d for d in report.diagnoses if d.code == code]
    assert len(found) == 1, (code, doctor.render_text(report))
    return found[0]


def _postfix(main_cf: str, master: str = "", parameters: str = "", config_dir: str = "/etc/postfix") -> PostfixConfig:
    explicit = parse_settings(textwrap.dedent(main_cf))
    effective = {"smtpd_tls_protocols": ">=TLSv1.2", "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
                 "smtpd_banner": f"{HOSTNAME} ESMTP Postfix", "myhostname": HOSTNAME,
                 "inet_interfaces": "127.0.0.1", **explicit}
    return PostfixConfig(Path(config_dir), explicit, effective,
                         parse_master(textwrap.dedent(master), textwrap.dedent(parameters)))


def _diagnose(config: PostfixConfig, roots: list[Any], **inputs: Any) -> doctor.Report:
    partial = doctor.Inputs(postfix=config, **inputs)
    files = {path: read_file(path) for path in doctor.files_needed(partial)}
    return doctor.diagnose(doctor.Inputs(postfix=config, files=files, **inputs), roots=roots, now=now())


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("doctor test root")


@pytest.fixture(scope="module")
def intermediate(ca: TestCA) -> TestCA:
    return ca.intermediate("doctor test intermediate")


def _write(leaf: LeafCertificate, directory: Path, *, chain: bool = True) -> tuple[Path, Path]:
    key, fullchain = leaf.write(directory)
    if not chain:
        fullchain.write_bytes(leaf.cert_pem)
    return key, fullchain


def test_protocol_floor_reads_postfix_protocol_lists() -> None:
    """>=, <= and ! exclusions and positive lists all give the lowest version allowed."""
    assert protocol_floor(">=TLSv1") == "TLSv1"
    assert protocol_floor(">=TLSv1.2") == "TLSv1.2"
    assert protocol_floor("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1") == "TLSv1.2"
    assert protocol_floor("TLSv1.3") == "TLSv1.3"
    assert protocol_floor("!SSLv2 !SSLv3") == "TLSv1"


def test_sound_configuration_is_healthy(tmp_path: Path, ca: TestCA, intermediate: TestCA) -> None:
    """A full chain, a 0600 key, wrappermode on 465 and encrypt on 587: no finding, exit 0."""
    key, fullchain = _write(intermediate.issue([HOSTNAME]), tmp_path)
    config = _postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\nsmtpd_tls_security_level = may\n",
                      "submissions inet n - n - - smtpd\nsubmission inet n - n - - smtpd\n",
                      "submissions/inet/smtpd_tls_wrappermode = yes\n"
                      "submission/inet/smtpd_tls_security_level = encrypt\n")
    report = _diagnose(config, [ca.certificate])
    assert report.diagnoses == (), doctor.render_text(report)
    assert report.verdict == "doctor: healthy" and report.exit_code == 0


def test_missing_intermediate_in_the_file(tmp_path: Path, ca: TestCA, intermediate: TestCA) -> None:
    """A certificate file without its intermediate is chain-incomplete, with the fullchain fix."""
    key, cert = _write(intermediate.issue([HOSTNAME]), tmp_path, chain=False)
    report = _diagnose(_postfix(f"smtpd_tls_chain_files = {key}, {cert}\n"), [ca.certificate])
    finding = _one(report, "chain-incomplete")
    assert "doctor test intermediate" in finding.message and "fullchain" in finding.fix
    assert "postfix reload" in finding.fix
    assert report.verdict == "doctor: 1 problem" and report.exit_code == 2


def test_chain_in_the_wrong_order(tmp_path: Path, ca: TestCA, intermediate: TestCA) -> None:
    """The intermediate before the leaf is named as a chain-order problem."""
    leaf = intermediate.issue([HOSTNAME])
    key, fullchain = leaf.write(tmp_path)
    fullchain.write_bytes(fullchain.read_bytes().split(b"-----END CERTIFICATE-----\n")[1]
                          + b"-----END CERTIFICATE-----\n" + leaf.cert_pem)
    report = _diagnose(_postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\n"), [ca.certificate])
    assert "chain-order" in _codes(report)


def test_key_that_does_not_match(tmp_path: Path, ca: TestCA) -> None:
    """Another certificate's key is a key-certificate-mismatch naming both files."""
    key, _ = ca.issue([HOSTNAME]).write(tmp_path, "other")
    _, fullchain = ca.issue([HOSTNAME]).write(tmp_path, "served")
    report = _diagnose(_postfix(f"smtpd_tls_cert_file = {fullchain}\nsmtpd_tls_key_file = {key}\n"), [ca.certificate])
    finding = _one(report, "key-certificate-mismatch")
    assert str(key) in finding.message and str(fullchain) in finding.message
    assert "certkeeper setup postfix --certificate" in finding.fix


def test_world_readable_key_and_host_names(tmp_path: Path, ca: TestCA) -> None:
    """A 0644 key is a problem fixed by chmod; a certificate not naming myhostname is a host mismatch."""
    key, fullchain = ca.issue(["other.example.test"]).write(tmp_path)
    key.chmod(0o644)
    report = _diagnose(_postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\n"), [ca.certificate])
    assert _one(report, "key-world-readable").fix.startswith(f"chmod 0600 {key}")
    assert HOSTNAME in _one(report, "certificate-host-mismatch").message


def test_submission_rules_and_their_postconf_lines(tmp_path: Path, ca: TestCA) -> None:
    """465 without wrappermode and 587 with optional TLS get the exact postconf -P lines for their service."""
    key, fullchain = ca.issue([HOSTNAME]).write(tmp_path)
    config = _postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\nsmtpd_use_tls = yes\n",
                      "smtps inet n - n - - smtpd\nsubmission inet n - n - - smtpd\n",
                      "submission/inet/smtpd_tls_security_level = may\n", config_dir="/etc/postfix-out")
    report = _diagnose(config, [ca.certificate])
    assert _one(report, "submissions-without-wrappermode").fix.splitlines() == [
        "postconf -c /etc/postfix-out -P 'smtps/inet/smtpd_tls_wrappermode=yes'", "postfix -c /etc/postfix-out reload"]
    assert "submission/inet/smtpd_tls_security_level=encrypt" in _one(report, "submission-tls-optional").fix
    assert "submission/inet/smtpd_tls_auth_only=yes" in _one(report, "auth-before-starttls").fix
    obsolete = _one(report, "obsolete-setting")
    assert "smtpd_use_tls" in obsolete.message and "-X smtpd_use_tls" in obsolete.fix


def test_protocol_floor_and_sni_map_not_built(tmp_path: Path, ca: TestCA) -> None:
    """TLSv1 allowed for mandatory TLS is a problem; an SNI map without its postmap -F database too."""
    key, fullchain = ca.issue([HOSTNAME]).write(tmp_path)
    sni_key, sni_chain = ca.issue(["mx.example.test"]).write(tmp_path, "sni")
    source = tmp_path / "sni"
    source.write_text(f"mx.example.test {sni_key}, {sni_chain}\n")
    config = _postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\nsmtpd_tls_mandatory_protocols = >=TLSv1\n"
                      f"tls_server_sni_maps = hash:{source}\n")
    report = _diagnose(config, [ca.certificate])
    assert _one(report, "protocol-floor").fix == "postconf -e 'smtpd_tls_mandatory_protocols = >=TLSv1.2'"
    assert _one(report, "sni-map-not-built").fix.startswith(f"postmap -F hash:{source}")
    assert any("for mx.example.test" in fact for section in report.sections for fact in section.facts)


def test_managed_pinned_and_stale_copies(tmp_path: Path, ca: TestCA) -> None:
    """A path into versions/ is pinned; a copy with a managed certificate's names but an old fingerprint is stale."""
    current_leaf, old_leaf = ca.issue([HOSTNAME]), ca.issue([HOSTNAME])
    state = tmp_path / "state" / "certs" / "mail"
    key, fullchain = current_leaf.write(state / "versions" / "v2")
    (state / "current").symlink_to("versions/v2")
    copy_key, copy_chain = old_leaf.write(tmp_path / "etc", "mail")
    from certkeeper import pki

    managed = doctor.ManagedCertificate("mail", (HOSTNAME,), state / "current", "v2",
                                        frozenset({pki.fingerprint(current_leaf.certificate)}),
                                        {pki.fingerprint(old_leaf.certificate): "v1"}, ("postfix",))
    pinned = _diagnose(_postfix(f"smtpd_tls_chain_files = {key}, {fullchain}\n"), [ca.certificate],
                       managed=(managed,))
    assert f"{state}/current/server.key" in _one(pinned, "pinned-version").fix
    stale = _diagnose(_postfix(f"smtpd_tls_chain_files = {copy_key}, {copy_chain}\n"), [ca.certificate],
                      managed=(managed,))
    finding = _one(stale, "stale-copy")
    assert "old version v1" in finding.message
    assert f"smtpd_tls_chain_files = {state}/current/combined.pem" in finding.fix


def test_doveconf_output_gives_listeners_and_files() -> None:
    """doveconf's nested output: listeners per enabled protocol, ssl_cert paths, local_name sections."""
    root = parse_doveconf(textwrap.dedent("""\
        # 2.3.19.1: /etc/dovecot/dovecot.conf
        listen = 127.0.0.1
        protocols = imap
        service imap-login {
          inet_listener imap {
            port = 143
          }
          inet_listener imaps {
            port = 993
            ssl = yes
          }
        }
        service pop3-login {
          inet_listener pop3s {
            port = 995
            ssl = yes
          }
        }
        ssl_cert = </etc/ssl/mail.pem
        ssl_key = </etc/ssl/mail.key
        local_name mx.example.test {
          ssl_cert = </etc/ssl/mx.pem
          ssl_key = </etc/ssl/mx.key
        }
        """))
    from certkeeper.mailserver.config import DovecotConfig, dovecot_listeners, dovecot_tls_files

    config = DovecotConfig(Path("/etc/dovecot/dovecot.conf"), root)
    assert [(x.service, x.port, x.protocol) for x in dovecot_listeners(config)] == [
        ("imap-login/imap", 143, "imap"), ("imap-login/imaps", 993, "imaps")]
    files = dovecot_tls_files(config)
    assert files[0].files == (Path("/etc/ssl/mail.pem"), Path("/etc/ssl/mail.key"))
    assert files[1].server_name == "mx.example.test"


def test_dovecot_obsolete_floor_and_plaintext_auth_with_real_doveconf(tmp_path: Path, ca: TestCA) -> None:
    """doveconf itself reads the file; ssl_protocols (removed in 2.3), TLSv1 and plaintext LOGIN are named."""
    if shutil.which("doveconf") is None:
        pytest.skip("doveconf is not installed")
    key, fullchain = ca.issue([HOSTNAME]).write(tmp_path)
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"protocols = imap\nlisten = 127.0.0.1\nssl_protocols = !SSLv3\nssl_cert = <{fullchain}\n"
                    f"ssl_key = <{key}\ndisable_plaintext_auth = no\nhostname = {HOSTNAME}\n"
                    f"base_dir = {tmp_path}/run\n")
    config = read_dovecot(conf)
    inputs = doctor.Inputs(dovecot=config)
    files = {path: read_file(path) for path in doctor.files_needed(inputs)}
    report = doctor.diagnose(doctor.Inputs(dovecot=config, files=files), roots=[ca.certificate], now=now())
    assert "ssl_min_protocol = TLSv1.2" in _one(report, "obsolete-setting").fix
    assert _one(report, "protocol-floor").fix.startswith(f"in {conf}: ssl_min_protocol = TLSv1.2")
    assert _one(report, "auth-before-starttls").fix.endswith(f"doveadm -c {conf} reload")


# -- Real Postfix, probed ----------------------------------------------------------------------------------------


@pytest.fixture
def postfix_factory(tmp_path: Path) -> Iterator[Any]:
    """Start test bed Postfix instances (the shared factory when conftest has it, else the class directly)."""
    from certkeeper.testbed.postfix import Postfix

    started: list[Postfix] = []

    def start(**options: Any) -> Postfix:
        instance = Postfix(tmp_path / f"postfix{len(started)}", **options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def _doctor(capsys: pytest.CaptureFixture[str], postfix: Any, ca_file: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    status = main(["-c", "/nonexistent/certkeeper.toml", "doctor", "--postfix-config", str(postfix.config_dir),
                   "--ca-file", str(ca_file), "--json", "--timeout", "5", *extra])
    report = json.loads(capsys.readouterr().out)
    return status, report


def _finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, (code, json.dumps(report, indent=1))
    first: dict[str, Any] = found[0]
    return first


pytestmark_testbed = pytest.mark.testbed


@pytestmark_testbed
def test_real_postfix_with_missing_intermediate_and_world_readable_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], postfix_factory: Any, ca: TestCA,
        intermediate: TestCA) -> None:
    """On disk and on the wire: the file and the served chain lack the intermediate; the key is 0644."""
    key, cert = _write(intermediate.issue([HOSTNAME, "127.0.0.1"]), tmp_path / "tls", chain=False)
    key.chmod(0o644)
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    postfix = postfix_factory(ca=ca, main_cf={"smtpd_tls_chain_files": f"{key}, {cert}"})
    status, report = _doctor(capsys, postfix, ca_file)
    assert status == 2 and report["verdict"].startswith("doctor: ")
    assert "fullchain" in _finding(report, "chain-incomplete")["fix"]
    assert "serves no intermediate" in _finding(report, "served-chain-incomplete")["message"]
    assert _finding(report, "key-world-readable")["fix"].startswith(f"chmod 0600 {key}")


@pytestmark_testbed
def test_real_postfix_with_a_key_that_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     postfix_factory: Any, ca: TestCA) -> None:
    """The files name the mismatch; the probe sees every handshake fail."""
    key, _ = ca.issue([HOSTNAME]).write(tmp_path / "tls", "other")
    _, fullchain = ca.issue([HOSTNAME]).write(tmp_path / "tls", "served")
    postfix = postfix_factory(ca=ca, main_cf={"smtpd_tls_chain_files": f"{key}, {fullchain}"},
                              listeners=["submissions"])
    status, report = _doctor(capsys, postfix, ca.write_cert(tmp_path / "ca.pem"))
    assert status == 2
    assert str(key) in _finding(report, "key-certificate-mismatch")["message"]
    assert _finding(report, "tls-handshake-failed")["where"].startswith("Postfix submissions on 127.0.0.1:")


@pytestmark_testbed
def test_real_postfix_465_without_wrappermode_and_587_auth_before_starttls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], postfix_factory: Any, ca: TestCA) -> None:
    """Both submission mistakes are named with the postconf -P line for the very service."""
    postfix = postfix_factory(ca=ca, listener_options={"submissions": {"smtpd_tls_wrappermode": "no"},
                                                       "submission": {"smtpd_tls_security_level": "may"}})
    status, report = _doctor(capsys, postfix, postfix.ca_file)
    smtps, submission = postfix.ports["submissions"], postfix.ports["submission"]
    assert status == 2
    assert _finding(report, "submissions-without-wrappermode")["fix"].startswith(
        f"postconf -c {postfix.config_dir} -P '127.0.0.1:{smtps}/inet/smtpd_tls_wrappermode=yes'")
    assert f"127.0.0.1:{submission}/inet/smtpd_tls_auth_only=yes" in _finding(report, "auth-before-starttls")["fix"]
    assert f"127.0.0.1:{submission}/inet/smtpd_tls_security_level=encrypt" in _finding(
        report, "submission-tls-optional")["fix"]


@pytestmark_testbed
def test_real_postfix_files_replaced_without_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   postfix_factory: Any, ca: TestCA) -> None:
    """A running smtpd keeps the old certificate: served != on disk, fixed by postfix reload."""
    key, fullchain = ca.issue([HOSTNAME, "127.0.0.1"]).write(tmp_path / "tls")
    postfix = postfix_factory(ca=ca, main_cf={"smtpd_tls_chain_files": f"{key}, {fullchain}"}, listeners=["smtp"])
    target = f"smtp://127.0.0.1:{postfix.ports['smtp']}"
    from certkeeper.targets import parse_target

    first = probe_sync([parse_target(target)], ProbeOptions(timeout=5), now=now())[0]
    assert first.certificate is not None  # an smtpd process now holds the first certificate
    ca.issue([HOSTNAME, "127.0.0.1"]).write(tmp_path / "tls")  # same paths, new pair, no reload
    status, report = _doctor(capsys, postfix, postfix.ca_file)
    stale = _finding(report, "served-certificate-stale")
    assert first.certificate.fingerprint_sha256[:16] in stale["message"]
    assert stale["fix"].startswith(f"postfix -c {postfix.config_dir} reload") and status == 2
    postfix.reload()
    status, report = _doctor(capsys, postfix, postfix.ca_file)
    assert not [f for f in report["findings"] if f["code"] == "served-certificate-stale"]


@pytestmark_testbed
def test_text_report_groups_by_listener_and_ends_with_the_verdict(
        capsys: pytest.CaptureFixture[str], postfix_factory: Any) -> None:
    """The readable report has a section per listener and the verdict as its last line."""
    postfix = postfix_factory()
    status = main(["-c", "/nonexistent/certkeeper.toml", "doctor", "--postfix-config", str(postfix.config_dir),
                   "--ca-file", str(postfix.ca_file)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith(f"Postfix submissions on 127.0.0.1:{postfix.ports['submissions']}") for line in lines)
    assert lines[-1].startswith("doctor: ") and status in {0, 1, 2}
    assert ("healthy" in lines[-1]) == (status == 0)
