"""``certkeeper check --mta-sts`` against real BIND, nginx and Postfix: a good domain and each failure kind.

The MX hosts and policy hosts listen on their real ports (25, 443), each on a 127.x.y.z address of its own that
BIND's A records point to; certkeeper asks that BIND (``--resolver``) and trusts the test CA (``--ca-file``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certkeeper import tls
from certkeeper.cli import main
from certkeeper.mtasts.fetch import fetch_policy
from certkeeper.mtasts.policy import MAX_POLICY_BYTES, Policy, render_policy, render_txt
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.nginx import Nginx
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.server import allocate_address

ZONE = "example.test"
POLICY = Policy("enforce", 86400, ("mx.good.example.test", "plain.example.test"))
POLICY_TEXT = render_policy(POLICY)
# Domains served by the shared nginx (one webroot, one policy); each differs in its DNS.
SHARED = ("good", "nomatch", "nostarttls", "badtxt")


@dataclass
class Bed:
    bind: Bind
    ca_file: Path
    scratch: Nginx  # serves malformed.example.test and huge.example.test; a test writes its webroot
    mx: Postfix

    def check(self, domain: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
        status = main(["check", "--mta-sts", f"{domain}.{ZONE}", "--resolver", self.bind.nameserver,
                       "--ca-file", str(self.ca_file), "--timeout", "5", "--json", *extra])
        [report] = json.loads(capsys.readouterr().out)
        return status, report


def _write_policy(webroot: Path, body: bytes) -> None:
    folder = webroot / ".well-known"
    folder.mkdir(exist_ok=True, mode=0o755)
    (folder / "mta-sts.txt").write_bytes(body)
    (folder / "mta-sts.txt").chmod(0o644)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    base = tmp_path_factory.mktemp("mtasts-check")
    ca = TestCA("certkeeper MTA-STS test CA")
    ca_file = ca.write_cert(base / "ca.pem")
    web_key, web_cert = ca.issue([f"mta-sts.{d}.{ZONE}" for d in SHARED]).write(base / "web", "web")
    wrong_key, wrong_cert = ca.issue([f"www.{ZONE}"]).write(base / "wrong", "wrong")
    scratch_key, scratch_cert = ca.issue([f"mta-sts.malformed.{ZONE}", f"mta-sts.huge.{ZONE}"]).write(
        base / "scratch", "scratch")
    mx_address, plain_address = allocate_address([25]), allocate_address([25])
    with Nginx(base / "nginx", cert_file=web_cert, key_file=web_key, server_name="mta-sts.example.test") as web, \
            Nginx(base / "nginx-wrong", cert_file=wrong_cert, key_file=wrong_key, server_name="www") as wrong, \
            Nginx(base / "nginx-scratch", cert_file=scratch_cert, key_file=scratch_key, server_name="s") as scratch, \
            Postfix(base / "mx", ca=ca, address=mx_address, fixed_ports={"smtp": 25}, listeners=["smtp"]) as mx, \
            Postfix(base / "plain", ca=ca, address=plain_address, fixed_ports={"smtp": 25}, listeners=["smtp"],
                    main_cf={"smtpd_tls_security_level": "none"}), \
            Bind(base / "bind", zone=ZONE) as bind:
        _write_policy(web.webroot, POLICY_TEXT.encode())
        _write_policy(wrong.webroot, POLICY_TEXT.encode())
        leaf = ca.issue(["mx.good.example.test", "other.example.test"])
        mx.key_file.write_bytes(leaf.key_pem)
        mx.fullchain_file.write_bytes(leaf.fullchain_pem)
        mx.reload()
        txt = f'"{render_txt(POLICY_TEXT)}"'
        unreachable = allocate_address([443])  # nothing listens there
        bind.update(add=[
            *(f"_mta-sts.{d} TXT {txt}" for d in ("good", "nomatch", "nostarttls", "wrongcert", "unreachable",
                                                  "malformed", "huge")),
            '_mta-sts.badtxt TXT "v=STSv1; id=not-an-id!"',
            *(f"mta-sts.{d} A {web.address}" for d in SHARED),
            f"mta-sts.wrongcert A {wrong.address}",
            f"mta-sts.unreachable A {unreachable}",
            f"mta-sts.malformed A {scratch.address}",
            f"mta-sts.huge A {scratch.address}",
            *(f"{d} MX 10 mx.good.example.test." for d in ("good", "badtxt", "wrongcert", "unreachable",
                                                          "malformed", "huge")),
            "nomatch MX 10 other.example.test.",
            "nostarttls MX 10 plain.example.test.",
            f"mx.good A {mx_address}",
            f"other A {mx_address}",
            f"plain A {plain_address}",
        ])
        yield Bed(bind, ca_file, scratch, mx)


def codes(report: dict[str, Any]) -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] != "INFO"} | {
        f["code"] for mx in report["mx"] for f in mx["findings"] if f["severity"] != "INFO"}


def test_a_good_domain_is_ok_with_its_id_mode_and_every_mx_matching(bed: Bed,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("good", capsys)
    assert (status, report["status"]) == (0, "OK"), report["message"]
    assert report["txt"]["id"] == render_txt(POLICY_TEXT).split("id=")[1]
    assert report["policy"]["mode"] == "enforce" and report["policy"]["mx"] == list(POLICY.mx)
    [mx] = report["mx"]
    assert (mx["host"], mx["pattern"], mx["matches"]) == ("mx.good.example.test", "mx.good.example.test", True)
    assert mx["probes"][0]["tls_version"] and mx["probes"][0]["port"] == 25
    assert report["every_mx_matches"] is True


def test_the_nagios_line_says_ok_with_the_policy_id(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", "--mta-sts", f"good.{ZONE}", "--resolver", bed.bind.nameserver,
                   "--ca-file", str(bed.ca_file)])
    line = capsys.readouterr().out.strip()
    assert status == 0
    assert line.startswith("CERTKEEPER OK - good.example.test, mta-sts, policy id ") and "mode enforce" in line


def test_a_bad_txt_record_is_sts_policy_invalid(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("badtxt", capsys)
    assert status == 2 and codes(report) == {"sts-policy-invalid"}
    assert "not 1 to 32 letters and digits" in report["message"]


def test_an_unreachable_policy_host_is_sts_policy_fetch_error(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("unreachable", capsys)
    assert status == 2 and codes(report) == {"sts-policy-fetch-error"}
    assert "cannot connect to mta-sts.unreachable.example.test" in report["message"]
    assert report["mx"] == []


def test_a_policy_certificate_for_another_name_is_sts_webpki_invalid(bed: Bed,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("wrongcert", capsys)
    assert status == 2 and codes(report) == {"sts-webpki-invalid"}
    assert "does not verify for mta-sts.wrongcert.example.test" in report["message"]


def test_an_mx_host_outside_the_patterns_is_a_host_mismatch(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("nomatch", capsys)
    assert status == 2 and codes(report) == {"certificate-host-mismatch"}
    [mx] = report["mx"]
    assert mx["pattern"] is None and mx["matches"] is False
    assert "other.example.test matches none of the policy's mx patterns" in report["message"]
    assert report["every_mx_matches"] is False


def test_an_mx_without_starttls_is_starttls_not_supported(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = bed.check("nostarttls", capsys)
    assert status == 2 and codes(report) == {"starttls-not-supported"}
    assert report["mx"][0]["pattern"] == "plain.example.test"


def test_a_malformed_policy_file_lists_each_error_with_its_line(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    _write_policy(bed.scratch.webroot, b"version: STSv1\nmode: enforcing\nmx: mx.*.example.test\nmax_age: soon\n")
    status, report = bed.check("malformed", capsys, "-v")
    assert status == 2 and codes(report) == {"sts-policy-invalid"}
    messages = [f["message"] for f in report["findings"]]
    assert any(m.startswith("line 2: mode 'enforcing'") for m in messages)
    assert any(m.startswith("line 3: mx 'mx.*.example.test'") for m in messages)
    assert any(m.startswith("line 4: max_age 'soon'") for m in messages)
    assert report["policy"]["valid"] is False and report["mx"] == []


def test_an_oversized_policy_file_is_refused_without_reading_it_all(bed: Bed,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _write_policy(bed.scratch.webroot, POLICY_TEXT.encode() + b"x-pad: " + b"a" * (4 * MAX_POLICY_BYTES) + b"\n")
    status, report = bed.check("huge", capsys)
    assert status == 2 and codes(report) == {"sts-policy-invalid"}
    assert "larger than 64 KiB" in report["message"]


def test_doctor_reports_the_mta_sts_findings_with_their_fix(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["doctor", "--postfix-config", str(bed.mx.config_dir), "--mta-sts", f"nomatch.{ZONE}",
                   "--resolver", bed.bind.nameserver, "--ca-file", str(bed.ca_file), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 2
    [finding] = [f for f in report["findings"] if f["where"] == "MTA-STS nomatch.example.test"]
    assert (finding["code"], finding["severity"]) == ("certificate-host-mismatch", "problem")
    assert 'add the MX host to [mta_sts."nomatch.example.test"] mx' in finding["fix"]
    [section] = [s for s in report["sections"] if s["title"] == "MTA-STS nomatch.example.test"]
    assert "MX other.example.test (preference 10): no pattern, refused by enforcing senders" in section["facts"]


def test_an_unreadable_ca_file_is_unknown(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", "--mta-sts", f"good.{ZONE}", "--resolver", bed.bind.nameserver,
                   "--ca-file", "/nonexistent/ca.pem"])
    assert status == 3
    assert "/nonexistent/ca.pem" in capsys.readouterr().err


def test_a_policy_host_dripping_its_body_fails_at_the_timeout(tmp_path: Path) -> None:
    """A byte of the policy every 0.2 s never trips a per-read timeout of 1 s (a 3 s timeout took 69 s); the
    fetch as a whole gets 1 s.  A Python server: nginx does not drip."""
    ca = TestCA("certkeeper MTA-STS drip CA")
    key_file, chain_file = ca.issue(["mta-sts.drip.example.test"]).write(tmp_path)
    context = tls.server_context(chain_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                                   % len(POLICY_TEXT))
                for byte in POLICY_TEXT.encode():
                    if stop.wait(0.2):
                        return
                    connection.sendall(bytes([byte]))

    threading.Thread(target=drip, daemon=True).start()
    try:
        started = time.monotonic()
        fetched = fetch_policy("drip.example.test", ["127.0.0.1"], ca_file=ca.write_cert(tmp_path / "ca.pem"),
                               timeout=1.0, port=listener.getsockname()[1])
        assert time.monotonic() - started < 4.0
        assert fetched.body is None and fetched.finding is not None
        assert fetched.finding.message == (f"fetching https://mta-sts.drip.example.test/.well-known/mta-sts.txt from "
                                           f"127.0.0.1:{listener.getsockname()[1]} did not finish within 1 s")
    finally:
        stop.set()
        listener.close()
