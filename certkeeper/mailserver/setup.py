"""``certkeeper setup postfix|dovecot``: make a daemon serve certkeeper's ``current`` files, safely.

The plan is pure (configuration in, commands and a snippet out), so printing it and applying it are the same
thing.  Applying follows one rule, the mail server must keep working:

    back up -> apply -> validate (postfix check / doveconf -n, new ports free) -> reload -> probe every listener
    any failure -> restore the backup -> reload (start, if the daemon died) -> probe again and say if it serves

Postfix gets ``smtpd_tls_chain_files`` pointing at ``combined.pem`` (key and chain in one file, so a reload can
never read a new key with an old certificate), both key types when the certificate has two; submissions with
``smtpd_tls_wrappermode=yes`` (RFC 8314 §3.3) and submission with ``encrypt`` and ``smtpd_tls_auth_only``
(RFC 8314 §3.4).  Dovecot gets a snippet (``ssl_cert``/``ssl_key``, ``ssl_alt_*`` for the second key type, the
TLS 1.2 floor and the imaps listener) in ``conf.d`` or beside the given configuration file.  Exim gets Debian's
macros in its local macros file and the listener options (:mod:`certkeeper.mailserver.exim`); it is validated with
``exim -bV`` and what ``exim -bP`` then shows, and reloaded by SIGHUP, after which the daemon re-executes itself.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from certkeeper.errors import SetupFailed
from certkeeper.mailserver.config import (
    DEFAULT_POSTFIX_DIR,
    DOVECONF,
    POSTCONF,
    DovecotConfig,
    Listener,
    PostfixConfig,
    dovecot_listeners,
    postfix_listeners,
    postfix_port,
    read_dovecot,
    read_postfix,
    run_tool,
)
from certkeeper.mailserver.exim import (
    EximConfig,
    EximPlan,
    check_applied,
    exim_listeners,
    plan_exim,
    plan_text,
    read_exim,
    signal_reload,
)
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.values import field, frozen, mutable

log = logging.getLogger("certkeeper.setup")

POSTFIX = "postfix"
DOVEADM = "doveadm"
DOVECOT = "dovecot"
UPDATE_EXIM4_CONF = "update-exim4.conf"  # Debian: the configuration is generated from the template and local macros
_SIGHUP_TIMEOUT = 15.0
_OBSOLETE_MAIN = ("smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_eccert_file", "smtpd_tls_eckey_file",
                  "smtpd_tls_dcert_file", "smtpd_tls_dkey_file", "smtpd_use_tls", "smtpd_enforce_tls")
_SERVICE_FILE_OPTIONS = ("smtpd_tls_chain_files", *_OBSOLETE_MAIN[:6])


@frozen
class CertificateFiles:
    """The ``current`` folders of a managed certificate: one, or ``ecdsa/`` and ``rsa/`` for two key types."""

    name: str
    folders: tuple[Path, ...]
    fingerprints: frozenset[str]
    domains: tuple[str, ...]


@frozen
class Plan:
    """What setup would do: commands to run (argv lists) or a file to write, and how to describe it."""

    daemon: str
    commands: tuple[tuple[str, ...], ...] = ()
    snippet_path: Path | None = None
    snippet: str = ""
    include_line: str = ""  # appended to the main Dovecot file when the snippet is not included already
    new_ports: tuple[int, ...] = ()  # ports no listener of the daemon uses yet: must be free
    host: str = "127.0.0.1"
    exim: EximPlan | None = None
    exim_config: EximConfig | None = None  # as it was before setup: the pid file, the binary, the -C file
    regenerate: tuple[tuple[str, ...], ...] = ()  # run after writing and after restoring (Debian: update-exim4.conf)

    def text(self) -> str:
        if self.exim is not None:
            return plan_text(self.exim) + "".join(" ".join(c) + "\n" for c in self.regenerate)
        if self.commands:
            return "\n".join(" ".join(_quote(a) for a in command) for command in self.commands) + "\n"
        head = f"# {self.snippet_path}\n" if self.snippet_path else ""
        tail = f"# and in the main file: {self.include_line}\n" if self.include_line else ""
        return head + self.snippet + tail


def _quote(argument: str) -> str:
    return f"'{argument}'" if any(c in argument for c in " =$<>,;") else argument


def plan_postfix(config: PostfixConfig, files: CertificateFiles, *, smtps_port: int = 465,
                 submission_port: int = 587) -> Plan:
    base = (POSTCONF,) if config.config_dir == DEFAULT_POSTFIX_DIR else (POSTCONF, "-c", str(config.config_dir))
    level = config.effective.get("smtpd_tls_security_level", "") or "none"
    main = {
        "smtpd_tls_chain_files": ", ".join(str(folder / "combined.pem") for folder in files.folders),
        "smtpd_tls_security_level": "may" if level == "none" else level,  # port 25: offer STARTTLS (RFC 3207)
        "smtpd_tls_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_auth_only": "yes",
    }
    commands: list[tuple[str, ...]] = [(*base, "-e", *(f"{k}={v}" for k, v in main.items()))]
    obsolete = [name for name in _OBSOLETE_MAIN if name in config.explicit]
    if obsolete:
        commands.append((*base, "-X", *obsolete))
    new_ports = []
    for port, role, options in (
        (smtps_port, "submissions", {"smtpd_tls_wrappermode": "yes", "smtpd_tls_security_level": "encrypt"}),
        (submission_port, "submission", {"smtpd_tls_security_level": "encrypt", "smtpd_tls_auth_only": "yes"}),
    ):
        existing = next((s for s in config.services if s.type == "inet" and s.command == "smtpd"
                         and postfix_port(s.name)[1] == port), None)
        if existing is None:
            name = role if port in {465, 587} else str(port)
            commands.append((*base, "-M", f"{name}/inet={name} inet n - n - - smtpd"))
            new_ports.append(port)
        else:
            name = existing.name
            stale = [f"{name}/inet/{o}" for o in _SERVICE_FILE_OPTIONS if o in existing.options]
            if stale:  # a per-service certificate would hide the one set in main.cf
                commands.append((*base, "-PX", *stale))
        settings = {"syslog_name": f"postfix/{role}", **options}
        commands.append((*base, "-P", *(f"{name}/inet/{k}={v}" for k, v in settings.items())))
    interfaces = config.effective.get("inet_interfaces", "all").replace(",", " ").split()
    host = interfaces[0] if interfaces and interfaces[0] not in {"all", "loopback-only"} else "127.0.0.1"
    return Plan("postfix", tuple(commands), new_ports=tuple(new_ports), host=host)


def plan_dovecot(config: DovecotConfig, files: CertificateFiles, *, imaps_port: int = 993,
                 snippet_path: Path | None = None) -> Plan:
    main_file = config.config_file
    conf_d = main_file.parent / "conf.d"
    main_text = main_file.read_text() if main_file.is_file() else ""
    included = "conf.d/*.conf" in main_text and conf_d.is_dir()
    path = snippet_path or (conf_d / "99-certkeeper.conf" if included else main_file.parent / "certkeeper-tls.conf")
    include = "" if (included and path.parent == conf_d) or str(path) in main_text else f"!include_try {path}"
    first, *rest = files.folders
    lines = [f"# written by certkeeper setup dovecot --certificate {files.name}; certkeeper reloads Dovecot",
             "ssl = required", f"ssl_cert = <{first / 'fullchain.pem'}", f"ssl_key = <{first / 'privkey.pem'}"]
    if rest:
        lines += [f"ssl_alt_cert = <{rest[0] / 'fullchain.pem'}", f"ssl_alt_key = <{rest[0] / 'privkey.pem'}"]
    lines += ["ssl_min_protocol = TLSv1.2", "service imap-login {", "  inet_listener imaps {",
              f"    port = {imaps_port}", "    ssl = yes", "  }", "}"]
    used = {listener.port for listener in dovecot_listeners(config)}
    listen = config.settings.get("listen", "*").split(",")[0].strip()
    host = "127.0.0.1" if listen in {"*", "::", ""} else listen
    return Plan("dovecot", snippet_path=path, snippet="\n".join(lines) + "\n", include_line=include,
                new_ports=() if imaps_port in used else (imaps_port,), host=host)


def plan_exim_setup(config: EximConfig, files: CertificateFiles, *, smtp_port: int = 25, smtps_port: int = 465,
                     submission_port: int = 587, macros_file: Path | None = None) -> Plan:
    main = config.config_file
    main_text = main.read_text() if main is not None and main.is_file() else ""
    planned = plan_exim(config, files.folders, files.name, smtp_port=smtp_port, smtps_port=smtps_port,
                        submission_port=submission_port, macros_file=macros_file, main_text=main_text)
    if planned.macros_file.is_file():  # keep the administrator's own macros
        planned = plan_exim(config, files.folders, files.name, smtp_port=smtp_port, smtps_port=smtps_port,
                            submission_port=submission_port, macros_file=planned.macros_file, main_text=main_text,
                            macros_text=planned.macros_file.read_text())
    existing = exim_listeners(config)
    used = {listener.port for listener in existing}
    regenerate = ((UPDATE_EXIM4_CONF,),) if main is None else ()
    return Plan("exim", regenerate=regenerate, new_ports=tuple(p for p in planned.ports if p not in used),
                host=existing[0].host if existing else "127.0.0.1", exim=planned, exim_config=config)


def certkeeper_snippet(files: CertificateFiles, daemon: str, endpoints: Sequence[tuple[str, int]],
                       config_path: Path, exim: EximConfig | None = None) -> str:
    """What to add to certkeeper.toml so renewals reload this daemon and verify its listeners."""
    env = ""
    if daemon == "postfix" and config_path != DEFAULT_POSTFIX_DIR:
        env = f'hook_env = {{ POSTFIX_CONFIG_DIR = "{config_path}" }}\n'
    elif daemon == "dovecot" and config_path != Path("/etc/dovecot/dovecot.conf"):
        env = f'hook_env = {{ DOVECOT_CONFIG = "{config_path}" }}\n'
    elif daemon == "exim" and exim is not None and (exim.config_file is not None or exim.binary != "exim"):
        names = {"EXIM_CONFIG": str(exim.config_file) if exim.config_file else "",
                 "EXIM": exim.binary if exim.binary != "exim" else ""}
        env = "hook_env = { " + ", ".join(f'{k} = "{v}"' for k, v in names.items() if v) + " }\n"
    host = files.domains[0] if files.domains else "localhost"
    urls = ", ".join(f'"{protocol}://{host}:{port}"' for protocol, port in dict.fromkeys(endpoints))
    return f'[certificates.{files.name}]\nreload = ["{daemon}"]   # add to the existing list\n{env}' \
           f"endpoints = [{urls}]   # add to the existing list\n"


@mutable
class Outcome:
    ok: bool = False
    rolled_back: bool = False
    serving_after_rollback: bool | None = None
    steps: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        log.info("%s", text)
        self.steps.append(text)


def apply_plan(plan: Plan, *, config_path: Path, files: CertificateFiles, now: datetime,
               verify_timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Back up, apply, validate, reload, probe; restore and reload again when any of it fails."""
    outcome = Outcome()
    backups = _backup(plan, config_path, now)
    outcome.step("backed up " + ", ".join(str(b) for _, b in backups))
    try:
        _apply(plan, config_path, outcome)
        _validate(plan, config_path, outcome)
        _reload(plan, config_path)
        outcome.step(f"reloaded {plan.daemon}")
        listeners = _listeners(plan, config_path)
        failures = _verify(listeners, files, verify_timeout, sleep)
        if failures:
            raise SetupFailed("; ".join(failures))  # noqa: TRY301 - every failed step takes the one restore path
        outcome.step("verified: " + ", ".join(x.target.text for x in listeners) + " serve the current certificate")
        outcome.ok = True
    except (SetupFailed, OSError) as exc:
        outcome.step(f"FAILED: {exc}")
        for original, backup in backups:
            if backup.exists():
                shutil.copy2(backup, original)
            else:
                original.unlink(missing_ok=True)  # a file setup created
        outcome.rolled_back = True
        outcome.step("restored the backup")
        for command in plan.regenerate:
            result = run_tool(command)
            outcome.step(f"{' '.join(command)}: " + ("done" if result.returncode == 0 else
                                                     f"exit {result.returncode}: {result.stderr.strip()[-200:]}"))
        try:
            _reload(plan, config_path)
            outcome.step(f"reloaded {plan.daemon} with the old configuration")
        except SetupFailed:
            _start(plan, config_path, outcome)
        listeners = _listeners(plan, config_path)
        answers = probe_sync([x.target for x in listeners], ProbeOptions(timeout=5), now=now)
        outcome.serving_after_rollback = all(result.served for result in answers)
        outcome.step("after the rollback " + ("every listener serves TLS again" if outcome.serving_after_rollback
                                              else "NOT every listener answers: " + "; ".join(
                                                  r.message for r in answers if not r.served)))
    return outcome


def _backup(plan: Plan, config_path: Path, now: datetime) -> list[tuple[Path, Path]]:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if plan.daemon == "postfix":
        originals = [config_path / "main.cf", config_path / "master.cf"]
    elif plan.exim is not None:
        originals = [plan.exim.macros_file] + ([plan.exim.main_file] if plan.exim.main_file is not None else [])
    else:
        originals = [config_path] + ([plan.snippet_path] if plan.snippet_path else [])
    pairs = []
    for original in originals:
        backup = original.with_name(f"{original.name}.certkeeper-{stamp}")
        if original.exists():
            shutil.copy2(original, backup)
        pairs.append((original, backup))
    return pairs


def _apply(plan: Plan, config_path: Path, outcome: Outcome) -> None:
    if plan.exim is not None:
        plan.exim.macros_file.parent.mkdir(parents=True, exist_ok=True)
        plan.exim.macros_file.write_text(plan.exim.macros)
        plan.exim.macros_file.chmod(0o644)  # Exim refuses configuration files others can write
        if plan.exim.main_file is not None and plan.exim.main_text is not None:
            plan.exim.main_file.write_text(plan.exim.main_text)
    for command in (*plan.commands, *plan.regenerate):
        result = run_tool(command)
        if result.returncode != 0:
            msg = f"{' '.join(command)}: {(result.stderr or result.stdout).strip()}"
            raise SetupFailed(msg)
    if plan.snippet_path is not None:
        plan.snippet_path.parent.mkdir(parents=True, exist_ok=True)
        plan.snippet_path.write_text(plan.snippet)
        if plan.include_line:
            with config_path.open("a") as main:
                main.write(f"\n{plan.include_line}\n")
    outcome.step(f"applied the {plan.daemon} configuration")


def _validate(plan: Plan, config_path: Path, outcome: Outcome) -> None:
    if plan.daemon == "postfix":
        command = [POSTFIX, "-c", str(config_path), "check"]
    elif plan.exim_config is not None:
        command = list(plan.exim_config.command("-bV"))
    else:
        command = [DOVECONF, "-c", str(config_path), "-n"]
    result = run_tool(command)
    if result.returncode != 0:
        msg = (
            f"{' '.join(command)} rejects the new configuration (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-500:] or 'see the mail log'}"
        )
        raise SetupFailed(msg)
    if plan.exim is not None and plan.exim_config is not None:
        applied = read_exim(plan.exim_config.config_file, binary=plan.exim_config.binary)
        wrong = check_applied(applied, plan.exim.expected)
        if wrong:
            msg = ("Exim does not use the new settings: " + "; ".join(wrong) + " (its configuration must take "
                   "tls_certificate from MAIN_TLS_CERTIFICATE, as Debian's exim4.conf.template does)")
            raise SetupFailed(msg)
    for port in plan.new_ports:
        with socket.socket() as probe:
            probe.settimeout(2)
            if probe.connect_ex((plan.host, port)) == 0:
                msg = f"port {port} on {plan.host} is already in use by another program"
                raise SetupFailed(msg)
    shown = " ".join(command[:1] + command[3:]) if plan.daemon != "exim" else " ".join(command)
    outcome.step(f"validated ({shown}, new ports free)")


def _reload(plan: Plan, config_path: Path) -> None:
    if plan.exim_config is not None:
        _reload_exim(plan.exim_config)
        return
    command = [POSTFIX, "-c", str(config_path), "reload"] if plan.daemon == "postfix" else \
        [DOVEADM, "-c", str(config_path), "reload"]
    result = run_tool(command)
    if result.returncode != 0:
        msg = (
            f"{' '.join(command)} failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip() or 'see the mail log'}"
        )
        raise SetupFailed(msg)


def _reload_exim(config: EximConfig) -> None:
    """``exim -bV``, then SIGHUP: the daemon re-executes itself; wait until it holds its listeners again.

    A SIGHUP with a configuration that does not parse would kill the daemon, hence the check first.
    """
    check = run_tool(config.command("-bV"))
    if check.returncode != 0:
        msg = (f"{' '.join(config.command('-bV'))} rejects the configuration; not sending SIGHUP: "
               f"{(check.stderr or check.stdout).strip()[-300:]}")
        raise SetupFailed(msg)
    try:
        pid = int(config.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        msg = f"no Exim daemon: cannot read its pid from {config.pid_file}"
        raise SetupFailed(msg) from None
    failure = signal_reload(pid, timeout=_SIGHUP_TIMEOUT)
    if failure is not None:
        raise SetupFailed(failure)


def _start(plan: Plan, config_path: Path, outcome: Outcome) -> None:
    if plan.exim_config is not None:
        command = list(plan.exim_config.command("-bd"))
    elif plan.daemon == "postfix":
        command = [POSTFIX, "-c", str(config_path), "start"]
    else:
        command = [DOVECOT, "-c", str(config_path)]
    result = run_tool(command)
    outcome.step(f"{' '.join(command)}: " + ("started" if result.returncode == 0 else f"exit {result.returncode}"))


def _listeners(plan: Plan, config_path: Path) -> list[Listener]:
    if plan.exim_config is not None:
        return exim_listeners(read_exim(plan.exim_config.config_file, binary=plan.exim_config.binary))
    if plan.daemon == "postfix":
        return postfix_listeners(read_postfix(config_path))
    return dovecot_listeners(read_dovecot(config_path))


def _verify(listeners: Sequence[Listener], files: CertificateFiles, timeout: float,
            sleep: Callable[[float], None]) -> list[str]:
    """Probe until every listener serves a current certificate; a reload takes effect asynchronously."""
    from certkeeper.pki import now_utc

    deadline = time.monotonic() + timeout
    options = ProbeOptions(timeout=5, key_type="all" if len(files.folders) > 1 else None)
    while True:
        results = probe_sync([x.target for x in listeners], options, now=now_utc())
        failures = []
        for listener, result in zip(listeners, results, strict=True):
            served = {leaf.fingerprint_sha256 for leaf in result.served}
            if not served:
                failures.append(f"{listener.target.text}: {result.message}")
            elif not served <= files.fingerprints:
                failures.append(f"{listener.target.text} serves {', '.join(sorted(f[:16] for f in served))}..., "
                                f"not {files.name}'s current certificate")
        if not failures or time.monotonic() >= deadline:
            return failures
        sleep(0.5)
