"""What the local mail daemons are configured to do, as they themselves report it.

certkeeper never parses ``main.cf`` or ``dovecot.conf`` itself: includes, ``$variables``, defaults and
``master.cf`` overrides are resolved by the daemons' own tools, whose output is what the daemon runs with.

- Postfix: ``postconf -n`` (explicit settings, for obsolete ones), ``postconf -x`` (every effective value,
  expanded), ``postconf -M`` (services) and ``postconf -Px`` (per-service ``-o`` overrides); ``-c DIR`` for a
  non-default instance.
- Dovecot: ``doveconf -a -P [-c FILE]``: every setting with defaults, including each ``inet_listener`` with its
  default port, and the ``local_name`` sections.  ``-P`` shows ``ssl_key``, which is a path (``<file``), not
  key material.  doveconf's warnings (``Obsolete setting in FILE:LINE``) are kept.
- Exim: ``exim [-C FILE] -bP``, in :mod:`certkeeper.mailserver.exim`.

The readers run the tools without a shell, with a timeout and a fixed environment; the parsers are pure, so
tests feed them text.  Along with :mod:`certkeeper.mailserver.setup` this is the home of the mail daemons' tools.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from certkeeper.errors import MailToolFailed
from certkeeper.process import run_program
from certkeeper.targets import Target
from certkeeper.values import field, frozen

log = logging.getLogger("certkeeper.mailserver")

POSTCONF = "postconf"
DOVECONF = "doveconf"
DEFAULT_POSTFIX_DIR = Path("/etc/postfix")
DEFAULT_DOVECOT_CONFIG = Path("/etc/dovecot/dovecot.conf")
TOOL_TIMEOUT = 20.0
_TOOL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
_MAX_TOOL_OUTPUT = 32 * 2**20  # a full `postconf` is about 100 KiB; anything near this is not a mail daemon
_WELL_KNOWN = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}


@frozen
class ToolOutput:
    returncode: int
    stdout: str
    stderr: str


def run_tool(command: Sequence[str], *, timeout: float = TOOL_TIMEOUT) -> ToolOutput:
    """Run a daemon tool directly (no shell) with a clean environment; MailToolFailed if it cannot run."""
    try:
        done = run_program(command, env=_TOOL_ENV, timeout=timeout, limit=_MAX_TOOL_OUTPUT, keep="head")
    except FileNotFoundError:
        raise MailToolFailed(command, "not installed (not found in PATH)") from None
    except OSError as exc:
        raise MailToolFailed(command, exc.strerror or str(exc)) from None
    if done.timed_out:
        raise MailToolFailed(command, f"no answer within {timeout:g} s")
    if done.truncated:
        raise MailToolFailed(command, f"printed more than {_MAX_TOOL_OUTPUT // 2**20} MiB")
    assert done.returncode is not None
    return ToolOutput(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def _checked(command: Sequence[str], timeout: float) -> ToolOutput:
    output = run_tool(command, timeout=timeout)
    if output.returncode != 0:
        reason = (output.stderr or output.stdout).strip().splitlines()
        raise MailToolFailed(command, f"exit {output.returncode}: {reason[-1] if reason else 'no output'}")
    return output


# -- Postfix -------------------------------------------------------------------------------------------------


@frozen
class MasterService:
    """One ``master.cf`` entry: ``name`` is ``[host:]port`` for inet services."""

    name: str
    type: str
    command: str
    options: Mapping[str, str] = field(default_factory=dict)


@frozen
class PostfixConfig:
    config_dir: Path
    explicit: Mapping[str, str]  # postconf -n: what the administrator set
    effective: Mapping[str, str]  # postconf -x: every value in force, expanded
    services: tuple[MasterService, ...]
    warnings: tuple[str, ...] = ()

    def postconf(self) -> str:
        """The command prefix a fix line uses: ``postconf`` or ``postconf -c DIR`` for another instance."""
        return "postconf" if self.config_dir == DEFAULT_POSTFIX_DIR else f"postconf -c {self.config_dir}"

    def postfix(self) -> str:
        return "postfix" if self.config_dir == DEFAULT_POSTFIX_DIR else f"postfix -c {self.config_dir}"


def parse_settings(text: str) -> dict[str, str]:
    """``name = value`` lines (postconf, doveconf top level, exim -bP) -> a dict; other lines are ignored."""
    settings = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and " " not in name.strip() and not line.startswith((" ", "\t", "#")):
            settings[name.strip()] = value.strip()
    return settings


def parse_master(services_text: str, parameters_text: str) -> tuple[MasterService, ...]:
    """``postconf -M`` lines plus ``postconf -Px`` (``name/type/param = value``) -> services with options."""
    options: dict[tuple[str, str], dict[str, str]] = {}
    for key, value in parse_settings(parameters_text).items():
        parts = key.rsplit("/", 2)
        if len(parts) == 3:
            options.setdefault((parts[0], parts[1]), {})[parts[2]] = value
    services = []
    for line in services_text.splitlines():
        fields = line.split()
        if len(fields) < 8 or line.startswith("#"):
            continue
        name, kind, command = fields[0], fields[1], fields[7]
        services.append(MasterService(name, kind, command, options.get((name, kind), {})))
    return tuple(services)


def read_postfix(config_dir: Path | None, *, timeout: float = TOOL_TIMEOUT) -> PostfixConfig:
    """Ask postconf for an instance's configuration (``config_dir`` None: the default instance)."""
    base = [POSTCONF] + (["-c", str(config_dir)] if config_dir else [])
    explicit = _checked([*base, "-n"], timeout)
    effective = _checked([*base, "-x"], timeout)
    services = _checked([*base, "-M"], timeout).stdout
    parameters = _checked([*base, "-Px"], timeout).stdout
    values = parse_settings(effective.stdout)
    warnings = tuple(line.strip() for line in (explicit.stderr + effective.stderr).splitlines() if line.strip())
    return PostfixConfig(Path(values.get("config_directory") or config_dir or DEFAULT_POSTFIX_DIR),
                         parse_settings(explicit.stdout), values, parse_master(services, parameters),
                         tuple(dict.fromkeys(warnings)))


_POSTFIX_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def postfix_duration(value: str) -> timedelta:
    """A Postfix time value (``100s``, ``5m``, a bare number in seconds: postconf(5), "time units")."""
    text = value.strip().lower()
    unit = text[-1] if text and text[-1] in _POSTFIX_TIME_UNITS else "s"
    number = text[:-1] if text and text[-1] in _POSTFIX_TIME_UNITS else text
    if not number.isdigit():
        msg = f"not a Postfix time value: {value!r}"
        raise ValueError(msg)
    return timedelta(seconds=int(number) * _POSTFIX_TIME_UNITS[unit])


POSTFIX_DEFAULT_MAX_IDLE = timedelta(seconds=100)  # postconf(5) max_idle


def server_process_lifetime(reload_hooks: Sequence[str], hook_env: Mapping[str, str]) -> timedelta | None:
    """How long a mail server process started before a reload may still present the old certificate: Postfix's
    ``max_idle`` when a Postfix reload hook is configured (an smtpd takes new sessions, with the key it loaded,
    until it has been idle that long); None for other servers.  Postfix's default when postconf fails."""
    if not any(Path(hook).name == "postfix" for hook in reload_hooks):
        return None
    directory = hook_env.get("POSTFIX_CONFIG_DIR")
    try:
        return postfix_duration(read_postfix(Path(directory) if directory else None).effective.get("max_idle",
                                                                                                   "100s"))
    except (MailToolFailed, ValueError) as exc:
        log.warning("cannot read Postfix's max_idle (%s); assuming its default, 100 s", exc)
        return POSTFIX_DEFAULT_MAX_IDLE


def postfix_port(name: str) -> tuple[str | None, int | None]:
    """``127.0.0.1:2525`` -> ("127.0.0.1", 2525); ``submissions`` -> (None, 465); unix paths -> (None, None)."""
    host: str | None = None
    port_text = name
    if ":" in name:
        host, _, port_text = name.rpartition(":")
        host = host.strip("[]") or None
    if port_text.isdigit():
        return host, int(port_text)
    try:
        return host, socket.getservbyname(port_text, "tcp")
    except OSError:
        return host, _WELL_KNOWN.get(port_text)


# -- Dovecot -------------------------------------------------------------------------------------------------


@frozen
class Section:
    """A doveconf block (``service imap-login {``); the root has an empty kind."""

    kind: str
    name: str
    settings: Mapping[str, str]
    sections: tuple[Section, ...] = ()

    def children(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]


@frozen
class DovecotConfig:
    config_file: Path
    root: Section
    warnings: tuple[str, ...] = ()

    @property
    def settings(self) -> Mapping[str, str]:
        return self.root.settings

    def doveconf(self) -> str:
        return "doveconf" if self.config_file == DEFAULT_DOVECOT_CONFIG else f"doveconf -c {self.config_file}"

    def doveadm(self) -> str:
        return "doveadm" if self.config_file == DEFAULT_DOVECOT_CONFIG else f"doveadm -c {self.config_file}"


_SECTION_START = re.compile(r"^(\S+)(?:\s+(.*?))?\s*\{$")


def parse_doveconf(text: str) -> Section:
    """doveconf's normalized output -> a tree of sections.  It prints one setting or brace per line."""
    stack: list[tuple[str, str, dict[str, str], list[Section]]] = [("", "", {}, [])]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if len(stack) > 1:
                kind, name, settings, sections = stack.pop()
                stack[-1][3].append(Section(kind, name, settings, tuple(sections)))
            continue
        match = _SECTION_START.match(line)
        if match and "=" not in line.split("{", 1)[0]:
            stack.append((match.group(1), (match.group(2) or "").strip(), {}, []))
            continue
        name, sep, value = line.partition("=")
        if sep:
            stack[-1][2][name.strip()] = value.strip()
    while len(stack) > 1:  # tolerate truncated output: close what is open
        kind, name, settings, sections = stack.pop()
        stack[-1][3].append(Section(kind, name, settings, tuple(sections)))
    return Section("", "", stack[0][2], tuple(stack[0][3]))


def read_dovecot(config_file: Path | None, *, timeout: float = TOOL_TIMEOUT) -> DovecotConfig:
    """Ask doveconf for every effective setting; MailToolFailed when the configuration does not parse."""
    command = [DOVECONF] + (["-c", str(config_file)] if config_file else []) + ["-a", "-P"]
    output = _checked(command, timeout)
    warnings = [line.removeprefix("doveconf: ").strip() for line in output.stderr.splitlines()]
    return DovecotConfig(config_file or DEFAULT_DOVECOT_CONFIG, parse_doveconf(output.stdout),
                         tuple(dict.fromkeys(w for w in warnings if w and not w.startswith("Warning: NOTE"))))


def dovecot_file(value: str) -> Path | None:
    """``ssl_cert = </etc/ssl/mail.pem`` -> the path; inline PEM or nothing -> None."""
    value = value.strip()
    return Path(value[1:].strip()) if value.startswith("<") and len(value) > 1 else None


# -- Listeners and the files they serve ------------------------------------------------------------------------


@frozen
class TlsFiles:
    """Where a daemon takes one certificate (or an SNI entry's) from.

    ``layout`` "chain": Postfix ``smtpd_tls_chain_files`` (keys, each followed by its chain); "cert-key": a
    certificate file and a key file (``files = (cert, key)``).  ``scope`` names where it is set: "main.cf", a
    master.cf service, the Dovecot file, a ``local_name``.
    """

    setting: str
    files: tuple[Path, ...]
    layout: str
    scope: str
    server_name: str | None = None


@frozen
class Listener:
    daemon: str  # "postfix" | "dovecot" | "exim"
    service: str  # master.cf name, "imap-login/imaps", "exim:465"
    host: str
    port: int
    protocol: str  # a certkeeper.targets protocol: smtp, smtps, imap, imaps, pop3, pop3s, sieve
    role: str  # smtp | submission | submissions | postscreen | imap | imaps | pop3 | pop3s | sieve
    settings: Mapping[str, str]  # effective for this listener (main.cf with -o overrides applied)
    overrides: Mapping[str, str] = field(default_factory=dict)
    tls: tuple[TlsFiles, ...] = ()

    @property
    def target(self) -> Target:
        return Target(f"{self.protocol}://{self.host}:{self.port}", self.host, self.port, self.protocol)


def split_list(value: str) -> list[str]:
    """Postfix lists: separated by commas and/or whitespace."""
    return [item for item in re.split(r"[\s,]+", value.strip()) if item]


def _probe_host(address: str) -> str:
    """Where to reach a daemon bound to ``address``: wildcards and 'all' are reached on loopback."""
    address = address.strip().strip("[]")
    return "127.0.0.1" if address in {"", "*", "::", "all", "loopback-only", "0.0.0.0"} else address


def postfix_tls_files(settings: Mapping[str, str], scope: str) -> tuple[TlsFiles, ...]:
    """The files smtpd reads: ``smtpd_tls_chain_files`` wins over the older cert/key settings (Postfix 3.4)."""
    chain = split_list(settings.get("smtpd_tls_chain_files", ""))
    if chain:
        return (TlsFiles("smtpd_tls_chain_files", tuple(Path(p) for p in chain), "chain", scope),)
    found = []
    for cert_setting, key_setting in (("smtpd_tls_cert_file", "smtpd_tls_key_file"),
                                      ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
                                      ("smtpd_tls_dcert_file", "smtpd_tls_dkey_file")):
        cert = settings.get(cert_setting, "")
        if cert and cert != "none":
            key = settings.get(key_setting, "") or cert
            found.append(TlsFiles(cert_setting, (Path(cert), Path(key)), "cert-key", scope))
    return tuple(found)


_TLS_PARAMETERS = ("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_eccert_file",
                   "smtpd_tls_eckey_file", "smtpd_tls_dcert_file", "smtpd_tls_dkey_file")


def postfix_listeners(config: PostfixConfig) -> list[Listener]:
    """Every inet smtpd/postscreen service, with its effective settings and files."""
    listeners = []
    interfaces = split_list(config.effective.get("inet_interfaces", "all"))
    for service in config.services:
        if service.type != "inet" or service.command not in {"smtpd", "postscreen"}:
            continue
        host, port = postfix_port(service.name)
        if port is None:
            continue
        settings = {**config.effective, **service.options}
        wrapper = settings.get("smtpd_tls_wrappermode", "no") == "yes"
        syslog = settings.get("syslog_name", "")
        if service.command == "postscreen":
            role = "postscreen"
        elif port == 465 or service.name in {"submissions", "smtps"} or syslog.endswith(("/submissions", "/smtps")):
            role = "submissions"
        elif port == 587 or service.name == "submission" or syslog.endswith("/submission"):
            role = "submission"
        else:
            role = "submissions" if wrapper else "smtp"
        scope = service.name if any(p in service.options for p in _TLS_PARAMETERS) else "main.cf"
        listeners.append(Listener("postfix", service.name, _probe_host(host or (interfaces[0] if interfaces else "")),
                                  port, "smtps" if wrapper else "smtp", role, settings, dict(service.options),
                                  postfix_tls_files(settings, scope)))
    return listeners


_DOVECOT_SERVICES = {"imap-login": "imap", "pop3-login": "pop3", "managesieve-login": "sieve",
                     "submission-login": "submission"}
_DOVECOT_PROTOCOLS = {("imap", False): "imap", ("imap", True): "imaps", ("pop3", False): "pop3",
                      ("pop3", True): "pop3s", ("sieve", False): "sieve", ("sieve", True): "tls",
                      ("submission", False): "smtp", ("submission", True): "smtps"}


def dovecot_tls_files(config: DovecotConfig) -> tuple[TlsFiles, ...]:
    """``ssl_cert``/``ssl_key``, ``ssl_alt_cert``/``ssl_alt_key`` and each ``local_name``'s pair."""
    found = []
    scopes: list[tuple[str, Section, str | None]] = [(str(config.config_file), config.root, None)]
    scopes += [(f"local_name {s.name}", s, s.name.split()[0]) for s in config.root.children("local_name")]
    for scope, section, name in scopes:
        for cert_setting, key_setting in (("ssl_cert", "ssl_key"), ("ssl_alt_cert", "ssl_alt_key")):
            cert = dovecot_file(section.settings.get(cert_setting, ""))
            key = dovecot_file(section.settings.get(key_setting, ""))
            if cert is not None:
                found.append(TlsFiles(cert_setting, (cert, key or cert), "cert-key", scope, name))
    return tuple(found)


def dovecot_listeners(config: DovecotConfig) -> list[Listener]:
    protocols = set(config.settings.get("protocols", "").split())
    listen = [a.strip() for a in config.settings.get("listen", "*").split(",") if a.strip()]
    files = tuple(f for f in dovecot_tls_files(config) if f.server_name is None)
    listeners = []
    for service in config.root.children("service"):
        protocol = _DOVECOT_SERVICES.get(service.name)
        if protocol is None or protocol not in protocols:
            continue
        for inet in service.children("inet_listener"):
            port = int(inet.settings.get("port", "0") or 0)
            if port == 0:
                continue
            implicit = inet.settings.get("ssl", "no") == "yes"
            host = _probe_host(inet.settings.get("address") or (listen[0] if listen else "*"))
            role = inet.name if protocol != "submission" else ("submissions" if implicit else "submission")
            listeners.append(Listener("dovecot", f"{service.name}/{inet.name}", host, port,
                                      _DOVECOT_PROTOCOLS[(protocol, implicit)], role, dict(config.settings),
                                      dict(inet.settings), files))
    return listeners
