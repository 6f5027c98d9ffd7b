"""``status`` follows what certkeeper itself just verified (issue 21.10): a renewal's verification and a passing
``hooks test`` are observations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certkeeper import values
from certkeeper.config import Config
from certkeeper.store.sqlite import SqliteStore
from certkeeper.testbed.dovecot import Dovecot
from tests.lifecycle_helpers import run_cli
from tests.test_renewal_testbed import (
    dovecot_endpoints,
    install_first_version,
    point_dovecot_at_certkeeper,
    reloaded_by,
)

pytestmark = pytest.mark.testbed


def cli_json(config: Config, *args: str) -> Any:
    result = run_cli(config, *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_status_after_a_verified_renewal_and_a_passing_hooks_test(
        tmp_path: Path, dovecot_factory: Callable[..., Dovecot]) -> None:
    dovecot = dovecot_factory()
    install_first_version(tmp_path)
    point_dovecot_at_certkeeper(tmp_path, dovecot)
    endpoints = dovecot_endpoints(dovecot)
    config = reloaded_by(tmp_path, "dovecot", {"DOVECOT_CONFIG": str(dovecot.config_file)}, endpoints)
    assert cli_json(config, "renew", "--force")[0]["result"] == "renewed"
    [row] = cli_json(config, "status")
    assert {s["served"] for s in row["endpoints"]} == {"current"}, row["endpoints"]
    owe_a_reload(config)
    hooks = run_cli(config, "hooks", "test", "mail")
    assert hooks.returncode == 0, hooks.stdout + hooks.stderr
    [row] = cli_json(config, "status")
    assert row["reload_pending"] is False

    # A pass that only reloads (the reload was owed, nothing is due) verifies, and status says what it saw.
    owe_a_reload(config)
    [outcome] = cli_json(config, "renew")
    assert outcome["result"] == "reloaded", outcome
    [row] = cli_json(config, "status")
    assert row["reload_pending"] is False and row["version"] == outcome["version"]
    assert {s["served"] for s in row["endpoints"]} == {"current"}, row["endpoints"]
    assert row["last_result"]["result"] == "success", row["last_result"]


def owe_a_reload(config: Config) -> None:
    store = SqliteStore(config.settings.state_dir)
    try:
        state = store.get_state("mail")
        assert state is not None
        store.put_state(values.replace(state, reload_pending=True))
    finally:
        store.close()
