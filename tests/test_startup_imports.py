"""What one ``certkeeper check`` process loads: the probe and nothing of the renewal machinery (issue 23).

Nagios starts a process per check; its cost is mostly imports.  These tests run the real command in a fresh
interpreter and look at ``sys.modules`` afterwards; nothing is timed.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from certkeeper.cli import parser
from tests.configs import internal_ca_config
from tests.probe_servers import Pki, ServerLoop, _hold, smtp_server

# Libraries and certkeeper parts that a check never needs: ACME, the scheduler, DNS, the configuration and the
# store (check reads neither), the parsers of TOML and of the other commands.
NOT_FOR_CHECK = ("acme", "josepy", "apscheduler", "dns", "psycopg", "tomllib", "sqlite3", "shutil", "fractions",
                 "certkeeper.config", "certkeeper.store", "certkeeper.issuers", "certkeeper.renewal",
                 "certkeeper.app", "certkeeper.daemon", "certkeeper.cli.renew", "certkeeper.cli.status")
# One endpoint (what Nagios runs) takes the lean path: none of the engine's libraries either (issue 23: importing
# them costs ten times the handshake), nor logging, which only the engine's runs set up.  Nor typing (3 ms): the
# modules on this path import it only for the type checker, under ``TYPE_CHECKING = False`` (which mypy reads as
# typing's).  Nor dataclasses, with the inspect, ast and dis it brings: the value classes are certkeeper.values'.
# Nor importlib.util: the CLI imports the command's module by its name.  Nor pathlib (with urllib.parse and
# fnmatch, 1.7 ms): --ca-file stays the str it was given.  Nor argparse, with gettext and locale, and the parser
# it builds (5 ms): the line is read by certkeeper.cli.quick.  Nor hashlib, whose _hashlib sets up OpenSSL's list
# of digests (3 ms) before the one SHA-256 the fingerprints need: certkeeper.probe.der takes the interpreter's.
NOT_FOR_ONE_CHECK = (*NOT_FOR_CHECK, "asyncio", "OpenSSL", "cryptography", "certkeeper.probe.engine",
                     "certkeeper.probe.judge", "certkeeper.pki", "logging", "encodings.idna", "typing",
                     "importlib.util", "dataclasses", "inspect", "pathlib", "argparse", "gettext", "locale",
                     "certkeeper.cli.parser", "hashlib", "_hashlib")

# As the ``certkeeper`` console script runs the command (``python -m`` would load runpy, and importlib.util with
# it); what the interpreter loaded before the command started (site, the venv's .pth files) is not the command's.
# An editable install's finder imports importlib.util and pathlib at start: forgotten first, so that the command
# importing them again shows (a second copy of either module is harmless).
RUN_AND_LIST = """
import sys
sys.modules.pop("importlib.util", None)
sys.modules.pop("pathlib", None)
started = set(sys.modules)
sys.argv = ["certkeeper", *sys.argv[1:]]
from certkeeper.cli import run
try:
    run()
except SystemExit as exc:
    status = exc.code
import json
print(json.dumps({"status": status, "modules": sorted(set(sys.modules) - started)}))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def modules_after(*arguments: str) -> tuple[int, set[str]]:
    # Without the suite's coverage measurement: started in the child, it loads tomllib and sqlite3 itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST, *arguments], capture_output=True, text=True,
                          timeout=60, check=False, env=env)
    report = json.loads(done.stdout.splitlines()[-1])
    return int(report["status"]), set(report["modules"])


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_check_loads_the_probe_and_nothing_of_acme_the_daemon_or_the_configuration() -> None:
    port = closed_port()
    status, modules = modules_after("check", f"smtps://mail.test:{port}", f"imaps://mail.test:{port}",
                                    "--servername", "mail.test", "--timeout", "2")
    assert status == 2  # CRITICAL: nothing listens there; the probe really ran
    assert "certkeeper.probe.engine" in modules  # two endpoints: the full engine
    assert [name for name in NOT_FOR_CHECK if loaded(modules, name)] == []


def test_one_check_loads_neither_asyncio_nor_pyopenssl_nor_cryptography(servers: ServerLoop, pki: Pki) -> None:
    for scheme, handler, context in (("smtps", _hold, pki.context(pki.leaf("mail.test"))),
                                     ("smtp", smtp_server(pki.context(pki.leaf("mail.test"))), None)):
        port = servers.serve(handler, context)
        status, modules = modules_after("check", f"{scheme}://127.0.0.1:{port}", "--servername", "mail.test",
                                        "--ca-file", str(pki.ca_file))
        assert status == 0  # OK: the chain was read and verified
        assert "certkeeper.probe.lean" in modules
        assert [name for name in NOT_FOR_ONE_CHECK if loaded(modules, name)] == []
        # The STARTTLS dialogues only for a STARTTLS target: implicit TLS has no dialogue.
        assert ("certkeeper.probe.dialects" in modules) == (scheme == "smtp")


def test_one_check_that_fails_before_tls_loads_no_more(pki: Pki) -> None:
    status, modules = modules_after("check", f"smtp://127.0.0.1:{closed_port()}", "--servername", "mail.test",
                                    "--ca-file", str(pki.ca_file))
    assert status == 2
    assert [name for name in NOT_FOR_ONE_CHECK if loaded(modules, name)] == []


def test_check_json_loads_no_more_than_the_nagios_line() -> None:
    status, modules = modules_after("check", "--json", f"smtps://127.0.0.1:{closed_port()}", "--servername",
                                    "mail.test")
    assert status == 2
    # An address and an ASCII server name: no host name to resolve, so not even the IDNA codec is loaded.
    assert [name for name in NOT_FOR_ONE_CHECK if loaded(modules, name)] == []


def test_the_command_word_finds_its_module_by_name_and_a_missing_dependency_is_not_a_missing_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    every = parser._command_modules(None)
    assert parser._command_modules("check") == ["check"]
    assert parser._command_modules("daemon") == ["daemon_cmd"]
    assert parser._command_modules("no-such") == parser._command_modules("nosuch") == every
    assert "check" in every and "daemon_cmd" in every

    def missing_library(name: str) -> None:
        msg = "No module named 'acme'"
        raise ModuleNotFoundError(msg, name="acme")

    monkeypatch.setattr(importlib, "import_module", missing_library)
    with pytest.raises(ModuleNotFoundError, match="acme"):
        parser._command_modules("renew")


def test_check_json_is_an_array_with_one_object_per_line() -> None:
    port = closed_port()
    done = subprocess.run([sys.executable, "-m", "certkeeper", "check", "--json", f"smtps://127.0.0.1:{port}",
                           f"imaps://127.0.0.1:{port}"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 4
    results = json.loads(done.stdout)
    assert [r["status"] for r in results] == ["CRITICAL", "CRITICAL"]
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == results


# What a `renew` with nothing due never needs: it decides from each version.json (hashed at install, then trusted
# by the files' identity), so no certificate is parsed, no issuer built, nothing published or probed; nothing is
# ordered (the order budget and the Public Suffix List), issued on threads, removed or rewritten (shutil and
# tempfile, which bring zlib, bz2, lzma and random; argparse loads shutil for every parser unless the formatter
# reads the terminal width itself), and the configuration has no mistake to suggest a spelling for (difflib).
# Nor dataclasses and inspect: some sixty value classes are made at start, by certkeeper.values.  Nor tomllib: the
# configuration, unchanged since the run before, is what that run read (certkeeper.config.cache).  Nor argparse
# with gettext and locale: cron's line is read by certkeeper.cli.quick.
NOT_FOR_RENEW_NONE_DUE = ("argparse", "gettext", "locale", "certkeeper.cli.parser", "tomllib", "dataclasses",
                          "inspect", "cryptography", "acme", "josepy", "apscheduler", "dns", "psycopg", "OpenSSL",
                          "certkeeper.issuers.acme", "certkeeper.issuers.internal_ca", "certkeeper.dane",
                          "certkeeper.probe", "certkeeper.alerts", "certkeeper.monitoring", "certkeeper.mtasts",
                          "certkeeper.daemon", "certkeeper.store.budget", "certkeeper.public_suffix",
                          "concurrent.futures", "shutil", "tempfile", "bz2", "lzma", "difflib", "importlib.util")


def test_renew_with_nothing_due_parses_no_certificate_and_builds_no_issuer(tmp_path: Path) -> None:
    (tmp_path / "ca.pass").write_text("startup imports\n")
    (tmp_path / "ca.pass").chmod(0o600)
    config = internal_ca_config(tmp_path, domains=("mail.example.org", "smtp.example.org"),
                                issuer=f'passphrase_file = "{tmp_path / "ca.pass"}"')
    for command in (["ca", "init"], ["renew", "--quiet"]):
        done = subprocess.run([sys.executable, "-m", "certkeeper", "-c", str(config), *command], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    status, modules = modules_after("-c", str(config), "renew", "--quiet")
    assert status == 0
    assert "certkeeper.renewal.lifecycle" in modules  # the pass really ran
    assert [name for name in NOT_FOR_RENEW_NONE_DUE if loaded(modules, name)] == []
