"""The mail daemons' TLS rules, and the exact command that fixes each breach.

Pure functions of :mod:`certkeeper.mailserver.config` values.  What is checked, and why:

- RFC 8314 §3.3: message submission over implicit TLS (``submissions``, 465) is preferred; a 465 listener
  without ``smtpd_tls_wrappermode=yes`` speaks plain SMTP where clients expect a TLS handshake.
- RFC 8314 §3.4 / RFC 4954 §4: on 587 the client must not send credentials before STARTTLS, so the server
  requires TLS (``smtpd_tls_security_level=encrypt``) and announces AUTH only after it (``smtpd_tls_auth_only``).
- RFC 3207 §4: a publicly referenced MX must not require TLS (so port 25 stays ``may``, a warning otherwise).
- RFC 8996: TLS 1.0 and 1.1 are deprecated; the floor is TLS 1.2.
- Postfix's ``tls_server_sni_maps`` are read from the indexed file built by ``postmap -F`` (which embeds the
  PEM files); a map older than its source or its files serves what was there when it was built.
- postscreen and tlsproxy are long-lived: they read certificates only when restarted by ``postfix reload``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from certkeeper.mailserver import exim
from certkeeper.mailserver.config import (
    DovecotConfig,
    Listener,
    PostfixConfig,
    split_list,
)
from certkeeper.mailserver.exim import EximConfig
from certkeeper.mailserver.fixes import INDEXED_MAPS, Fixer, fixer_for
from certkeeper.mailserver.tlsfiles import FileFacts
from certkeeper.values import frozen

Severity = Literal["problem", "warning", "note"]
VERSIONS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
FLOOR = "TLSv1.2"

@frozen
class Diagnosis:
    """One finding of doctor: where (a report section), what, how bad, and the exact fix."""

    where: str
    code: str
    severity: Severity
    message: str
    fix: str = ""


def hostnames_for(listener: Listener) -> list[str]:
    """The names a daemon announces, which its certificate must cover: myhostname and the banner's name."""
    if listener.daemon == "postfix":
        names = [listener.settings.get("myhostname", "")]
        banner = listener.settings.get("smtpd_banner", "").split()
        if banner and "." in banner[0]:
            names.append(banner[0])
    elif listener.daemon == "dovecot":
        names = [listener.settings.get("hostname", "")]
    else:
        names = [listener.settings.get("primary_hostname", "")]
    return list(dict.fromkeys(n for n in names if n and "$" not in n))


def protocol_floor(value: str) -> str | None:
    """The lowest version a Postfix protocol list allows (``>=TLSv1.2``, ``!SSLv3, !TLSv1``, ``TLSv1.2``)."""
    allowed = list(VERSIONS)
    positives = []
    for item in split_list(value.replace(":", " ")):
        if item.startswith(">="):
            allowed = [v for v in allowed if item[2:] in VERSIONS and VERSIONS.index(v) >= VERSIONS.index(item[2:])]
        elif item.startswith("<="):
            allowed = [v for v in allowed if item[2:] in VERSIONS and VERSIONS.index(v) <= VERSIONS.index(item[2:])]
        elif item.startswith("!"):
            allowed = [v for v in allowed if v != item[1:]]
        elif item in VERSIONS:
            positives.append(item)
    if positives:
        allowed = [v for v in allowed if v in positives]
    return allowed[0] if allowed else None


def _below_floor(version: str | None) -> bool:
    return version is not None and version in VERSIONS and VERSIONS.index(version) < VERSIONS.index(FLOOR)


_OBSOLETE_POSTFIX = {
    "smtpd_use_tls": "replaced by smtpd_tls_security_level (Postfix 2.3)",
    "smtpd_enforce_tls": "replaced by smtpd_tls_security_level (Postfix 2.3)",
    "smtpd_tls_dh512_param_file": "ignored since Postfix 3.6",
    "smtpd_tls_eecdh_grade": "deprecated since Postfix 3.6 (tls_eecdh_auto_curves decides)",
    "smtpd_tls_dcert_file": "DSA certificates are obsolete; no client needs them",
}


def postfix_rules(config: PostfixConfig, listeners: Sequence[Listener], daemon_where: str,
                  title: Callable[[Listener], str], files: Mapping[Path, FileFacts]) -> list[Diagnosis]:
    fix = fixer_for(config)
    found = []
    for name, why in _OBSOLETE_POSTFIX.items():
        if name in config.explicit:
            value = config.explicit[name]
            line = f"{fix.postconf} -X {name}"
            if name in {"smtpd_use_tls", "smtpd_enforce_tls"} and value == "yes":
                level = "may" if name == "smtpd_use_tls" else "encrypt"
                line = f"{fix.postconf} -e 'smtpd_tls_security_level = {level}'\n{line}"
            found.append(Diagnosis(daemon_where, "obsolete-setting", "warning", f"{name} = {value}: {why}", line))
    dh = config.explicit.get("smtpd_tls_dh1024_param_file", "")
    if dh.startswith("/") and not (files.get(Path(dh)) or FileFacts(Path(dh), False)).exists:
        found.append(Diagnosis(daemon_where, "dh-parameters-missing", "warning", f"smtpd_tls_dh1024_param_file names "
                               f"{dh}, which does not exist; Postfix 3.7+ has built-in groups, the setting can go",
                               f"{fix.postconf} -X smtpd_tls_dh1024_param_file"))
    if config.explicit.get("smtpd_tls_chain_files") and config.explicit.get("smtpd_tls_cert_file"):
        found.append(Diagnosis(daemon_where, "ignored-setting", "warning", "smtpd_tls_cert_file is ignored because "
                               "smtpd_tls_chain_files is set; someone may edit the wrong one",
                               f"{fix.postconf} -X smtpd_tls_cert_file smtpd_tls_key_file"))
    for setting, mandatory in (("smtpd_tls_mandatory_protocols", True), ("smtpd_tls_protocols", False)):
        floor = protocol_floor(config.effective.get(setting, ""))
        if _below_floor(floor):
            found.append(Diagnosis(daemon_where, "protocol-floor", "problem" if mandatory else "warning",
                                   f"{setting} = {config.effective.get(setting)} allows {floor}; TLS 1.0 and 1.1 are "
                                   f"deprecated (RFC 8996)", fix.set_option(None, setting, f">={FLOOR}")))
    roles = {listener.role for listener in listeners}
    for listener in listeners:
        found += _listener_rules(listener, fix, title(listener))
    if "submission" in roles and "submissions" not in roles:
        found.append(Diagnosis(daemon_where, "submissions-missing", "warning", "submission on 587 is offered but "
                               "not submissions on 465 with implicit TLS, which RFC 8314 §3.3 prefers",
                               f"{fix.postconf} -M 'submissions/inet=submissions inet n - n - - smtpd'\n"
                               f"{fix.postconf} -P 'submissions/inet/smtpd_tls_wrappermode=yes' "
                               f"'submissions/inet/syslog_name=postfix/submissions'\n{fix.reload()}"))
    if any(s.command == "tlsproxy" for s in config.services) and "postscreen" in roles:
        found.append(Diagnosis(daemon_where, "long-lived-tls", "note", "postscreen hands STARTTLS to tlsproxy, "
                               "a long-lived process: new certificate files reach it only through a reload",
                               fix.reload()))
    return found


def _listener_rules(listener: Listener, fix: Fixer, where: str) -> list[Diagnosis]:
    settings, found = listener.settings, []
    level = settings.get("smtpd_tls_security_level", "") or (
        "encrypt" if settings.get("smtpd_enforce_tls") == "yes" else "may" if settings.get("smtpd_use_tls") == "yes"
        else "none")
    wrapper = settings.get("smtpd_tls_wrappermode", "no") == "yes"
    if listener.role == "submissions" and not wrapper:
        found.append(Diagnosis(where, "submissions-without-wrappermode", "problem", "this is the submissions "
                               "(465) listener but smtpd_tls_wrappermode is not yes: clients start a TLS handshake "
                               "and the server answers with a plain-text greeting (RFC 8314 §3.3)",
                               _and_reload(fix, listener, "smtpd_tls_wrappermode", "yes")))
    if listener.role == "submission" and level != "encrypt":
        found.append(Diagnosis(where, "submission-tls-optional", "problem", f"smtpd_tls_security_level = {level} "
                               "on the submission (587) listener: clients may submit mail without STARTTLS",
                               _and_reload(fix, listener, "smtpd_tls_security_level", "encrypt")))
        if settings.get("smtpd_tls_auth_only", "no") != "yes":
            found.append(Diagnosis(where, "auth-before-starttls", "problem", "AUTH is announced before STARTTLS "
                                   "(smtpd_tls_auth_only is not yes, TLS optional): passwords can cross in plain text",
                                   _and_reload(fix, listener, "smtpd_tls_auth_only", "yes")))
    if listener.role == "smtp" and level == "none":
        found.append(Diagnosis(where, "starttls-not-offered", "warning", "no STARTTLS on this SMTP listener "
                               "(smtpd_tls_security_level = none): mail from other servers arrives in plain text",
                               fix.set_option(None, "smtpd_tls_security_level", "may") + "\n" + fix.reload()))
    if listener.role == "smtp" and level == "encrypt" and listener.port == 25:
        found.append(Diagnosis(where, "mx-requires-tls", "warning", "port 25 requires STARTTLS; RFC 3207 §4 says a "
                               "publicly referenced MX must not, or mail from servers without TLS bounces",
                               _and_reload(fix, listener, "smtpd_tls_security_level", "may")))
    for setting in ("smtpd_tls_mandatory_protocols", "smtpd_tls_protocols"):
        if setting in listener.overrides and _below_floor(protocol_floor(listener.overrides[setting])):
            found.append(Diagnosis(where, "protocol-floor", "problem", f"{setting} = {listener.overrides[setting]} "
                                   "allows protocols below TLS 1.2 on this listener",
                                   fix.set_option(listener.service, setting, f">={FLOOR}")))
    return found


def _and_reload(fix: Fixer, listener: Listener, name: str, value: str) -> str:
    return fix.set_option(listener.service, name, value) + "\n" + fix.reload()


def sni_maps(settings: Mapping[str, str]) -> list[tuple[Path | None, Path]]:
    """``tls_server_sni_maps`` -> (indexed file or None, source file) per map."""
    maps = []
    for item in split_list(settings.get("tls_server_sni_maps", "")):
        kind, _, path = item.partition(":")
        if path.startswith("/"):
            suffix = INDEXED_MAPS.get(kind)
            maps.append((Path(path + suffix) if suffix else None, Path(path)))
    return maps


def sni_entries(source: FileFacts | None) -> Iterator[tuple[str, tuple[Path, ...]]]:
    """``name  /key.pem, /fullchain.pem`` lines of an SNI map source (comments and continuations handled)."""
    if source is None or not source.data:
        return
    logical: list[str] = []
    for line in source.data.decode(errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and logical:
            logical[-1] += " " + line.strip()
        else:
            logical.append(line.strip())
    for entry in logical:
        name, _, rest = entry.partition(" ")
        files = tuple(Path(p) for p in split_list(rest) if p.startswith("/"))
        if files:
            yield name, files


def sni_map_rules(config: PostfixConfig, files: Mapping[Path, FileFacts], where: str) -> list[Diagnosis]:
    fix = fixer_for(config)
    found = []
    for database, source in sni_maps(config.effective):
        if database is None:
            continue
        built = files.get(database)
        inputs = [files.get(source)] + [files.get(p) for _, entry in sni_entries(files.get(source)) for p in entry]
        newest = max((f.mtime for f in inputs if f is not None and f.exists), default=0.0)
        command = fix._postmap(f"{_kind(config, source)}:{source}")
        if built is None or not built.exists:
            found.append(Diagnosis(where, "sni-map-not-built", "problem", f"tls_server_sni_maps: {database} does not "
                                   f"exist; smtpd cannot look up SNI certificates", command))
        elif built.mtime < newest:
            found.append(Diagnosis(where, "sni-map-stale", "problem", f"tls_server_sni_maps: {database} is older than "
                                   "its source or the certificate files it embeds; it still serves the old ones",
                                   command))
    return found


def _kind(config: PostfixConfig, source: Path) -> str:
    for item in split_list(config.effective.get("tls_server_sni_maps", "")):
        if item.endswith(f":{source}"):
            return item.split(":", 1)[0]
    return "hash"


def dovecot_rules(config: DovecotConfig, listeners: Sequence[Listener], daemon_where: str,
                  title: Callable[[Listener], str]) -> list[Diagnosis]:
    fix = fixer_for(config)
    where_file = fix.dovecot_file or "dovecot.conf"
    found = []
    for warning in config.warnings:
        match = re.search(r"Obsolete setting in (\S+?): (\S+) has been replaced by (\S+)", warning)
        if match:
            old, new = match.group(2), match.group(3)
            value = FLOOR if new == "ssl_min_protocol" else "..."
            found.append(Diagnosis(daemon_where, "obsolete-setting", "warning", warning.removeprefix("Warning: "),
                                   f"in {match.group(1)}: remove {old}, write {new} = {value}"))
    settings = config.settings
    floor = settings.get("ssl_min_protocol", FLOOR)
    if _below_floor(floor.replace("ANY", "SSLv3")):
        found.append(Diagnosis(daemon_where, "protocol-floor", "problem", f"ssl_min_protocol = {floor} allows "
                               "protocols below TLS 1.2 (RFC 8996)",
                               f"in {where_file}: ssl_min_protocol = {FLOOR}\n{fix.reload()}"))
    for listener in listeners:
        implicit = listener.protocol in {"imaps", "pop3s", "smtps", "tls"}
        if settings.get("ssl", "yes") == "no":
            found.append(Diagnosis(title(listener), "tls-disabled", "problem", "ssl = no: this listener offers no "
                                   "TLS" + (" although clients expect a TLS handshake" if implicit else ""),
                                   f"in {where_file}: ssl = required\n{fix.reload()}"))
        elif not implicit and settings.get("disable_plaintext_auth", "yes") != "yes" and settings.get("ssl") != \
                "required":
            found.append(Diagnosis(title(listener), "auth-before-starttls", "problem", "disable_plaintext_auth = no: "
                                   "clients may log in with a password before STARTTLS",
                                   f"in {where_file}: disable_plaintext_auth = yes\n{fix.reload()}"))
    return found


def exim_rules(config: EximConfig, listeners: Sequence[Listener], daemon_where: str,
               title: Callable[[Listener], str], files: Mapping[Path, FileFacts]) -> list[Diagnosis]:
    """465 in ``tls_on_connect_ports`` (RFC 8314 §3.3), STARTTLS advertised on the other listeners (RFC 3207),
    and an ``exim_path`` the daemon can re-execute on SIGHUP."""
    found = []
    exim_path = config.settings.get("exim_path", "")
    binary = files.get(Path(exim_path)) if exim_path.startswith("/") else None
    if binary is not None and not (binary.exists and binary.mode & 0o111):
        actual = config.binary if config.binary.startswith("/") else "the path of the exim binary"
        found.append(Diagnosis(daemon_where, "exim-path-missing", "problem", f"exim_path = {exim_path}, which is "
                               "not an executable: on SIGHUP (a reload, certkeeper's exim hook) the daemon execs it, "
                               "fails and dies",
                               exim.set_option(config, "exim_path", actual, in_macros=False).split("\n")[0]))
    implicit = exim.exim_list(config.settings.get("tls_on_connect_ports", ""))
    advertised = exim.exim_list(config.settings.get("tls_advertise_hosts", ""))
    for listener in listeners:
        if listener.role == "submissions" and listener.protocol == "smtp":
            ports = " : ".join(dict.fromkeys([*implicit, str(listener.port)]))
            found.append(Diagnosis(title(listener), "submissions-without-tls-on-connect", "problem",
                                   f"port {listener.port} is the submissions port but not in tls_on_connect_ports: "
                                   "clients start a TLS handshake and Exim answers with a plain-text greeting "
                                   "(RFC 8314 §3.3)", exim.set_option(config, "tls_on_connect_ports", ports)))
        elif listener.protocol == "smtp" and not advertised:
            severity: Severity = "problem" if listener.role == "submission" else "warning"
            found.append(Diagnosis(title(listener), "starttls-not-offered", severity, "tls_advertise_hosts is "
                                   "empty: Exim offers no STARTTLS here, so mail and passwords cross in plain text",
                                   exim.set_option(config, "tls_advertise_hosts", "*", in_macros=False)
                                   + "\n(Debian's exim4.conf.template: MAIN_TLS_ENABLE = yes in the local macros)"))
    if listeners and not config.settings.get("tls_certificate") and (advertised or implicit):
        found.append(Diagnosis(daemon_where, "certificate-missing", "problem", "tls_certificate is unset: Exim "
                               "offers TLS with a self-signed certificate it makes up at start, which no client "
                               "can verify", "certkeeper setup exim --certificate NAME (Debian's MAIN_TLS_ENABLE, "
                               "MAIN_TLS_CERTIFICATE, MAIN_TLS_PRIVATEKEY)\n" + exim.reload_command(config)))
    roles = {listener.role for listener in listeners}
    if "submission" in roles and "submissions" not in roles:
        ports = " : ".join(dict.fromkeys([*(str(x.port) for x in listeners), "465"]))
        found.append(Diagnosis(daemon_where, "submissions-missing", "warning", "submission on 587 is offered but "
                               "not submissions on 465 with implicit TLS, which RFC 8314 §3.3 prefers",
                               exim.set_option(config, "daemon_smtp_ports", ports).split("\n")[0] + "\n"
                               + exim.set_option(config, "tls_on_connect_ports",
                                                 " : ".join(dict.fromkeys([*implicit, "465"])))))
    return found
