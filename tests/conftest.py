"""Shared fixtures. Sections: the test bed's real servers; failure reports. Add new sections below.

The servers come from :mod:`certkeeper.testbed`: real daemons on 127.0.0.1 with ports picked at
start, each in its own folder under pytest's temporary directory (kept for the last three runs,
logs included). Session fixtures are started once and shared: tests must not break them; a
test that reloads, restarts or misconfigures a server takes its own from a ``*_factory``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from certkeeper.testbed.bind import Bind
from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.exim import Exim
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.server import Server, read_log_tail
from certkeeper.testbed.smtp_sink import SmtpSink
from tests.probe_servers import Pki, ServerLoop

# Property tests draw the same examples on every run (derived from each test's name), so the suite gives the same
# verdict on every machine; `HYPOTHESIS_PROFILE=explore` draws fresh ones, to look for new counterexamples.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

SINK_USERNAME = "certkeeper"
SINK_PASSWORD = "alert-password"
# Servers a test made through a factory, so a failure report can show their logs too.
_MADE_SERVERS = pytest.StashKey[list[Server]]()



@pytest.fixture(scope="session", autouse=True)
def config_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cache of configurations read (certkeeper.config.cache) in the run's own folder, not /var/cache: every
    test and every certkeeper process a test starts reads its configurations through it, as a host does."""
    folder = tmp_path_factory.mktemp("config-cache")
    folder.chmod(0o700)
    before = os.environ.get("CERTKEEPER_CACHE_DIR")
    os.environ["CERTKEEPER_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        del os.environ["CERTKEEPER_CACHE_DIR"]
    else:
        os.environ["CERTKEEPER_CACHE_DIR"] = before


# --- the test bed: session-wide servers -------------------------------------------------


@pytest.fixture(scope="session")
def testbed_ca() -> TestCA:
    """The CA that signed the seed certificates of Postfix, Dovecot and the SMTP sink."""
    return TestCA("certkeeper test bed CA")


@pytest.fixture(scope="session")
def testbed_ca_file(tmp_path_factory: pytest.TempPathFactory, testbed_ca: TestCA) -> Path:
    """:func:`testbed_ca`'s certificate as PEM, for clients to trust."""
    return testbed_ca.write_cert(tmp_path_factory.mktemp("testbed-ca") / "ca.pem")


@pytest.fixture(scope="session")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with Bind(tmp_path_factory.mktemp("bind")) as server:
        yield server


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Pebble]:
    with Pebble(tmp_path_factory.mktemp("pebble"), bind=bind) as server:
        yield server


@pytest.fixture(scope="session")
def postfix(tmp_path_factory: pytest.TempPathFactory, testbed_ca: TestCA) -> Iterator[Postfix]:
    with Postfix(tmp_path_factory.mktemp("postfix"), ca=testbed_ca) as server:
        yield server


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory, testbed_ca: TestCA) -> Iterator[Dovecot]:
    with Dovecot(tmp_path_factory.mktemp("dovecot"), ca=testbed_ca) as server:
        yield server


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory: pytest.TempPathFactory, testbed_ca: TestCA) -> Iterator[SmtpSink]:
    """STARTTLS and implicit TLS, AUTH required (:data:`SINK_USERNAME` / :data:`SINK_PASSWORD`)."""
    directory = tmp_path_factory.mktemp("smtp-sink")
    key_file, cert_file = testbed_ca.issue(["127.0.0.1", "localhost"]).write(directory, "sink")
    sink = SmtpSink(directory, cert_file=cert_file, key_file=key_file, username=SINK_USERNAME, password=SINK_PASSWORD)
    with sink:
        yield sink


@pytest.fixture
def smtp_sink_inbox(smtp_sink: SmtpSink) -> SmtpSink:
    """The session sink, emptied for this test."""
    smtp_sink.clear()
    return smtp_sink


@pytest.fixture
def acme_client_env(pebble: Pebble, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Make HTTPS clients trust the session Pebble (overriding this machine's REQUESTS_CA_BUNDLE)."""
    environment = pebble.client_env()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


# --- the test bed: fresh servers for tests that change them ------------------------------


def _factory(request: pytest.FixtureRequest, kind: type[Server], **defaults: Any) -> Iterator[Callable[..., Any]]:
    """Yield ``make(start=True, **options)``; stops every server it made after the test."""
    made = request.node.stash.setdefault(_MADE_SERVERS, [])
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")

    def make(start: bool = True, **options: Any) -> Any:
        server = kind(tmp_path_factory.mktemp(kind.__name__.lower()), **{**defaults, **options})
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def postfix_factory(request: pytest.FixtureRequest, testbed_ca: TestCA) -> Iterator[Callable[..., Postfix]]:
    """``postfix_factory(start=True, main_cf=..., listeners=..., listener_options=..., master_cf_extra=...)``."""
    yield from _factory(request, Postfix, ca=testbed_ca)


@pytest.fixture
def dovecot_factory(request: pytest.FixtureRequest, testbed_ca: TestCA) -> Iterator[Callable[..., Dovecot]]:
    yield from _factory(request, Dovecot, ca=testbed_ca)


@pytest.fixture
def exim_factory(request: pytest.FixtureRequest, testbed_ca: TestCA) -> Iterator[Callable[..., Exim]]:
    """``exim_factory(start=True, listeners=..., tls=...)``: a private Exim 4.96 (Debian's, unpacked)."""
    yield from _factory(request, Exim, ca=testbed_ca)


@pytest.fixture
def pebble_factory(request: pytest.FixtureRequest, bind: Bind) -> Iterator[Callable[..., Pebble]]:
    """``pebble_factory(nonce_reject_percent=..., validity_seconds=..., eab_keys=...)``."""
    yield from _factory(request, Pebble, bind=bind)


# --- failure reports ----------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the log tails of the servers a failed test used to its report."""
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    used = [value for value in getattr(item, "funcargs", {}).values() if isinstance(value, Server)]
    for server in used + item.stash.get(_MADE_SERVERS, []):
        report.sections.append((f"{server.name} log ({server.log_path})", read_log_tail(server.log_path)))


# --- the probe tests' own loopback servers (tests/probe_servers.py) ---------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("ca"))
