"""``[mta_sts.<domain>]``: the MTA-STS policy certkeeper publishes and guards for one mail domain (RFC 8461).

Parsed like the rest of the configuration: typed getters on a :class:`~certkeeper.config_table.Table`, every
mistake located, collected rather than raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certkeeper.config.table import MAX_TTL, Table, did_you_mean
from certkeeper.model import MTA_STS_MAX_AGE_LIMIT as MAX_AGE_LIMIT
from certkeeper.model import MTA_STS_MODES as MODES
from certkeeper.model import mx_pattern_problem as pattern_problem
from certkeeper.values import frozen

if TYPE_CHECKING:
    from certkeeper.model import MtaStsMode as Mode

DEFAULT_MAX_AGE = 604_800  # one week: long enough to protect, short enough to change the MX set within a week


@frozen
class MtaStsConfig:
    """One ``[mta_sts.<domain>]`` table."""

    domain: str
    mode: Mode = "testing"
    mx: tuple[str, ...] = ()  # empty: derived from ``certificates`` (their port-25 endpoints, else their domains)
    certificates: tuple[str, ...] = ()  # the MX certificates; empty: every certificate with an smtp :25 endpoint
    max_age: int = DEFAULT_MAX_AGE
    narrow_after: timedelta | None = None  # None: the published policy's max_age
    webroot: Path | None = None
    serve: str | None = None  # HOST:PORT of the daemon's own HTTPS policy server
    serve_certificate: str | None = None  # the certkeeper certificate for mta-sts.<domain> it serves with
    dns_server: str | None = None
    tsig_key_file: Path | None = None
    zone: str | None = None
    ttl: int = 3600
    rua: tuple[str, ...] = ()  # TLS-RPT (RFC 8460) report addresses: _smtp._tls.<domain> TXT

    @property
    def policy_host(self) -> str:
        return f"mta-sts.{self.domain}"


def parse_mta_sts(domain: str, t: Table, certificates: Mapping[str, Any]) -> MtaStsConfig:
    """``[mta_sts.<domain>]``; ``certificates`` are the configured certificates (names are checked against it)."""
    domain = domain.lower().rstrip(".")
    if pattern_problem(domain) or domain.startswith("*."):
        t.error("", repr(domain), "a mail domain such as [mta_sts.\"example.org\"]")
    mode: Mode = t.choice("mode", MODES, "testing")
    mx = tuple(p.lower() for p in t.string_list("mx", ()) or ())
    for i, pattern in enumerate(mx):
        problem = pattern_problem(pattern)
        if problem:
            t.error(f"mx[{i}]", repr(pattern), 'an MX host name or "*." and a domain (RFC 8461 section 3.2)', problem)
    names = tuple(t.string_list("certificates", ()) or ())
    for i, name in enumerate(names):
        if name not in certificates:
            t.error(f"certificates[{i}]", repr(name), "the name of a certificate under [certificates]",
                    did_you_mean(name, certificates))
    config = MtaStsConfig(
        domain=domain,
        mode=mode,
        mx=mx,
        certificates=names,
        max_age=t.seconds("max_age", DEFAULT_MAX_AGE, maximum=MAX_AGE_LIMIT),  # RFC 8461 section 3.2
        narrow_after=t.duration("narrow_after", None),
        webroot=t.path("webroot", None),
        serve=t.string("serve", None),
        serve_certificate=t.string("certificate", None),
        dns_server=t.string("dns_server", None),
        tsig_key_file=t.absolute_path("tsig_key_file", None),
        zone=t.string("zone", None),
        ttl=t.integer("ttl", 3600, minimum=1, maximum=MAX_TTL),
        rua=tuple(t.string_list("rua", ()) or ()),
    )
    _check_serving(t, config, certificates)
    _check_dns_and_reports(t, config)
    t.finish()
    return config


def _check_serving(t: Table, config: MtaStsConfig, certificates: Mapping[str, Any]) -> None:
    """``webroot`` or ``serve`` (with a ``certificate`` for ``mta-sts.<domain>``)."""
    if config.webroot is None and config.serve is None:
        t.error("webroot", "neither webroot nor serve", 'webroot = "/var/www/mta-sts" (a web server serves it as '
                f'https://{config.policy_host}/.well-known/mta-sts.txt) or serve = "127.0.0.1:8443" (certkeeper '
                "serves it)")
    if config.webroot is not None and not config.webroot.is_absolute():
        t.error("webroot", repr(str(config.webroot)), "an absolute path")
    if config.serve is not None:
        host, colon, port = config.serve.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            t.error("serve", repr(config.serve), 'HOST:PORT to listen on, such as "127.0.0.1:8443" or "[::]:443"')
        if config.serve_certificate is None:
            t.error("certificate", "nothing", f"the certificate (under [certificates]) for {config.policy_host} "
                                              "that the policy server presents, when serve is set")
    if config.serve_certificate is not None:
        if config.serve_certificate not in certificates:
            t.error("certificate", repr(config.serve_certificate), "the name of a certificate under [certificates]",
                    did_you_mean(config.serve_certificate, certificates))
        elif config.policy_host not in getattr(certificates[config.serve_certificate], "domains", ()):
            t.error("certificate", repr(config.serve_certificate),
                    f"a certificate whose domains include {config.policy_host}",
                    "senders verify the policy host's certificate for that name")


def _check_dns_and_reports(t: Table, config: MtaStsConfig) -> None:
    """RFC 2136 settings come in pairs; TLS-RPT ``rua`` entries are URIs (RFC 8460 section 3)."""
    if bool(config.dns_server) != bool(config.tsig_key_file) and (config.dns_server or config.tsig_key_file):
        missing = "tsig_key_file" if config.dns_server else "dns_server"
        t.error(missing, "nothing", f"{missing} too: the TXT records are sent as TSIG-signed RFC 2136 updates")
    for i, address in enumerate(config.rua):
        if not address.startswith(("mailto:", "https://")):
            t.error(f"rua[{i}]", repr(address), 'a "mailto:" or "https://" URI (RFC 8460 section 3)')
        elif any(c in address for c in ";, \t"):
            t.error(f"rua[{i}]", repr(address), "a URI without ';', ',' or spaces (percent-encode them)")
