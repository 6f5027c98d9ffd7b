"""The configuration file: TOML in, frozen types out, every mistake located.

Parsed once (:func:`load_config`) into :class:`Config`; nothing else in certkeeper reads TOML (tomllib's answer for
an unchanged file is kept between runs: :mod:`certkeeper.config.cache`).  Every error
names the file, the key path (``certificates.mail.issuer``), what was found and what was expected, with a
"did you mean" for near-miss keys.  Errors are collected, not raised one at a time, so an administrator sees
all of them in one ``certkeeper config check``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from certkeeper.config.cache import cached_toml
from certkeeper.config.mtasts import MtaStsConfig, parse_mta_sts
from certkeeper.config.table import MAX_DAYS, MAX_TTL, Table, did_you_mean
from certkeeper.config.tlsrpt import TlsrptConfig, parse_tlsrpt
from certkeeper.errors import ConfigError, ConfigErrors, UsageError
from certkeeper.model import KeyType, RenewBefore, format_duration, parse_listen
from certkeeper.targets import Target
from certkeeper.values import field, frozen

DEFAULT_CONFIG_PATH = Path("/etc/certkeeper/certkeeper.toml")
CONFIG_ENV = "CERTKEEPER_CONFIG"

SmtpSecurity = Literal["none", "starttls", "tls"]
SmtpTlsFallback = Literal["none", "unverified-no-auth"]
Challenge = Literal["http-01", "dns-01", "dns-account-01", "dns-persist-01"]
CHALLENGES: tuple[Challenge, ...] = ("http-01", "dns-01", "dns-account-01", "dns-persist-01")
DNS_CHALLENGES = frozenset({"dns-01", "dns-account-01", "dns-persist-01"})
CopyTarget = Literal["fullchain", "privkey", "combined", "cert", "chain"]
COPY_TARGETS: tuple[CopyTarget, ...] = ("fullchain", "privkey", "combined", "cert", "chain")
_KEY_TYPES_EXPECTED = "one or two of " + " ".join(k.value for k in KeyType)  # once, not per [certificates.X]


@frozen
class Settings:
    """``[certkeeper]``: where state lives and how often things are looked at."""

    state_dir: Path = Path("/var/lib/certkeeper")
    check_interval: timedelta = timedelta(hours=12)
    renew_before: RenewBefore = RenewBefore(fraction=Fraction(1, 3))
    keep_versions: int = 5
    verify_timeout: timedelta = timedelta(seconds=30)
    hook_timeout: timedelta = timedelta(seconds=120)
    lock_timeout: timedelta = timedelta(seconds=60)
    concurrency: int = 4
    hooks_dir: Path | None = None
    metrics_listen: str | None = None
    metrics_tls_cert_file: Path | None = None
    metrics_tls_key_file: Path | None = None
    metrics_basic_auth_file: Path | None = None
    database: str | None = None
    database_password_file: Path | None = None
    node: str = ""
    fleet_key_file: Path | None = None
    fleet_grace: timedelta = timedelta(days=3)
    fleet_lease: timedelta = timedelta(minutes=10)


@frozen
class AlertsConfig:
    """``[alerts]``: who is told, through which relay."""

    to: tuple[str, ...]
    sender: str
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_security: SmtpSecurity = "starttls"
    smtp_username: str | None = None
    smtp_password_file: Path | None = None
    smtp_ca_bundle: Path | None = None
    smtp_timeout: timedelta = timedelta(seconds=30)
    smtp_tls_fallback: SmtpTlsFallback = "none"
    fallback_smtp_host: str | None = None
    fallback_smtp_port: int = 25
    warn_days: tuple[int, ...] = (21, 14, 7, 3, 1)
    notify_success: bool = False
    digest: Literal["immediate", "daily"] = "immediate"


@frozen
class AcmeIssuerConfig:
    """``[issuers.NAME]`` with ``type = "acme"``: an RFC 8555 CA."""

    name: str
    directory: str
    contact: tuple[str, ...] = ()
    staging_directory: str | None = None
    ca_bundle: Path | None = None
    trust_roots: Path | None = None
    challenge: Challenge = "http-01"
    http_port: int = 80
    http_address: str = ""
    webroot: Path | None = None
    dns_server: str | None = None
    tsig_key_file: Path | None = None
    dns_zone: str | None = None
    dns_hook: Path | None = None
    dns_timeout: timedelta = timedelta(seconds=120)
    profile: str | None = None
    persist_until: datetime | None = None  # dns-persist-01: the persistUntil the records carry
    persist_warning: timedelta = timedelta(days=30)  # alert when persistUntil is closer than this
    # CAA pre-flight before each order: "host[:port]" or "system"; None: off (the default resolved at load time:
    # "system" for a public CA's directory, see caa_resolver_for)
    caa_resolver: str | None = None
    eab_kid: str | None = None
    eab_hmac_key_file: Path | None = None
    timeout: timedelta = timedelta(seconds=300)
    orders_per_3h: int = 0  # the order budget (certkeeper.store.budget); 0 = off
    duplicates_per_week: int = 0
    certificates_per_domain_week: int = 0
    type: Literal["acme"] = "acme"


@frozen
class CaIssuerConfig:
    """``[issuers.NAME]`` with ``type = "ca"``: certkeeper's own certificate authority."""

    name: str
    ca_dir: Path
    lifetime: timedelta = timedelta(days=30)
    ca_key_type: Literal["ecdsa", "rsa"] = "ecdsa"
    root_lifetime: timedelta = timedelta(days=3650)
    intermediate_lifetime: timedelta = timedelta(days=1095)
    permitted_domains: tuple[str, ...] = ()
    passphrase_file: Path | None = None
    passphrase_env: str | None = None
    crl_url: str | None = None
    crl_next_update: timedelta = timedelta(days=7)
    client_auth: bool = False
    organization: str = "certkeeper internal CA"
    type: Literal["ca"] = "ca"


IssuerConfig = AcmeIssuerConfig | CaIssuerConfig


@frozen
class DaneConfig:
    """``dane = {...}`` on a certificate: TLSA records kept in step with the key (RFC 7672)."""

    tlsa: tuple[str, ...] = ("3 1 1",)
    ports: tuple[int, ...] = (25,)
    hosts: tuple[str, ...] = ()
    zone: str | None = None
    dns_server: str | None = None
    tsig_key_file: Path | None = None
    ttl: int = 3600
    unsafe_rollover_days: int = 3
    resolver: str | None = None  # a validating resolver: records count as visible only with its AD bit
    retire_after: timedelta | None = None  # the dwell before the old key's records go; None: two TTLs
    retire_probes: int = 3  # clean probes of every address, spread over the dwell, before they go
    issuers: tuple[Path, ...] = ()  # PEM files of the CAs that may sign the next certificate (2 x y records)


@frozen
class CertificateConfig:
    """``[certificates.NAME]``: one managed certificate (one per key type)."""

    name: str
    issuer: str
    domains: tuple[str, ...]
    key_types: tuple[KeyType, ...] = (KeyType.ECDSA_P256,)
    reload: tuple[str, ...] = ()
    deploy_hooks: tuple[str, ...] = ()  # certbot-style: once per certificate and key type, RENEWED_LINEAGE set
    hook_env: Mapping[str, str] = field(default_factory=dict)
    endpoints: tuple[Target, ...] = ()
    group: str | None = None
    copy_to: Mapping[CopyTarget, Path] = field(default_factory=dict)
    reuse_key: bool = False
    renew_before: RenewBefore | None = None
    verify_timeout: timedelta | None = None
    dane: DaneConfig | None = None
    ca_file: Path | None = None  # trusted with the issuer's roots when judging what the endpoints serve


@frozen
class WatchConfig:
    """``[[watch]]``: endpoints certkeeper only watches and alerts on (partners' MX, the relay)."""

    name: str
    endpoints: tuple[Target, ...]
    servername: str | None = None
    ca_file: Path | None = None
    warn_days: tuple[int, ...] | None = None


@frozen
class Config:
    path: Path
    settings: Settings
    alerts: AlertsConfig | None
    issuers: Mapping[str, IssuerConfig]
    certificates: Mapping[str, CertificateConfig]
    watch: tuple[WatchConfig, ...] = ()
    mta_sts: Mapping[str, MtaStsConfig] = field(default_factory=dict)
    tlsrpt: TlsrptConfig | None = None

    def named(self, names: Sequence[str]) -> list[CertificateConfig]:
        """The ``[certificates.NAME]`` tables of ``names``, in that order; an unknown name is a usage error
        (exit 64) listing the known ones."""
        unknown = [n for n in names if n not in self.certificates]
        if unknown:
            known = ", ".join(sorted(self.certificates)) or "none"
            msg = f"no certificate named {', '.join(repr(n) for n in unknown)} in {self.path} (known: {known})"
            raise UsageError(msg)
        return [self.certificates[n] for n in names]


def config_path(explicit: str | Path | None = None) -> Path:
    """``-c PATH`` wins, then ``$CERTKEEPER_CONFIG``, then ``/etc/certkeeper/certkeeper.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


MAX_CONFIG_BYTES = 1 << 20  # far above any real configuration; -c /dev/zero must not read until memory runs out


def _listen(t: Table, key: str) -> str | None:
    value = t.parsed(key, parse_listen, None, "host:port such as 127.0.0.1:9466, [::1]:9466 or :9466")
    return t.string(key, None) if value is not None else None


def load_config(path: Path) -> Config:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(path, "", f"more than {MAX_CONFIG_BYTES} bytes", "a certkeeper configuration file")
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file", "a certkeeper configuration file",
                          f"pass -c PATH or set {CONFIG_ENV}") from None
    except OSError as exc:
        raise ConfigError(path, "", f"a file that cannot be read ({exc.strerror})",
                          "a readable configuration file") from None
    return parse_config(cached_toml(path, raw, lambda text: _read_toml(path, text)), path)


def _read_toml(path: Path, raw: bytes) -> dict[str, Any]:
    import tomllib  # only when the file is not in the cache (certkeeper.config.cache)

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "bytes that are not UTF-8", "a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"invalid TOML ({exc})", "valid TOML") from None
    except RecursionError:  # [[[[... a hundred thousand deep: tomllib recurses per level
        raise ConfigError(path, "", "TOML nested too deeply to be read", "a certkeeper configuration file") from None


def parse_config(data: Mapping[str, Any], path: Path, *, keys: dict[str, dict[str, Any]] | None = None) -> Config:
    """``data`` as frozen types; every mistake at once (:class:`ConfigErrors`).  With ``keys``, every key the
    parser asks for is noted there (see :mod:`certkeeper.config.schema`)."""
    errors: list[ConfigError] = []
    root = Table(data, "", path, errors, keys=keys)
    settings = _parse_settings(root.table("certkeeper"))
    alerts_table = root.optional_table("alerts")
    alerts = _parse_alerts(alerts_table) if alerts_table else None
    issuers = {name: _parse_issuer(name, table) for name, table in root.named_tables("issuers")}
    certificates = {
        name: _parse_certificate(name, table, issuers) for name, table in root.named_tables("certificates")
    }
    watch = tuple(_parse_watch(i, table) for i, table in enumerate(root.array_of_tables("watch")))
    mta_sts = {domain.lower().rstrip("."): parse_mta_sts(domain, table, certificates)
               for domain, table in root.named_tables("mta_sts")}
    tlsrpt_table = root.optional_table("tlsrpt")
    tlsrpt = parse_tlsrpt(tlsrpt_table, certificates) if tlsrpt_table else None
    root.finish()
    if not certificates and not watch:
        errors.append(ConfigError(path, "certificates", "no certificates and no [[watch]] entries",
                                  "at least one [certificates.NAME] table or [[watch]] entry"))
    if errors:
        raise ConfigErrors(errors) if len(errors) > 1 else errors[0]
    return Config(path=path, settings=settings, alerts=alerts, issuers=issuers,
                  certificates=certificates, watch=watch, mta_sts=mta_sts,
                  tlsrpt=tlsrpt)


def _parse_settings(t: Table) -> Settings:
    d = Settings()
    settings = Settings(
        state_dir=t.absolute_path("state_dir", d.state_dir) or d.state_dir,
        check_interval=t.duration("check_interval", d.check_interval, minimum=timedelta(minutes=1)),
        renew_before=t.parsed("renew_before", RenewBefore.parse, d.renew_before,
                              'a fraction of the lifetime such as "1/3", or a duration such as "30d"'),
        keep_versions=t.integer("keep_versions", d.keep_versions, minimum=1),
        verify_timeout=t.duration("verify_timeout", d.verify_timeout, minimum=timedelta(seconds=1)),
        hook_timeout=t.duration("hook_timeout", d.hook_timeout, minimum=timedelta(seconds=1)),
        lock_timeout=t.duration("lock_timeout", d.lock_timeout),
        concurrency=t.integer("concurrency", d.concurrency, minimum=1),
        hooks_dir=t.absolute_path("hooks_dir", None),
        metrics_listen=_listen(t, "metrics_listen"),
        metrics_tls_cert_file=t.path("metrics_tls_cert_file", None),
        metrics_tls_key_file=t.path("metrics_tls_key_file", None),
        metrics_basic_auth_file=t.absolute_path("metrics_basic_auth_file", None),
        database=t.string("database", None),
        database_password_file=t.absolute_path("database_password_file", None),
        node=t.string("node", "") or "",
        fleet_key_file=t.absolute_path("fleet_key_file", None),
        fleet_grace=t.duration("fleet_grace", d.fleet_grace),
        fleet_lease=t.duration("fleet_lease", d.fleet_lease, minimum=timedelta(seconds=1)),
    )
    if bool(settings.metrics_tls_cert_file) != bool(settings.metrics_tls_key_file):
        t.error("metrics_tls_key_file" if settings.metrics_tls_cert_file else "metrics_tls_cert_file",
                "only half of the listener's TLS settings", "both metrics_tls_cert_file and metrics_tls_key_file")
    if settings.metrics_listen:
        _, sep, port = settings.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            t.error("metrics_listen", repr(settings.metrics_listen),
                    'host:port such as "127.0.0.1:9466" (":9466" is loopback; "0.0.0.0:9466" every address)')
    if settings.database and not settings.database.startswith(("postgresql://", "postgres://")):
        t.error("database", repr(settings.database), 'a PostgreSQL URL such as "postgresql://user@host/db"')
    if settings.database and _missing("psycopg"):
        t.error("database", repr(settings.database), "a database certkeeper can reach: psycopg is not installed",
                "install it: pip install 'certkeeper[postgresql]' (or apt-get install python3-psycopg)")
    if settings.database and not settings.fleet_key_file:
        t.error("fleet_key_file", "nothing", "a key file shared by the fleet's nodes when database is set",
                "private keys are stored encrypted with it; PostgreSQL never sees them in plain text")
    t.finish()
    return settings


def _parse_alerts(t: Table) -> AlertsConfig:
    to = t.string_list("to", None)
    sender = t.string("from", None)
    if not to:
        t.error("to", "nothing", 'a list of recipients such as ["postmaster@example.org"]')
    if not sender:
        t.error("from", "nothing", 'the sender address, such as "certkeeper@mail.example.org"')
    for i, address in enumerate(to or ()):
        if "@" not in address:
            t.error(f"to[{i}]", repr(address), "an email address")
    security = t.choice("smtp_security", ("none", "starttls", "tls"), "starttls")
    default_port = {"none": 25, "starttls": 587, "tls": 465}[security]
    warn = t.int_list("warn_days", (21, 14, 7, 3, 1), maximum=MAX_DAYS)
    alerts = AlertsConfig(
        to=tuple(to or ()),
        sender=sender or "",
        smtp_host=t.string("smtp_host", "127.0.0.1") or "127.0.0.1",
        smtp_port=t.port("smtp_port", default_port),
        smtp_security=security,
        smtp_username=t.string("smtp_username", None),
        smtp_password_file=t.absolute_path("smtp_password_file", None),
        smtp_ca_bundle=t.path("smtp_ca_bundle", None),
        smtp_timeout=t.duration("smtp_timeout", timedelta(seconds=30)),
        smtp_tls_fallback=t.choice("smtp_tls_fallback", ("none", "unverified-no-auth"), "none"),
        fallback_smtp_host=t.string("fallback_smtp_host", None),
        fallback_smtp_port=t.port("fallback_smtp_port", 25),
        warn_days=tuple(sorted(set(warn), reverse=True)),
        notify_success=t.boolean("notify_success", False),
        digest=t.choice("digest", ("immediate", "daily"), "immediate"),
    )
    if alerts.smtp_username and security == "none":
        t.error("smtp_security", '"none" with smtp_username set', '"starttls" or "tls"',
                "the password would cross the network in clear; certkeeper never sends it that way")
    if alerts.smtp_username and not alerts.smtp_password_file:
        t.error("smtp_password_file", "nothing", "a file holding the SMTP password when smtp_username is set",
                "secrets live in files, never in this file")
    if "smtp_password" in t.data:
        t.error("smtp_password", "a password in the configuration file",
                "smtp_password_file, a file only root can read", "secrets live in files, never in this file")
        t.seen.add("smtp_password")
    t.finish()
    return alerts


def _parse_issuer(name: str, t: Table) -> IssuerConfig:
    kind = t.choice("type", ("acme", "ca"), None)
    if kind == "ca":
        return _parse_ca_issuer(name, t)
    if kind is None:
        t.finish(ignore_unknown=True)
        return AcmeIssuerConfig(name=name, directory="")
    return _parse_acme_issuer(name, t)


def _parse_instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_acme_issuer(name: str, t: Table) -> AcmeIssuerConfig:
    d = AcmeIssuerConfig(name=name, directory="")
    directory = t.url("directory", None, required=True, https_only=True) or ""
    contact = t.string_or_list("contact", ())
    for i, item in enumerate(contact):
        if not item.startswith("mailto:"):
            t.error(f"contact[{i}]" if len(contact) > 1 else "contact", repr(item),
                    'a "mailto:" URL such as "mailto:hostmaster@example.org"')
    challenge = t.choice("challenge", CHALLENGES, "http-01")
    issuer = AcmeIssuerConfig(
        name=name,
        directory=directory,
        contact=contact,
        staging_directory=t.url("staging_directory", None, https_only=True),
        ca_bundle=t.existing_file("ca_bundle", None),
        trust_roots=t.existing_file("trust_roots", None),
        challenge=challenge,
        http_port=t.port("http_port", d.http_port),
        http_address=t.string("http_address", "") or "",
        webroot=t.path("webroot", None),
        dns_server=t.string("dns_server", None),
        tsig_key_file=t.absolute_path("tsig_key_file", None),
        dns_zone=t.string("dns_zone", None),
        dns_hook=t.path("dns_hook", None),
        dns_timeout=t.duration("dns_timeout", d.dns_timeout),
        profile=t.string("profile", None),
        persist_until=t.parsed("persist_until", _parse_instant, None,
                               'a moment such as "2027-12-31T00:00:00Z" (UTC when no offset is given)'),
        persist_warning=t.duration("persist_warning", d.persist_warning),
        caa_resolver=_caa_resolver(t, directory),
        eab_kid=t.string("eab_kid", None),
        eab_hmac_key_file=t.absolute_path("eab_hmac_key_file", None),
        timeout=t.duration("timeout", d.timeout, minimum=timedelta(seconds=10)),
        orders_per_3h=_budget(t, "orders_per_3h", directory, LETSENCRYPT_ORDERS_PER_3H),
        duplicates_per_week=_budget(t, "duplicates_per_week", directory, LETSENCRYPT_DUPLICATES_PER_WEEK),
        certificates_per_domain_week=_budget(t, "certificates_per_domain_week", directory,
                                             LETSENCRYPT_CERTIFICATES_PER_DOMAIN_WEEK),
    )
    if challenge in ("dns-01", "dns-account-01") and not (issuer.dns_hook or (issuer.dns_server
                                                                              and issuer.tsig_key_file)):
        t.error("challenge", f'"{challenge}" without a way to publish records',
                "dns_server and tsig_key_file (RFC 2136), or dns_hook (an external program)")
    if challenge == "dns-persist-01" and not issuer.dns_server:
        t.error("challenge", '"dns-persist-01" without dns_server',
                "dns_server: a server of the zone, asked (no updates, no key) where the records are served, to "
                "check them on every authoritative server before an order")
    if issuer.dns_hook and issuer.dns_server:
        t.error("dns_hook", "both dns_hook and dns_server", "one way to publish DNS-01 records")
    if bool(issuer.eab_kid) != bool(issuer.eab_hmac_key_file):
        t.error("eab_kid" if not issuer.eab_kid else "eab_hmac_key_file", "only half of external account binding",
                "both eab_kid and eab_hmac_key_file")
    if "eab_hmac_key" in t.data:
        t.error("eab_hmac_key", "a secret in the configuration file", "eab_hmac_key_file",
                "secrets live in files, never in this file")
        t.seen.add("eab_hmac_key")
    t.finish()
    return issuer


# Let's Encrypt's documented limits (https://letsencrypt.org/docs/rate-limits/): "New Orders per Account" and
# "New Certificates per Exact Set of Identifiers", "New Certificates per Registered Domain" (50 per 7 days, one
# back every 202 minutes); the defaults of the order budget for its directory.
LETSENCRYPT_ORDERS_PER_3H = 300
LETSENCRYPT_DUPLICATES_PER_WEEK = 5
LETSENCRYPT_CERTIFICATES_PER_DOMAIN_WEEK = 50


def is_letsencrypt(directory: str) -> bool:
    """Let's Encrypt's production directory (staging has far higher limits: the budget stays off there)."""
    return (urlsplit(directory).hostname or "") == "acme-v02.api.letsencrypt.org"


# ACME directories of public CAs (hosts), which check CAA on every name (RFC 8659 section 1, CA/Browser Forum
# Baseline Requirements 3.2.2.8): the CAA pre-flight is on by default for them.  Production and staging.
PUBLIC_ACME_HOSTS = frozenset({
    "acme-v02.api.letsencrypt.org", "acme-staging-v02.api.letsencrypt.org",  # Let's Encrypt
    "acme.zerossl.com",  # ZeroSSL
    "dv.acme-v02.api.pki.goog", "dv.acme-v02.test-api.pki.goog",  # Google Trust Services
    "api.buypass.com", "api.test4.buypass.no",  # Buypass
    "acme.ssl.com",  # SSL.com
    "acme.digicert.com",  # DigiCert
    "acme.sectigo.com",  # Sectigo
})


def caa_resolver_for(directory: str, *, caa: bool | None, resolver: str | None) -> str | None:
    """The resolver of the CAA pre-flight, or None when it is off.

    ``caa_resolver`` when set; else ``"system"`` when ``caa = true`` or, with ``caa`` unset, when the directory
    is a public CA's (:data:`PUBLIC_ACME_HOSTS`), whose CAA check would otherwise spend the order; off with
    ``caa = false``, and for other directories (a private or test CA rarely looks at CAA, and its names are
    often in no public DNS).
    """
    if caa is False:
        return None
    if resolver:
        return resolver
    public = (urlsplit(directory).hostname or "").lower() in PUBLIC_ACME_HOSTS
    return "system" if caa or (caa is None and public) else None


def _caa_resolver(t: Table, directory: str) -> str | None:
    given = "caa" in t.data
    caa = t.boolean("caa", True)  # asked always, so that the schema lists the key
    resolver = t.string("caa_resolver", None)
    if given and not caa and resolver:
        t.error("caa", "false while caa_resolver is set", "one of them: caa = false turns the CAA pre-flight off")
    return caa_resolver_for(directory, caa=caa if given else None, resolver=resolver)


def _budget(t: Table, key: str, directory: str, letsencrypt: int) -> int:
    """An order budget: Let's Encrypt's documented limit for its directory, off (0) for other CAs."""
    return t.integer(key, letsencrypt if is_letsencrypt(directory) else 0, minimum=0)


def _parse_ca_issuer(name: str, t: Table) -> CaIssuerConfig:
    d = CaIssuerConfig(name=name, ca_dir=Path())
    ca_dir = t.absolute_path("ca_dir", None)
    if ca_dir is None:
        t.error("ca_dir", "nothing", 'the directory of the CA, such as "/var/lib/certkeeper/ca"')
    passphrase_file = t.absolute_path("passphrase_file", None)
    passphrase_env = t.string("passphrase_env", None)
    if passphrase_file and passphrase_env:
        t.error("passphrase_env", "both passphrase_file and passphrase_env", "one source of the CA passphrase")
    domains = t.string_list("permitted_domains", ())
    issuer = CaIssuerConfig(
        name=name,
        ca_dir=ca_dir or Path(),
        lifetime=t.duration("lifetime", d.lifetime, minimum=timedelta(seconds=30)),
        ca_key_type=t.choice("ca_key_type", ("ecdsa", "rsa"), "ecdsa"),
        root_lifetime=t.duration("root_lifetime", d.root_lifetime, minimum=timedelta(days=1)),
        intermediate_lifetime=t.duration("intermediate_lifetime", d.intermediate_lifetime,
                                         minimum=timedelta(days=1)),
        permitted_domains=tuple(x.lower().lstrip(".") for x in domains or ()),
        passphrase_file=passphrase_file,
        passphrase_env=passphrase_env,
        crl_url=t.url("crl_url", None),
        crl_next_update=t.duration("crl_next_update", d.crl_next_update, minimum=timedelta(hours=1)),
        client_auth=t.boolean("client_auth", False),
        organization=t.string("organization", d.organization) or d.organization,
    )
    if issuer.lifetime >= issuer.intermediate_lifetime:
        t.error("lifetime", format_duration(issuer.lifetime),
                f"less than intermediate_lifetime ({format_duration(issuer.intermediate_lifetime)})")
    t.finish()
    return issuer


def _parse_certificate(name: str, t: Table, issuers: Mapping[str, IssuerConfig]) -> CertificateConfig:
    issuer = t.string("issuer", None)
    if issuer is None:
        t.error("issuer", "nothing", "the name of an issuer defined under [issuers]")
    elif issuer not in issuers:
        known = ", ".join(sorted(issuers)) or "none are defined"
        t.error("issuer", repr(issuer), f"the name of an issuer defined under [issuers] ({known})",
                did_you_mean(issuer, issuers))
    domains = tuple(d.lower().rstrip(".") for d in t.string_list("domains", None) or ())
    if not domains:
        t.error("domains", "nothing", 'a list of host names such as ["mail.example.org"]')
    for i, domain in enumerate(domains):
        if not _is_hostname(domain):
            t.error(f"domains[{i}]", repr(domain), "a DNS host name (a wildcard only as the first label)")
    if len(set(domains)) != len(domains):
        t.error("domains", "a host name listed twice", "each host name once")
    key_types = t.parsed_list("key_types", KeyType, (KeyType.ECDSA_P256,),
                              _KEY_TYPES_EXPECTED)
    families = [k.family for k in key_types]
    if len(key_types) > 2 or len(set(families)) != len(families):
        t.error("key_types", repr([k.value for k in key_types]),
                "one key type, or two of different families (one ECDSA and one RSA) for dual certificates")
    copy_table = t.optional_table("copy_to")
    copy_to: dict[CopyTarget, Path] = {}
    if copy_table:
        for target in COPY_TARGETS:
            path = copy_table.path(target, None)
            if path is not None:
                if not path.is_absolute():
                    copy_table.error(target, repr(str(path)), "an absolute path")
                copy_to[target] = path
        copy_table.finish()
        if copy_to and len(key_types) > 1:
            t.error("copy_to", "copy_to with two key types", "copy_to only for single-key-type certificates",
                    "point the daemon at the per-key-type files under current/ instead")
    issuer_config = issuers.get(issuer or "")
    if isinstance(issuer_config, AcmeIssuerConfig) and issuer_config.challenge not in DNS_CHALLENGES:
        for i, domain in enumerate(domains):
            if domain.startswith("*."):
                t.error(f"domains[{i}]", repr(domain), "a wildcard only with an issuer whose challenge is dns-01, "
                        "dns-account-01 or dns-persist-01")
    dane_table = t.optional_table("dane")
    certificate = CertificateConfig(
        name=name,
        issuer=issuer or "",
        domains=domains,
        key_types=tuple(key_types),
        reload=t.hook_list("reload"),
        deploy_hooks=t.hook_list("deploy_hooks"),
        hook_env=t.string_table("hook_env"),
        endpoints=t.target_list("endpoints"),
        group=t.string("group", None),
        copy_to=copy_to,
        reuse_key=t.boolean("reuse_key", False),
        renew_before=t.parsed("renew_before", RenewBefore.parse, None,
                              'a fraction of the lifetime such as "1/3", or a duration such as "30d"'),
        verify_timeout=t.duration("verify_timeout", None, minimum=timedelta(seconds=1)),
        dane=_parse_dane(dane_table) if dane_table else None,
        ca_file=t.existing_file("ca_file", None),
    )
    t.finish()
    return certificate


def _parse_dane(t: Table) -> DaneConfig:
    d = DaneConfig()
    tlsa = tuple(t.string_list("tlsa", list(d.tlsa)) or ())
    for i, record in enumerate(tlsa):
        if record == "3 0 1":
            t.error(f"tlsa[{i}]", '"3 0 1", which names one certificate and so cannot be published before it is '
                    'served', '"3 1 1" (the key, which certkeeper publishes ahead of a rollover; RFC 7671 5.1)')
        elif record not in ("3 1 1", "2 1 1", "2 0 1"):
            t.error(f"tlsa[{i}]", repr(record), 'a TLSA usage/selector/matching triple: "3 1 1" or "2 1 1"')
    dane = DaneConfig(
        tlsa=tlsa,
        ports=tuple(t.int_list("ports", list(d.ports), maximum=65535, expected="a list of TCP ports from 1 to 65535")),
        hosts=tuple(t.string_list("hosts", ()) or ()),
        zone=t.string("zone", None),
        dns_server=t.string("dns_server", None),
        tsig_key_file=t.absolute_path("tsig_key_file", None),
        ttl=t.integer("ttl", d.ttl, minimum=1, maximum=MAX_TTL),
        unsafe_rollover_days=t.integer("unsafe_rollover_days", d.unsafe_rollover_days, minimum=0, maximum=MAX_DAYS),
        resolver=t.string("resolver", None),
        retire_after=t.duration("retire_after", None, minimum=timedelta(seconds=1)),
        retire_probes=t.integer("retire_probes", d.retire_probes, minimum=1),
        issuers=tuple(Path(p) for p in t.string_list("issuers", ()) or ()),
    )
    for i, issuer in enumerate(dane.issuers):
        if not issuer.is_file():
            t.error(f"issuers[{i}]", f'"{issuer}", which does not exist or is not a file',
                    "a PEM file of a CA certificate that may sign the next certificate")
    t.finish()
    return dane


def _parse_watch(index: int, t: Table) -> WatchConfig:
    endpoints = t.target_list("endpoints")
    if not endpoints:
        t.error("endpoints", "nothing", 'a list of endpoints such as ["smtp://mx.partner.example:25"]')
    name = t.string("name", None) or (endpoints[0].address if endpoints else f"watch{index}")
    warn = t.int_list("warn_days", None, maximum=MAX_DAYS)
    watch = WatchConfig(
        name=name,
        endpoints=endpoints,
        servername=t.string("servername", None),
        ca_file=t.existing_file("ca_file", None),
        warn_days=tuple(sorted(set(warn), reverse=True)) if warn else None,
    )
    t.finish()
    return watch


def _missing(module: str) -> bool:
    import importlib.util  # only for a configuration that names a database (a fleet)

    return importlib.util.find_spec(module) is None


# One DNS label: 1 to 63 ASCII letters, digits and hyphens, neither first nor last a hyphen.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if len(labels) < 1 or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in labels)
