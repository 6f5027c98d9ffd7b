"""What blackbox_exporter and ssl_exporter would say about the same certificate: their label values, exactly.

Pure functions from the probe's JSON (as the store keeps it) to label values, so rules and dashboards written
for those exporters work on certkeeper's metrics unchanged.  Checked against Debian 12's blackbox_exporter
0.23 side by side (``tests/test_blackbox_parity.py``):

- ``probe_ssl_last_chain_info``: ``fingerprint_sha256``, ``subject`` and ``issuer`` as Go's
  ``pkix.Name.String()`` writes them (``CN=mail.example.org,O=Example``), ``subjectalternative`` the DNS names
  joined by ``,`` (IP addresses are not in it).  0.23 has no ``serialnumber`` label; newer versions do.
- ``probe_tls_version_info{version="TLS 1.3"}``, not OpenSSL's ``TLSv1.3``.
- ``probe_ssl_last_chain_expiry_timestamp_seconds``: only for a chain that verified, the earliest expiry in it.
  blackbox counts the trust anchor from its own store too; certkeeper counts the served certificates (a root
  outliving the certificates it signed is the normal case).

ssl_exporter names installed files ``ssl_file_cert_not_after`` with ``file``, ``serial_no`` (decimal),
``issuer_cn``, ``cn``, ``dnsnames`` and ``ips`` (each list written ``,a,b,``), ``emails`` and ``ou``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from certkeeper.targets import is_ip_literal

# OpenSSL's protocol names -> Go's (blackbox_exporter's getTLSVersion).
_TLS_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.0": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2",
                 "TLSv1.3": "TLS 1.3"}
_SEVERITY_ORDER = {"UNKNOWN": 0, "CRITICAL": 1, "WARNING": 2}


def tls_version_label(version: str) -> str:
    """``TLSv1.3`` -> ``TLS 1.3``; an unknown name passes through."""
    return _TLS_VERSIONS.get(version, version)


def chain_info_labels(certificate: Mapping[str, Any], fallback_fingerprint: str = "") -> dict[str, str]:
    """The labels of ``probe_ssl_last_chain_info`` for the leaf, from its JSON summary."""
    names = [str(n) for n in certificate.get("subject_alternative_names") or () if not is_ip_literal(str(n))]
    # Records written before subject_dn existed hold only the common name.
    subject = str(certificate.get("subject_dn") or f"CN={certificate.get('subject', '')}")
    issuer = str(certificate.get("issuer_dn") or f"CN={certificate.get('issuer', '')}")
    return {"fingerprint_sha256": str(certificate.get("fingerprint_sha256") or fallback_fingerprint),
            "issuer": issuer, "subject": subject, "subjectalternative": ",".join(names)}


def reason_code(details: Mapping[str, Any], status: str) -> str:
    """The worst finding's code (``certificate-expired``, ``connection-failed``, ...), or ``ok``: a label value
    that changes when the problem changes, never from one day to the next as a message would."""
    findings = [f for f in details.get("findings") or () if isinstance(f, dict)
                and f.get("severity") in _SEVERITY_ORDER]
    if findings:
        worst = min(findings, key=lambda f: _SEVERITY_ORDER[str(f["severity"])])
        return str(worst.get("code") or "unknown")
    return "ok" if status.upper() in ("OK", "WARNING") else "unknown"


def list_label(values: Sequence[str]) -> str:
    """ssl_exporter's lists: ``,a,b,`` (empty: ``""``), so a regex can match ``,name,`` whole."""
    return "," + ",".join(values) + "," if values else ""
