"""certkeeper's eyes: connect to a mail endpoint, get to TLS, and judge the certificate chain it serves.

- :mod:`~certkeeper.probe.result`      the values: :class:`ProbeOptions`, :class:`ProbeResult`, findings
- :mod:`~certkeeper.probe.dialects`    SMTP/IMAP/POP3/ManageSieve STARTTLS: pure reply parsers + dialogues
- :mod:`~certkeeper.probe.conversation` the line channel they run over: limits, :class:`Progress`, errors
- :mod:`~certkeeper.probe.engine`      asyncio: many endpoints, every option, one deadline per target
- :mod:`~certkeeper.probe.wire`        one connection on event-loop callbacks: connect, dialogue, pyOpenSSL handshake
- :mod:`~certkeeper.probe.lean`        one endpoint over a blocking socket and the stdlib ``ssl`` (what Nagios runs)
- :mod:`~certkeeper.probe.judge`       pure: served chain + ``now`` -> summaries and findings (over ``cryptography``)
- :mod:`~certkeeper.probe.verdict`     the judgements and words both share, with no certificate library
- :mod:`~certkeeper.probe.der`         the lean path's reader of the served certificates
- :mod:`~certkeeper.probe.report`      Nagios line, perfdata, JSON

Status semantics follow the monitoring-plugins guidelines: an endpoint that cannot be reached, times out,
lacks or refuses STARTTLS, or fails the handshake is CRITICAL (a mail outage from a client's view); UNKNOWN
is for internal failures only.

The names below are loaded on first use (PEP 562): importing :mod:`certkeeper.probe.result` for one check must
not load the engine (asyncio, pyOpenSSL, cryptography: ten ``openssl s_client`` runs of start-up).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from certkeeper.probe.engine import Prober, load_trust_anchors, probe_many, probe_sync, probe_target
    from certkeeper.probe.report import nagios_line, perfdata, result_to_json
    from certkeeper.probe.result import (
        EXIT_CODES,
        CertificateSummary,
        Finding,
        ProbeOptions,
        ProbeResult,
        worst_status,
    )
    from certkeeper.probe.verdict import thresholds_for

_HOMES = {
    "Prober": "engine", "load_trust_anchors": "engine", "probe_many": "engine", "probe_sync": "engine",
    "probe_target": "engine", "nagios_line": "report", "perfdata": "report", "result_to_json": "report",
    "EXIT_CODES": "result", "CertificateSummary": "result", "Finding": "result", "ProbeOptions": "result",
    "ProbeResult": "result", "worst_status": "result", "thresholds_for": "verdict",
}

__all__ = [
    "EXIT_CODES",
    "CertificateSummary",
    "Finding",
    "ProbeOptions",
    "ProbeResult",
    "Prober",
    "load_trust_anchors",
    "nagios_line",
    "perfdata",
    "probe_many",
    "probe_sync",
    "probe_target",
    "result_to_json",
    "thresholds_for",
    "worst_status",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
