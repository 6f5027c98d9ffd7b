"""``certkeeper demo``: the whole loop, live, on this machine.

Brings up the test bed on loopback in a temporary folder (BIND for ``example.test``, Pebble as the ACME CA
issuing short-lived certificates, a private Postfix and Dovecot, an SMTP sink for alert mail), writes a
certkeeper configuration for them, issues once with ``certkeeper renew``, points Postfix and Dovecot at
certkeeper's ``current/`` files, and then runs the real ``certkeeper daemon`` as a child process.  What the
daemon does is told as it happens, from its log lines (one per event), the servers' own logs and the sink:
issued, installed, Postfix and Dovecot reloaded, verified on every listener, renewed again before expiry, an
alert mail delivered.  It ends by itself (bounded), prints a summary, stops everything and removes the folder.

The servers need root and the Debian packages that ``python3 -m certkeeper.testbed.install`` puts in place
(``bash deploy/demo`` does both).  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TextIO

from certkeeper import pki
from certkeeper.model import KeyType
from certkeeper.store.versions import CertificateHome
from certkeeper.testbed.bind import Bind
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.mailstack import (
    ALERT_TO,
    CERTIFICATE,
    DOMAINS,
    Listener,
    mail_listeners,
    point_mail_servers_at,
    served_fingerprints,
    write_config,
)
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.server import make_traversable
from certkeeper.testbed.smtp_sink import SmtpSink
from certkeeper.values import field, frozen, mutable

# The daemon's log format outside journald (certkeeper/cli/daemon_cmd.py): time, level, message.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<message>.*)$")
_EVENT = re.compile(r"^(?P<event>[A-Z][A-Za-z]+) (?P<fields>\w+=.*)$")
_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")


@frozen
class DemoSettings:
    """How long certificates live and when the demo counts as done.

    ``renew_before`` is a duration, not the default "1/3": Pebble's lifetimes are exact (notBefore is the
    moment of issue), so with 60 s certificates "30s" renews every ~30 s, leaving the daemon 30 s of margin.
    """

    validity_seconds: int = 60
    renew_before: str = "30s"
    renewals: int = 2
    bound_seconds: float = 240.0
    key_types: tuple[KeyType, ...] = (KeyType.ECDSA_P256, KeyType.RSA_2048)
    keep: bool = False


@mutable
class DemoSummary:
    renewals: int = 0
    renewed_before_expiry: int = 0
    listeners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mails: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    completed: bool = False
    reason: str = ""
    directory: Path | None = None


class LogFollower:
    """New complete lines of a growing file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""

    def new_lines(self) -> list[str]:
        try:
            with self.path.open(errors="replace") as log:
                log.seek(self._offset)
                text = log.read()
                self._offset = log.tell()
        except FileNotFoundError:
            return []
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines


def parse_event(message: str) -> tuple[str, dict[str, str]] | None:
    """``CertificateIssued name=mail key_type=...`` (:meth:`certkeeper.events.Event.describe`) as name, fields."""
    match = _EVENT.match(message)
    if match is None:
        return None
    return match["event"], dict(_FIELD.findall(match["fields"]))


class Demo:
    """One run: servers, configuration, the daemon child process, and the narration."""

    def __init__(self, settings: DemoSettings, out: TextIO, directory: Path) -> None:
        self.settings = settings
        self.out = out
        self.directory = directory
        self.started = time.monotonic()
        self.summary = DemoSummary()
        self.state_dir = directory / "state"
        self.config_path = directory / "certkeeper.toml"
        self.daemon_log = directory / "daemon.log"
        self.home = CertificateHome(self.state_dir, CERTIFICATE)
        self.bind = Bind(directory / "bind")
        self.pebble = Pebble(directory / "pebble", bind=self.bind, validity_seconds=settings.validity_seconds)
        self.postfix = Postfix(directory / "postfix")
        self.dovecot = Dovecot(directory / "dovecot")
        self.sink = SmtpSink(directory / "sink")
        self.listeners: list[Listener] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self._previous_not_after: datetime | None = None
        self._renewal_verified = False
        self._postfix_log = LogFollower(self.postfix.log_path)
        self._dovecot_log = LogFollower(self.dovecot.log_path)

    # -- narration ---------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        for i, line in enumerate(text.splitlines()):
            prefix = f"[{elapsed:6.1f}s] " if i == 0 else " " * 10
            print(prefix + line, file=self.out, flush=True)

    def environment(self) -> dict[str, str]:
        """The children trust Pebble's HTTPS and the CA it issues from, as a host trusting a private CA would.

        Pebble's HTTPS certificate comes from a throwaway CA (and REQUESTS_CA_BUNDLE may be set machine-wide);
        the endpoint probes judge the served chain against the default trust store, which ``SSL_CERT_FILE``
        names.
        """
        bundle = self.directory / "trust.pem"
        if not bundle.exists():
            bundle.write_bytes(self.pebble.ca_file.read_bytes() + self.pebble.fetch_issuer_chain())
        return {**os.environ, "REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle)}

    def certkeeper(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(self.config_path), *args],
                              capture_output=True, text=True, env=self.environment(), timeout=180, check=False)

    # -- the steps ---------------------------------------------------------------------------------------------

    def bring_up(self, stack: ExitStack) -> None:
        self.bind.start()
        stack.callback(self.bind.stop)
        self.say(f"BIND is authoritative for example.test on {self.bind.nameserver} (every name is 127.0.0.1)")
        self.pebble.start()
        stack.callback(self.pebble.stop)
        self.say(f"Pebble, the ACME test CA, answers at {self.pebble.directory_url}; "
                 f"its certificates live {self.settings.validity_seconds} s")
        self.postfix.start()
        stack.callback(self.postfix.stop)
        self.say("Postfix listens on " + ", ".join(f"{n} {p}" for n, p in self.postfix.ports.items()))
        self.dovecot.start()
        stack.callback(self.dovecot.stop)
        self.say("Dovecot listens on " + ", ".join(f"{n} {p}" for n, p in self.dovecot.ports.items()))
        self.sink.start()
        stack.callback(self.sink.stop)
        self.say(f"an SMTP sink for alert mail listens on 127.0.0.1:{self.sink.port}")
        self.listeners = mail_listeners(self.postfix, self.dovecot)

    def issue_first(self) -> bool:
        trust_roots = self.pebble.write_issuer_chain(self.directory / "pebble-roots.pem")
        write = functools.partial(write_config, self.config_path, state_dir=self.state_dir, pebble=self.pebble,
                                  trust_roots=trust_roots, key_types=self.settings.key_types,
                                  renew_before=self.settings.renew_before)
        write()
        self.say("first issue, before any mail daemon reads certkeeper's files: certkeeper renew")
        result = self.certkeeper("renew")
        current = self.home.current()
        if result.returncode != 0 or current is None:
            self.summary.problems.append(f"the first issue failed: {result.stdout}{result.stderr}")
            self.say(f"the first issue failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
            return False
        self._previous_not_after = current.not_after
        self.say(f"issued and installed version {current.id} "
                 f"({', '.join(p.key_type for p in current.pairs)}), valid until {current.not_after:%H:%M:%S} UTC")
        point_mail_servers_at(self.home.current_link, self.settings.key_types, self.postfix, self.dovecot)
        self.say(f"Postfix (smtpd_tls_chain_files) and Dovecot (ssl_cert, ssl_alt_cert) now read\n"
                 f"{self.home.current_link}/ and were reloaded once by hand")
        write(postfix=self.postfix, dovecot=self.dovecot, sink=self.sink)
        self.say(f"configuration {self.config_path}: reload hooks postfix and dovecot, "
                 f"{len(self.listeners)} endpoints, alerts to the sink, renew_before = {self.settings.renew_before}")
        return True

    def start_daemon(self) -> None:
        with self.daemon_log.open("wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "certkeeper", "-c", str(self.config_path), "daemon"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.environment())
        self.say(f"started the daemon: certkeeper -c {self.config_path.name} daemon (pid {self.daemon.pid})")

    def stop_daemon(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()

    def watch(self) -> None:
        """Follow the daemon until it renewed often enough and a mail arrived, or the bound passes."""
        assert self.daemon is not None
        daemon_log = LogFollower(self.daemon_log)
        self._postfix_log.new_lines()  # skip what happened before the daemon
        self._dovecot_log.new_lines()
        deadline = self.started + self.settings.bound_seconds
        mails_seen = 0
        while True:
            for line in daemon_log.new_lines():
                self.on_daemon_line(line)
            self.drain_server_logs()
            for message in self.sink.messages[mails_seen:]:
                mails_seen += 1
                subject = str(message["Subject"])
                self.summary.mails.append(subject)
                self.say(f"alert mail landed in the sink: {subject!r} (to {message['To']})")
            if self.summary.renewals >= self.settings.renewals and self._renewal_verified and self.summary.mails:
                self.summary.completed = True
                return
            if self.daemon.poll() is not None:
                self.summary.reason = f"the daemon exited with status {self.daemon.returncode}"
                return
            if time.monotonic() > deadline:
                self.summary.reason = (f"the bound of {self.settings.bound_seconds:.0f} s passed with "
                                       f"{self.summary.renewals} of {self.settings.renewals} renewals and "
                                       f"{len(self.summary.mails)} mails")
                return
            time.sleep(0.2)

    def drain_server_logs(self) -> None:
        """Tell the reloads Postfix and Dovecot logged themselves."""
        for line in self._postfix_log.new_lines():
            if "refreshing the Postfix mail system" in line:
                self.say("  Postfix reloaded (its log: refreshing the Postfix mail system)")
        for line in self._dovecot_log.new_lines():
            if "SIGHUP received" in line:
                self.say("  Dovecot reloaded (its log: SIGHUP received - reloading configuration)")

    def on_daemon_line(self, line: str) -> None:
        match = _LOG_LINE.match(line)
        if match is None:
            return
        level, message = match["level"], match["message"]
        event = parse_event(message)
        if event is not None:
            self.on_event(*event)
        elif message.startswith("certkeeper daemon started"):
            self.say(f"daemon: started, {message.split(': ', 1)[-1]}")
            self.say_next_renewal()
        elif message.startswith("running hook "):
            hook = message.split()[2]
            self.say(f"reload hook {Path(hook).name}: {hook}")
        elif message.startswith(f"{CERTIFICATE}: renewed: "):
            self.on_renewed()
        elif message.startswith("alert queued: "):
            self.say(f"alert queued for {ALERT_TO}: {message.removeprefix('alert queued: ')}")
        elif level in ("WARNING", "ERROR", "CRITICAL"):
            self.summary.problems.append(message)
            self.say(f"daemon {level.lower()}: {message}")

    def on_event(self, name: str, fields: dict[str, str]) -> None:
        if name == "CertificateIssued":
            self._renewal_verified = False
            not_after = datetime.fromisoformat(fields.get("not_after", ""))
            self.say(f"Pebble issued a {fields.get('key_type')} certificate for {', '.join(DOMAINS)}: serial "
                     f"{fields.get('serial', '')[:16]}…, valid until {not_after:%H:%M:%S} UTC")
        elif name == "CertificateInstalled":
            self.say(f"installed version {fields.get('version')}: a new folder under versions/, then one "
                     f"atomic rename of current -> versions/{fields.get('version')}")
        elif name == "CertificateVerified":
            time.sleep(0.2)  # the servers' own log lines about the reload, which came first, are told first
            self.drain_server_logs()
            self.on_verified(fields.get("version", ""))
        elif name in ("RenewalFailed", "RolledBack", "ReloadHookFailed", "ServedCertificateStale",
                      "EndpointFailed", "ConfigReloadRejected"):
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            self.summary.problems.append(f"{name} {text}")
            self.say(f"problem: {name}: {text}")

    def on_verified(self, version: str) -> None:
        current = self.home.current()
        expected = current.fingerprints if current else frozenset()
        served = served_fingerprints([listener.endpoint for listener in self.listeners],
                                     dual=len(self.settings.key_types) > 1)
        lines = [f"verified from the outside: every listener serves version {version}"]
        ok = True
        for listener in self.listeners:
            shown = served.get(listener.endpoint, ("nothing",))
            fingerprints = {s.split()[-1] for s in shown}
            good = bool(expected) and expected <= fingerprints
            ok = ok and good
            if good:
                self.summary.listeners[listener.endpoint] = shown
            pretty = "  ".join(f"{s.split()[0]} {s.split()[-1][:16]}…" for s in shown)
            lines.append(f"  {'ok ' if good else 'BAD'} {listener.label:<20} {listener.endpoint:<26} {pretty}")
        self.say("\n".join(lines))
        if not ok:
            self.summary.problems.append(f"a listener does not serve version {version}")
        self._renewal_verified = ok

    def on_renewed(self) -> None:
        now = pki.now_utc()
        self.summary.renewals += 1
        current = self.home.current()
        before = self._previous_not_after
        if before is not None and now < before:
            self.summary.renewed_before_expiry += 1
            margin = f", {(before - now).total_seconds():.0f} s before the previous certificate expired"
        else:
            margin = ""
        self.say(f"renewal {self.summary.renewals} done by the daemon{margin}")
        self._previous_not_after = current.not_after if current else None
        self.say_next_renewal()

    def say_next_renewal(self) -> None:
        result = self.certkeeper("status", "--json")
        try:
            [row] = [r for r in json.loads(result.stdout) if r["name"] == CERTIFICATE]
        except (ValueError, KeyError):
            return
        self.say(f"certkeeper status: version {row['version']}, next: {row['next_action']} ({row['next_reason']})")

    def report(self) -> None:
        s = self.summary
        state = "completed" if s.completed else f"did NOT complete: {s.reason}"
        self.say(
            f"summary: the loop {state}\n"
            f"  renewals by the daemon: {s.renewals} ({s.renewed_before_expiry} before the previous certificate "
            f"expired), plus the first issue\n"
            f"  listeners verified: {len(s.listeners)} of {len(self.listeners)}\n"
            f"  alert mails received: {len(s.mails)}"
            + "".join(f"\n    {subject}" for subject in s.mails)
            + f"\n  problems logged: {len(s.problems)}\n  time: {s.seconds:.0f} s")


def run_demo(settings: DemoSettings = DemoSettings(), *, out: TextIO = sys.stdout,
             base: Path | None = None) -> DemoSummary:
    """Run the demo end to end; the summary says whether the loop completed.  Everything is stopped after."""
    directory = Path(tempfile.mkdtemp(prefix="certkeeper-demo-", dir=base))
    make_traversable(directory)  # Postfix and Dovecot drop privileges and must reach their folders
    demo = Demo(settings, out, directory)
    demo.summary.directory = directory
    demo.say(f"certkeeper demo in {directory} (at most {settings.bound_seconds:.0f} s, loopback only)")
    try:
        with ExitStack() as stack:
            demo.bring_up(stack)
            if demo.issue_first():
                stack.callback(demo.stop_daemon)
                demo.start_daemon()
                demo.watch()
            else:
                demo.summary.reason = "the first issue failed"
            if not demo.summary.completed and demo.daemon_log.exists():
                tail = "\n".join(demo.daemon_log.read_text(errors="replace").splitlines()[-30:])
                demo.say(f"the daemon's last log lines:\n{tail}")
            demo.say("stopping the daemon, Postfix, Dovecot, Pebble, BIND and the sink")
    finally:
        demo.summary.seconds = time.monotonic() - demo.started
        demo.report()
        if settings.keep:
            demo.say(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return demo.summary

