"""One decision per certificate per pass: one ``now``, the state read once (one query for all), ``next_check`` on the
outcome."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certkeeper import pki
from certkeeper.app import build_app
from certkeeper.renewal.policy import (
    MIN_RETRY,
    Decision,
    History,
    Result,
    backoff_delay,
    fleet_may_catch_up,
    next_check_with_reload,
)
from certkeeper.store import CertState
from certkeeper.store.sqlite import SqliteStore
from tests.lifecycle_helpers import hook_script, run_cli, write_config

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUIET = Decision(False, "renew_before", T0 + timedelta(days=20), T0 + timedelta(hours=12))


def test_result_values_print_and_serialise_as_the_documented_strings() -> None:
    assert [r.value for r in Result] == ["renewed", "not-due", "failed", "rolled-back", "reloaded", "dry-run",
                                         "busy", "verified", "waiting"]
    assert json.dumps([Result.NOT_DUE, Result.WAITING]) == '["not-due", "waiting"]'
    assert f"{Result.ROLLED_BACK}" == "rolled-back" and str(Result.DRY_RUN) == "dry-run"
    assert {r for r in Result if r.failed} == {Result.FAILED, Result.ROLLED_BACK, Result.BUSY}


def test_the_fleet_gate_opens_when_nothing_is_due_and_the_backoff_has_passed() -> None:
    assert fleet_may_catch_up(QUIET, History(), name="mail", now=T0)
    assert not fleet_may_catch_up(Decision(True, "expired", T0, T0 + MIN_RETRY), History(), name="mail", now=T0)
    failed = History(failures=2, last_attempt_at=T0)
    assert not fleet_may_catch_up(QUIET, failed, name="mail", now=T0 + MIN_RETRY)
    assert fleet_may_catch_up(QUIET, failed, name="mail", now=T0 + backoff_delay(2, "mail"))


def test_a_reload_owed_is_looked_at_again_on_the_backoff_not_at_the_renewal_point() -> None:
    history = History(failures=1, last_attempt_at=T0)
    assert next_check_with_reload(QUIET, history, name="mail", reload_owed=False, now=T0) == QUIET.next_check
    owed = next_check_with_reload(QUIET, history, name="mail", reload_owed=True, now=T0)
    assert owed == T0 + backoff_delay(1, "mail") < QUIET.next_check
    late = next_check_with_reload(QUIET, history, name="mail", reload_owed=True, now=T0 + timedelta(hours=2))
    assert late == T0 + timedelta(hours=2, seconds=1)  # never in the past


class CountingStore(SqliteStore):
    """The real SQLite store, counting how many state rows the pass reads, and in how many queries."""

    reads = 0
    queries = 0

    def get_state(self, name: str) -> CertState | None:
        self.reads += 1
        self.queries += 1
        return super().get_state(name)

    def states(self) -> list[CertState]:
        rows = super().states()
        self.reads += len(rows)
        self.queries += 1
        return rows


def test_a_quiet_pass_reads_the_clock_once_and_each_state_row_once_and_carries_next_check(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, "".join(f"""
        [certificates.c{i}]
        issuer = "internal"
        domains = ["c{i}.example.test"]
        reload = ["{hook}"]
        """ for i in range(3)))
    reads: list[datetime] = []

    def clock() -> datetime:
        reads.append(pki.now_utc())
        return reads[-1]

    store = CountingStore(config.settings.state_dir)
    app = build_app(config, store=store, clock=clock)
    renewed = app.renewer.run()
    assert [o.result for o in renewed] == [Result.RENEWED] * 3
    assert len(reads) == 1 + 3 + 1  # the pass's now, each new certificate's install gate, the work done
    for outcome in renewed:  # the next look is the renewal point of the new certificate, or check_interval
        assert outcome.next_check is not None
        assert reads[-1] < outcome.next_check <= reads[-1] + config.settings.check_interval
    app.renewer.run()  # the first quiet pass records each decision
    store.reads, store.queries, reads[:] = 0, 0, []
    quiet = app.renewer.run()
    assert [o.result for o in quiet] == [Result.NOT_DUE] * 3
    assert len(reads) == 1 and store.reads == 3 and store.queries == 1  # every row in one query
    assert all(o.next_check is not None and reads[0] < o.next_check for o in quiet)


def test_a_failed_renewal_is_looked_at_again_after_its_backoff(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)
    (tmp_path / "ca.pass").write_text("not the passphrase\n")  # the CA key cannot be opened: issuance fails
    (tmp_path / "ca.pass").chmod(0o600)
    now = pki.now_utc()
    app = build_app(config, clock=lambda: now)
    [outcome] = app.renewer.run()
    assert outcome.result == Result.FAILED and outcome.failed
    assert outcome.next_check == now + backoff_delay(1, "mail")
    state = app.store.get_state("mail")
    assert state is not None and state.next_check_at == outcome.next_check


def test_renew_json_and_text_output_keep_their_strings(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        """)
    first = run_cli(config, "renew", "--json")
    assert first.returncode == 0, first.stderr
    [row] = json.loads(first.stdout)
    assert row["result"] == "renewed" and set(row) == {"name", "result", "detail", "version"}
    again = run_cli(config, "renew")
    assert again.returncode == 0 and again.stdout.startswith("mail: not-due: renew_before"), again.stdout


def test_a_daemon_finding_its_decisions_again_agrees_with_a_fresh_pass(tmp_path: Path) -> None:
    """Passes of one daemon reuse each unchanged decision (policy.decide_again); a fresh renewer deciding anew at
    the same moments finds the same decisions, until the renewal point and past it."""
    config = write_config(tmp_path, "".join(f"""
        [certificates.c{i}]
        issuer = "internal"
        domains = ["c{i}.example.test"]
        """ for i in range(2)))
    now = [pki.now_utc()]
    daemon = build_app(config, clock=lambda: now[0])
    assert [o.result for o in daemon.renewer.run()] == [Result.RENEWED] * 2
    quiet = daemon.renewer.run()
    assert [o.result for o in quiet] == [Result.NOT_DUE] * 2
    certificates = list(config.certificates.values())
    start = now[0]
    for step in (timedelta(0), timedelta(minutes=1), timedelta(hours=13), timedelta(days=20), timedelta(days=59),
                 timedelta(days=61), timedelta(days=89), timedelta(days=91)):
        now[0] = start + step
        if step < timedelta(days=20):
            assert [o.next_check for o in daemon.renewer.run()] == \
                [o.next_check for o in build_app(config, store=daemon.store, clock=lambda: now[0]).renewer.run()]
        fresh = build_app(config, store=daemon.store).renewer
        assert [daemon.renewer.decide(c, now[0]) for c in certificates] == \
            [fresh.decide(c, now[0]) for c in certificates]
    assert all(daemon.renewer.decide(c, now[0]).due for c in certificates)  # expired by then
    daemon.close()
