"""certkeeper's endpoint metrics next to Debian's blackbox_exporter probing the same endpoints: the metric names
they share carry identical label values; promtool finds nothing to complain about in certkeeper's text."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certkeeper.monitoring.metrics import render_store_metrics
from certkeeper.renewal.observe import Watched, observe, record
from certkeeper.store.sqlite import SqliteStore
from certkeeper.targets import parse_target
from certkeeper.testbed.blackbox import Blackbox
from tests.monitoring_endpoints import HOST, Endpoints, mail_endpoints

__all__ = ["mail_endpoints"]  # the fixture, imported for pytest to find

pytestmark = pytest.mark.testbed
Samples = dict[str, list[tuple[dict[str, str], float]]]
# What blackbox reports about a TLS endpoint that certkeeper reports too (its own probe_ip_*, probe_dns_*,
# probe_failed_due_to_regex are about blackbox's own steps).
SHARED = ("probe_success", "probe_ssl_earliest_cert_expiry", "probe_ssl_last_chain_expiry_timestamp_seconds",
          "probe_ssl_last_chain_info", "probe_tls_version_info", "probe_duration_seconds")


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


@pytest.fixture(scope="module")
def blackbox(tmp_path_factory: pytest.TempPathFactory, mail_endpoints: Endpoints) -> Iterator[Blackbox]:
    with Blackbox(tmp_path_factory.mktemp("blackbox"), ca_file=mail_endpoints.ca_file, server_name=HOST) as server:
        yield server


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, mail_endpoints: Endpoints) -> str:
    """certkeeper's metrics after one observation of every endpoint, as the daemon renders them."""
    now = datetime.now(UTC)
    items = [Watched(e.label, parse_target(e.certkeeper_target), ca_file=mail_endpoints.ca_file, servername=HOST)
             for e in mail_endpoints.items]
    store = SqliteStore(tmp_path_factory.mktemp("state"))
    try:
        record(store, observe(items, now=now), now=now)
        return render_store_metrics(store)
    finally:
        store.close()


def test_shared_metrics_have_identical_label_values(blackbox: Blackbox, mail_endpoints: Endpoints,
                                                    ours: str) -> None:
    """For each endpoint: every shared metric blackbox reports, certkeeper reports with the same labels (besides
    its own name and endpoint) and, for success and expiry, the same value."""
    mine = samples(ours)
    differences = []
    for endpoint in mail_endpoints.items:
        theirs = samples(blackbox.probe(endpoint.blackbox_module, f"127.0.0.1:{endpoint.port}"))
        assert theirs["probe_success"][0][1] == (1 if endpoint.verifies else 0), (endpoint.label, theirs)
        for name in SHARED:
            if name not in theirs:
                continue  # blackbox reports no TLS facts when the handshake failed verification
            own = [(labels, value) for labels, value in mine.get(name, [])
                   if labels.get("name") == endpoint.label]
            stripped = [({k: v for k, v in labels.items() if k not in ("name", "endpoint")}, value)
                        for labels, value in own]
            expected = theirs[name]
            if name == "probe_duration_seconds":  # the name and labels are shared; how long it took is not
                stripped = [(labels, 0.0) for labels, _ in stripped]
                expected = [(labels, 0.0) for labels, _ in expected]
            if stripped != expected:
                differences.append(f"{endpoint.label} {name}: blackbox {expected}, certkeeper {stripped}")
    assert not differences, "\n".join(differences)


def test_promtool_check_metrics_finds_no_problem(ours: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=ours, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
