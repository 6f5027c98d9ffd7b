"""Fault injection (issue 21, "done when"): SIGKILL at random moments of issuance and install, over the internal
CA, HTTP-01 and DNS-01 against Pebble and BIND, and every state corruption of items 2-3.  After each fault:

- a whole, matching pair is current (key, certificate, combined file, every file as version.json recorded);
- the next run succeeds;
- no ``.incoming-*`` folder and no ``_acme-challenge`` TXT value is left;
- the owed reload ran: the reload hook's last run was for the version that is current.

The renewal runs in a forked child (the imports are already done, so a kill costs milliseconds, not a Python
start) and is killed at a moment drawn by a seeded RNG over the measured length of an unkilled run: real
timing, no kill points in the code.  ``CERTKEEPER_FAULT_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from certkeeper.app import build_app
from certkeeper.config import Config, load_config
from certkeeper.issuers import journal
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.pebble import Pebble
from tests.lifecycle_helpers import hook_runs, hook_script, write_config
from tests.test_recovery_install import CORRUPTIONS, assert_whole_pair_current

SEED = int(os.environ.get("CERTKEEPER_FAULT_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)


def forced_renewal(config: Config) -> int:
    """A child process running ``renew --force`` in the already-imported interpreter; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            outcomes = build_app(load_config(config.path)).run_pass(force=True)
            status = 0 if not any(o.failed for o in outcomes) else 1
        finally:
            os._exit(status)
    return pid


def wait_for_orphaned_hooks(hook: Path) -> None:
    """A hook runs in a session of its own (certkeeper.process), so it outlives a killed certkeeper and may
    append its line late; under load that line would land after the next run's.  Wait until none runs."""
    needle = str(hook).encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = False
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    running = needle in (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if running:
                    break
        if not running:
            return
        time.sleep(0.01)


@dataclass
class Faults:
    config: Config
    hooks_dir: Path
    check_dns: Callable[[], set[str]] | None = None
    kills: int = 0
    completed: int = 0

    @property
    def home(self) -> CertificateHome:
        return CertificateHome(self.config.settings.state_dir, "mail")

    def measure(self) -> float:
        """How long an unkilled forced renewal takes here, now: the median of three.  One slow run (a CA's 500
        retried for seconds, a busy moment) taken alone spread the kills so wide that most came after the renewal
        had finished (6 kills in 120 tries, a clean-clone run)."""
        lengths = []
        for _ in range(3):
            start = time.monotonic()
            _, status = os.waitpid(forced_renewal(self.config), 0)
            assert os.waitstatus_to_exitcode(status) == 0
            lengths.append(time.monotonic() - start)
        return statistics.median(lengths)

    def kill_once(self, rng: random.Random, length: float) -> None:
        pid = forced_renewal(self.config)
        time.sleep(rng.uniform(0.0, length))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == -signal.SIGKILL:
            self.kills += 1
        else:
            self.completed += 1
        wait_for_orphaned_hooks(self.hooks_dir / "reload")
        self.check_after_fault()

    def check_after_fault(self) -> None:
        where = f"(seed {SEED}, after {self.kills} kills)"
        assert_whole_pair_current(self.home)
        outcomes = build_app(self.config).run_pass()
        assert not any(o.failed for o in outcomes), ([(o.result, o.detail) for o in outcomes], where)
        current = assert_whole_pair_current(self.home)
        assert not [p.name for p in self.home.versions_dir.iterdir() if p.name.startswith(".")], where
        assert not journal.has_pending(self.config.settings.state_dir, "mail"), where
        if self.check_dns is not None:
            assert self.check_dns() == set(), where
        runs = hook_runs(self.hooks_dir)
        assert runs and runs[-1] == f"reload mail {current.id}", (runs[-3:], current.id, where)


def kill_many(faults: Faults, kills: int) -> None:
    print(f"CERTKEEPER_FAULT_SEED={SEED} replays this run")  # shown with a failure, whichever assertion it is
    rng = random.Random(SEED)
    [first] = build_app(faults.config).run_pass()
    assert not first.failed, first.detail
    length = faults.measure()
    for _ in range(kills * 3):
        if faults.kills >= kills:
            break
        faults.kill_once(rng, length * 1.1)
    assert faults.kills >= kills, (faults.kills, faults.completed, SEED)


def test_sigkill_during_internal_ca_issuance_and_install(tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test", "smtp.example.test"]
        reload = ["{hook}"]
        """)
    kill_many(Faults(config, tmp_path), 50)


def acme_config(tmp_path: Path, pebble: Pebble, challenge: str, domain: str) -> Config:
    hook = hook_script(tmp_path, "reload")
    trust = pebble.write_issuer_chain(tmp_path / "pebble-chain.pem")
    return write_config(tmp_path, f"""
        [issuers.pebble]
        type = "acme"
        directory = "{pebble.directory_url}"
        ca_bundle = "{pebble.ca_file}"
        trust_roots = "{trust}"
        {challenge}
        timeout = "60s"

        [certificates.mail]
        issuer = "pebble"
        domains = ["{domain}"]
        reload = ["{hook}"]
        """)


@pytest.mark.testbed
def test_sigkill_during_http01_issuance_and_install(tmp_path: Path, pebble: Pebble) -> None:
    challenge = f'challenge = "http-01"\n        http_address = "127.0.0.1"\n        http_port = {pebble.http_port}'
    config = acme_config(tmp_path, pebble, challenge, "mail.example.test")
    kill_many(Faults(config, tmp_path), 40)


@pytest.mark.testbed
def test_sigkill_during_dns01_issuance_and_install(tmp_path: Path, pebble: Pebble, bind: Bind) -> None:
    domain = f"faults-{random.Random(SEED).randrange(10**6)}.example.test"
    challenge = (f'challenge = "dns-01"\n        dns_server = "{bind.nameserver}"\n'
                 f'        tsig_key_file = "{bind.tsig_key_file}"')
    config = acme_config(tmp_path, pebble, challenge, domain)

    def txt_values() -> set[str]:
        query = dns.message.make_query(f"_acme-challenge.{domain}.", dns.rdatatype.TXT)
        reply = dns.query.tcp(query, bind.address, port=bind.port, timeout=5)
        return {b"".join(r.strings).decode() for rrset in reply.answer for r in rrset}

    kill_many(Faults(config, tmp_path, txt_values), 40)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_state_corruption_is_repaired_by_the_next_run(case: str, tmp_path: Path) -> None:
    hook = hook_script(tmp_path, "reload")
    config = write_config(tmp_path, f"""
        [certificates.mail]
        issuer = "internal"
        domains = ["mail.example.test"]
        reload = ["{hook}"]
        """)
    faults = Faults(config, tmp_path)
    [first] = build_app(config).run_pass()
    assert not first.failed, first.detail
    before = faults.home.current()
    assert before is not None
    CORRUPTIONS[case](faults.home, before)
    outcomes = build_app(config).run_pass()
    assert not any(o.failed for o in outcomes), [o.detail for o in outcomes]
    faults.check_after_fault()
