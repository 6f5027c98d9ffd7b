"""The daemon's pass in flight survives a SIGHUP (issue 21.7): it finishes on the app it started with."""

from __future__ import annotations

import signal
from pathlib import Path

from certkeeper.store.sqlite import SqliteStore
from tests.lifecycle_helpers import hook_script, write_config
from tests.test_daemon import daemon, daemon_log, successes, wait_for


def test_sighup_during_a_pass_lets_it_finish_and_record_its_history(tmp_path: Path) -> None:
    marker = tmp_path / "hook-started"
    hook = hook_script(tmp_path, "reload", f"touch {marker}; sleep 2")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)
    with daemon(config) as process:
        assert wait_for(marker.exists, 60), daemon_log(config)
        process.send_signal(signal.SIGHUP)  # while the first pass runs the reload hook
        assert wait_for(lambda: "configuration reloaded" in daemon_log(config), 30), daemon_log(config)
        assert wait_for(lambda: successes(config) >= 1, 30), daemon_log(config)
        assert process.poll() is None
    log = daemon_log(config)
    assert "closed database" not in log and "failed unexpectedly" not in log, log
    assert log.index("mail: renewed: installed and verified") < log.index("configuration reloaded")
    store = SqliteStore(config.settings.state_dir)
    try:
        [record] = store.renewals("mail")
        state = store.get_state("mail")
    finally:
        store.close()
    assert record.result == "success" and state is not None and not state.reload_pending


def test_a_busy_metrics_port_is_logged_and_the_daemon_keeps_renewing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, """
            [certificates.mail]
            issuer = "internal"
            domains = ["mail.example.test"]
            """, settings=f'metrics_listen = "127.0.0.1:{port}"')
        with daemon(config) as process:
            assert wait_for(lambda: successes(config) >= 1, 60), daemon_log(config)
            assert process.poll() is None
        log = daemon_log(config)
    assert f"metrics endpoint not started on 127.0.0.1:{port}" in log and "internal error" not in log, log
    assert f"MetricsEndpointFailed listen=127.0.0.1:{port}" in log


def test_a_metrics_endpoint_that_could_not_start_owes_a_warning() -> None:
    from certkeeper import pki
    from certkeeper.alerts.catalog import alert_for
    from certkeeper.alerts.rules import Severity
    from certkeeper.events import MetricsEndpointFailed

    action = alert_for(MetricsEndpointFailed(pki.now_utc(), "127.0.0.1:9466", "Address already in use"))
    assert action.alert is not None and action.alert.severity == Severity.WARNING
    assert action.alert.subject == "metrics endpoint 127.0.0.1:9466 down"
