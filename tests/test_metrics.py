"""Metrics: the exposition text parses with prometheus_client's parser and carries the right values."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certkeeper.monitoring.metrics import InstalledCertificate, parse_listen, render_metrics, start_metrics_server
from certkeeper.store import CertState, EndpointRecord, RenewalRecord
from certkeeper.store.sqlite import SqliteStore
from tests.configs import internal_ca_config

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LEAF_NOT_AFTER = NOW + timedelta(days=60)
INTERMEDIATE_NOT_AFTER = NOW + timedelta(days=40)
EXPIRED = NOW - timedelta(days=2)


def probe_details(not_after: datetime, chain_not_after: datetime, subject: str = "CN=mail.example.org",
                  *, valid: bool = True, code: str | None = None) -> dict[str, Any]:
    return {
        "tls_version": "TLSv1.3",
        "chain_valid": valid,
        "elapsed_ms": 12.5,
        "certificate": {"subject": subject.removeprefix("CN="), "subject_dn": subject, "issuer": "R10",
                        "issuer_dn": "CN=R10,O=Let's Encrypt,C=US", "serial": "0a1b2c",
                        "not_after": not_after.isoformat(), "fingerprint_sha256": "ab" * 32,
                        "subject_alternative_names": ["mail.example.org", "smtp.example.org", "192.0.2.25"]},
        "chain": [{"not_after": not_after.isoformat()}, {"not_after": chain_not_after.isoformat()}],
        "findings": [{"code": "certificate-expiring", "severity": "WARNING", "message": "expires in 3 days"},
                     {"code": code, "severity": "CRITICAL", "message": "..."}] if code else [],
    }


ENDPOINTS = [
    EndpointRecord("mail", "smtps://mail.example.org:465", NOW, "OK", "certificate valid for 60 days",
                   "ab" * 32, LEAF_NOT_AFTER, False, probe_details(LEAF_NOT_AFTER, INTERMEDIATE_NOT_AFTER)),
    EndpointRecord("mail", "imaps://mail.example.org:993", NOW, "WARNING", "served-certificate-stale",
                   "cd" * 32, None, True, {}),
    EndpointRecord("partner", "smtp://mx.partner.example:25", NOW, "CRITICAL",
                   'certificate-expired: "quoted" \\ back\nslash', "ef" * 32, EXPIRED,
                   False, probe_details(EXPIRED, NOW + timedelta(days=300), subject='CN=mx "partner"', valid=False,
                                        code="certificate-expired")),
    EndpointRecord("partner", "smtp://down.partner.example:25", NOW, "UNKNOWN", "connection-failed"),
]
INSTALLED = [InstalledCertificate("mail", "mail.example.org", "R10", "0a1b2c",
                                  ("mail.example.org", "smtp.example.org"), LEAF_NOT_AFTER,
                                  file="/var/lib/certkeeper/certs/mail/current/cert.pem",
                                  not_before=LEAF_NOT_AFTER - timedelta(days=90))]
STATES = [CertState("mail", last_success_at=NOW - timedelta(days=30), next_check_at=NOW + timedelta(hours=12)),
          CertState("web")]
COUNTS = {("mail", "success"): 3, ("mail", "failure"): 1, ("web", "rollback"): 2}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str) -> float:
    matches = [v for lab, v in found[metric] if all(lab.get(k) == want for k, want in labels.items())]
    assert len(matches) == 1, (metric, labels, found.get(metric))
    return matches[0]


def test_endpoint_metrics_use_blackbox_exporter_names() -> None:
    """probe_* per endpoint with name and endpoint labels and blackbox's label values: whole DNs, DNS names only,
    "TLS 1.3"; earliest expiry is the chain's earliest; the verified chain's expiry only when it verified."""
    found = samples(render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS))
    smtps = {"name": "mail", "endpoint": "smtps://mail.example.org:465"}
    partner = {"name": "partner", "endpoint": "smtp://mx.partner.example:25"}
    assert value(found, "probe_ssl_earliest_cert_expiry", **smtps) == INTERMEDIATE_NOT_AFTER.timestamp()
    assert value(found, "probe_ssl_last_chain_expiry_timestamp_seconds", **smtps) == INTERMEDIATE_NOT_AFTER.timestamp()
    assert [lab for lab, _ in found["probe_ssl_last_chain_expiry_timestamp_seconds"]] == [smtps]
    assert value(found, "probe_success", **smtps) == 1
    assert value(found, "probe_duration_seconds", **smtps) == 0.0125
    assert value(found, "probe_tls_version_info", version="TLS 1.3", **smtps) == 1
    info = [lab for lab, _ in found["probe_ssl_last_chain_info"] if lab["endpoint"] == smtps["endpoint"]]
    assert info == [{**smtps, "fingerprint_sha256": "ab" * 32, "subject": "CN=mail.example.org",
                     "issuer": "CN=R10,O=Let's Encrypt,C=US",
                     "subjectalternative": "mail.example.org,smtp.example.org"}]
    assert value(found, "certkeeper_endpoint_info", **partner, status="CRITICAL", reason="certificate-expired") == 1
    assert value(found, "probe_success", endpoint="smtp://down.partner.example:25") == 0
    assert not [lab for lab, _ in found["probe_ssl_earliest_cert_expiry"]
                if lab["endpoint"] == "smtp://down.partner.example:25"]


def test_expired_certificates_are_still_reported() -> None:
    """An expired, failing endpoint keeps its expiry and chain info: monitoring must not go silent then."""
    found = samples(render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS))
    partner = {"name": "partner", "endpoint": "smtp://mx.partner.example:25"}
    assert value(found, "probe_ssl_earliest_cert_expiry", **partner) == EXPIRED.timestamp()
    assert value(found, "probe_success", **partner) == 0
    assert value(found, "probe_ssl_last_chain_info", **partner, subject='CN=mx "partner"') == 1


def test_label_values_are_escaped() -> None:
    """Quotes, backslashes and newlines in label values survive the parser unchanged."""
    found = samples(render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS))
    assert value(found, "probe_ssl_last_chain_info", endpoint="smtp://mx.partner.example:25",
                 subject='CN=mx "partner"') == 1


def test_no_label_value_changes_from_day_to_day() -> None:
    """The same endpoint probed a day later, "expires in 59 days" instead of 60: the same series, none new."""
    def series(days_left: int) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        record = EndpointRecord("mail", "smtps://mail.example.org:465", NOW, "OK",
                                f"'mail.example.org' from 'R10' (expires in {days_left} days)", "ab" * 32,
                                LEAF_NOT_AFTER, False, probe_details(LEAF_NOT_AFTER, INTERMEDIATE_NOT_AFTER))
        return {(name, tuple(sorted(labels.items())))
                for name, entries in samples(render_metrics([record], INSTALLED, STATES, COUNTS)).items()
                for labels, _ in entries}

    assert series(60) == series(59)


def test_certificate_and_renewal_metrics() -> None:
    """ssl_exporter's ssl_file_cert_not_after/before (serial in decimal, lists as ",a,b,"), renewal counters,
    last success and next check per certificate; stale per endpoint."""
    text = render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS)
    found = samples(text)
    labels = {"name": "mail", "file": "/var/lib/certkeeper/certs/mail/current/cert.pem", "serial_no": "662316",
              "issuer_cn": "R10", "cn": "mail.example.org", "dnsnames": ",mail.example.org,smtp.example.org,",
              "ips": "", "emails": "", "ou": ""}
    assert found["ssl_file_cert_not_after"] == [(labels, LEAF_NOT_AFTER.timestamp())]
    assert found["ssl_file_cert_not_before"] == [(labels, (LEAF_NOT_AFTER - timedelta(days=90)).timestamp())]
    assert "ssl_cert_not_after" not in found  # ssl_exporter's name for probed certificates, not files
    assert value(found, "certkeeper_renewals_total", name="mail", result="success") == 3
    assert value(found, "certkeeper_renewals_total", name="web", result="rollback") == 2
    assert "# TYPE certkeeper_renewals_total counter" in text
    assert value(found, "certkeeper_last_renewal_success_timestamp_seconds", name="mail") == (
        NOW - timedelta(days=30)).timestamp()
    assert value(found, "certkeeper_next_renewal_timestamp_seconds", name="mail") == (
        NOW + timedelta(hours=12)).timestamp()
    assert [lab for lab, _ in found["certkeeper_next_renewal_timestamp_seconds"]] == [{"name": "mail"}]
    assert value(found, "certkeeper_served_stale", endpoint="imaps://mail.example.org:993") == 1
    assert value(found, "certkeeper_served_stale", endpoint="smtps://mail.example.org:465") == 0


def test_every_family_has_help_and_type() -> None:
    """HELP and TYPE lines precede the samples, even for empty families; an empty store renders valid text."""
    text = render_metrics([], [], [], {})
    assert list(text_string_to_metric_families(text)) != []
    assert text.count("# HELP ") == text.count("# TYPE ")


def test_metrics_server_serves_the_rendered_text() -> None:
    """GET /metrics returns render() with the exposition content type; other paths 404; stop() frees the port."""
    calls: list[int] = []

    def render() -> str:
        calls.append(1)
        return render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS)

    server = start_metrics_server("127.0.0.1:0", render)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = response.read().decode()
        assert "probe_success" in samples(body)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        missing.value.close()
        assert missing.value.code == 404
    finally:
        server.stop()
    assert calls == [1]


def test_metrics_server_reports_a_failing_render_as_500() -> None:
    """A render that raises answers 500 and the server keeps serving."""
    def render() -> str:
        msg = "store gone"
        raise RuntimeError(msg)

    server = start_metrics_server("127.0.0.1:0", render)
    try:
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
            failed.value.close()
            assert failed.value.code == 500
    finally:
        server.stop()


def test_parse_listen() -> None:
    """host:port, bracketed IPv6, and a bare :port."""
    assert parse_listen("127.0.0.1:9466") == ("127.0.0.1", 9466)
    assert parse_listen("[::1]:9466") == ("::1", 9466)
    assert parse_listen(":9466") == ("127.0.0.1", 9466)  # loopback unless every address is asked for by name
    assert parse_listen("0.0.0.0:9466") == ("0.0.0.0", 9466)
    with pytest.raises(ValueError, match="expected host:port"):
        parse_listen("9466")


def test_cli_metrics_prints_what_the_store_holds(tmp_path: Path) -> None:
    """`certkeeper metrics` prints parseable text from the store; --output writes the same text to a file."""
    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir)
    for record in ENDPOINTS:
        store.put_endpoint(record)
    store.put_state(STATES[0])
    store.add_renewal(RenewalRecord("mail", NOW, "success"))
    store.close()
    config = internal_ca_config(tmp_path)
    command = [sys.executable, "-m", "certkeeper", "-c", str(config), "metrics"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    assert value(found, "certkeeper_renewals_total", name="mail", result="success") == 1
    assert value(found, "probe_ssl_earliest_cert_expiry", endpoint="smtps://mail.example.org:465") == (
        INTERMEDIATE_NOT_AFTER.timestamp())
    output = tmp_path / "certkeeper.prom"
    written = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    assert output.read_text() == result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".certkeeper.prom")] == []


def test_tlsa_match_follows_the_dane_verdict() -> None:
    """1 for tlsa-valid, 0 for tlsa-invalid, no sample without records (tlsa-missing) or without DANE."""
    def record(endpoint: str, status: str | None) -> EndpointRecord:
        details = probe_details(LEAF_NOT_AFTER, INTERMEDIATE_NOT_AFTER)
        if status:
            details["dane"] = {"status": status}
        return EndpointRecord("mx", endpoint, NOW, "OK", "", "ab" * 32, LEAF_NOT_AFTER, False, details)

    records = [record("smtp://a:25", "tlsa-valid"), record("smtp://b:25", "tlsa-invalid"),
               record("smtp://c:25", "tlsa-missing"), record("smtp://d:25", None)]
    found = samples(render_metrics(records, [], [], {}))
    assert sorted((labels["endpoint"], value) for labels, value in found["certkeeper_tlsa_match"]) == [
        ("smtp://a:25", 1), ("smtp://b:25", 0)]
