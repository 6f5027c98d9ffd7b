"""``certkeeper alerts list`` and ``alerts flush``: what is queued, and sending it now, through a real relay."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from certkeeper.alerts.notifier import Notifier
from certkeeper.config import load_config
from certkeeper.events import RolledBack
from certkeeper.store.sqlite import SqliteStore
from certkeeper.testbed.server import allocate_port
from certkeeper.testbed.smtp_sink import SmtpSink
from tests.configs import internal_ca_config


def alerts_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config), "alerts", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_queued_alert_is_listed_then_flushed_through_the_relay_once(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        config = internal_ca_config(tmp_path, rest=f"""
            [alerts]
            to = ["postmaster@example.org"]
            from = "certkeeper@example.org"
            smtp_port = {sink.port}
            smtp_security = "none"
            digest = "daily"
            """)
        store = SqliteStore(tmp_path / "state")
        notifier = Notifier(load_config(config).alerts, store)  # type: ignore[arg-type]
        notifier.handle(RolledBack(datetime.now(UTC), "mail", "v2", "v1", "not served"))
        store.close()
        listed = alerts_cli(config, "list")
        assert listed.returncode == 0, listed.stderr
        assert "CRITICAL mail rolled back to v1" in listed.stdout
        flushed = alerts_cli(config, "flush")
        assert flushed.returncode == 0, flushed.stderr
        assert flushed.stdout.strip() == f"sent 1 alert(s) via relay 127.0.0.1:{sink.port}"
        assert len(sink.wait_for_deliveries(1)) == 1
        assert alerts_cli(config, "flush").stdout.strip() == "nothing pending"
        assert alerts_cli(config, "list").stdout == ""
    finally:
        sink.stop()


def test_flush_with_no_relay_answering_exits_69_and_keeps_the_alert(tmp_path: Path) -> None:
    config = internal_ca_config(tmp_path, rest=f"""
        [alerts]
        to = ["postmaster@example.org"]
        from = "certkeeper@example.org"
        smtp_port = {allocate_port()}
        smtp_security = "none"
        smtp_timeout = "5s"
        """)
    store = SqliteStore(tmp_path / "state")
    Notifier(load_config(config).alerts, store).handle(  # type: ignore[arg-type]
        RolledBack(datetime.now(UTC), "mail", "v2", "v1", "not served"))
    store.close()
    flushed = alerts_cli(config, "flush")
    assert flushed.returncode == 69
    assert "connection refused" in flushed.stderr.lower()
    assert "CRITICAL mail rolled back to v1  (1 attempts" in alerts_cli(config, "list").stdout
