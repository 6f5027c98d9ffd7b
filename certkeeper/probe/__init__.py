"""certkeeper's eyes: connect to a mail endpoint, get to TLS, and judge the certificate chain it serves.

- :mod:`~certkeeper.probe.result`   the values: :class:`ProbeOptions`, :class:`ProbeResult`, findings
- :mod:`~certkeeper.probe.dialects` SMTP/IMAP/POP3/ManageSieve STARTTLS: pure reply parsers + dialogues
- :mod:`~certkeeper.probe.engine`   asyncio + pyOpenSSL: the only module touching sockets and TLS
- :mod:`~certkeeper.probe.judge`    pure: served chain + ``now`` -> summaries and findings
- :mod:`~certkeeper.probe.report`   Nagios line, perfdata, JSON

Status semantics follow the monitoring-plugins guidelines: an endpoint that cannot be reached, times out,
lacks or refuses STARTTLS, or fails the handshake is CRITICAL (a mail outage from a client's view); UNKNOWN
is for internal failures only.
"""

from certkeeper.probe.engine import Prober, load_trust_anchors, probe_many, probe_sync, probe_target
from certkeeper.probe.judge import thresholds_for
from certkeeper.probe.report import nagios_line, perfdata, result_to_json
from certkeeper.probe.result import (
    EXIT_CODES,
    CertificateSummary,
    Finding,
    ProbeOptions,
    ProbeResult,
    worst_status,
)

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
