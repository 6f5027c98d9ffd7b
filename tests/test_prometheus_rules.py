"""The shipped alerting rules pass promtool's checks and unit tests; rules and dashboard use only metric names
certkeeper exports (so a renamed metric cannot leave a silent rule or an empty panel behind)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from certkeeper.monitoring.metrics import render_metrics
from certkeeper.mtasts.status import DomainStatus
from tests.test_metrics import COUNTS, ENDPOINTS, INSTALLED, STATES

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "certkeeper-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "certkeeper-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "certkeeper.json"
METRIC = re.compile(r"\b((?:probe|ssl|certkeeper)_[a-z0-9_]+)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def exported() -> set[str]:
    domain = DomainStatus("example.org", "20261201", "enforce", ("mx.example.org",), True, ())
    text = render_metrics(ENDPOINTS, INSTALLED, STATES, COUNTS, [domain])
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    """Expiring, expired, renewal failing, served != installed, DANE and MTA-STS mismatch (MX names outside the
    policy, TXT out of step), daemon not reporting."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    names = exported()
    used_by_rules = set(METRIC.findall(RULES.read_text()))
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    used_by_dashboard = {name for expression in expressions for name in METRIC.findall(expression)}
    assert used_by_rules and used_by_dashboard
    assert used_by_rules <= names, used_by_rules - names
    assert used_by_dashboard <= names, used_by_dashboard - names


def test_dashboard_is_importable() -> None:
    """Unique panel ids, a title and a grid position each, the data source a variable (no hard-coded uid)."""
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "certkeeper"
    for panel in dashboard["panels"]:
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["datasource"]["uid"] == "${datasource}"
