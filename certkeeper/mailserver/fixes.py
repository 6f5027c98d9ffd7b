"""Fix lines in each mail daemon's own words: the exact ``postconf`` command, Dovecot snippet or Exim macro
that mends a finding, and what certkeeper has installed (:class:`ManagedCertificate`) to point a daemon at.

Pure functions of :mod:`certkeeper.mailserver.config` values; :mod:`certkeeper.mailserver.rules` and
:mod:`certkeeper.mailserver.doctor` attach these lines to their findings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from certkeeper.mailserver import exim
from certkeeper.mailserver.config import DEFAULT_POSTFIX_DIR, DovecotConfig, PostfixConfig, TlsFiles
from certkeeper.mailserver.exim import EximConfig
from certkeeper.mailserver.tlsfiles import Issue
from certkeeper.values import field, frozen

_KEY_SETTING = {"smtpd_tls_cert_file": "smtpd_tls_key_file", "smtpd_tls_eccert_file": "smtpd_tls_eckey_file",
                "smtpd_tls_dcert_file": "smtpd_tls_dkey_file", "ssl_cert": "ssl_key", "ssl_alt_cert": "ssl_alt_key",
                "tls_certificate": "tls_privatekey"}
# Postfix map types that postmap builds into a file beside their source, and its suffix.
INDEXED_MAPS = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag", "sdbm": ".pag"}


@frozen
class ManagedCertificate:
    """What certkeeper has installed for one certificate: enough to tell managed files from stale copies."""

    name: str
    domains: tuple[str, ...]
    current_dir: Path
    current_id: str | None
    current_fingerprints: frozenset[str]
    versions: Mapping[str, str] = field(default_factory=dict)  # fingerprint -> version id, every version
    reload: tuple[str, ...] = ()
    pairs: int = 1


@frozen
class Fixer:
    """Builds fix lines in one daemon's own words (``postconf -c DIR``, a Dovecot snippet)."""

    daemon: str
    postfix_dir: Path = DEFAULT_POSTFIX_DIR
    dovecot_file: Path | None = None
    exim: EximConfig | None = None

    @property
    def postconf(self) -> str:
        return "postconf" if self.postfix_dir == DEFAULT_POSTFIX_DIR else f"postconf -c {self.postfix_dir}"

    def _reload_command(self) -> str:
        if self.daemon == "postfix":
            default = self.postfix_dir == DEFAULT_POSTFIX_DIR
            return "postfix reload" if default else f"postfix -c {self.postfix_dir} reload"
        if self.daemon == "dovecot":
            return "doveadm reload" if self.dovecot_file is None else f"doveadm -c {self.dovecot_file} reload"
        if self.daemon == "exim":
            return exim.reload_command(self.exim)
        return "restart the daemon"

    def reload(self, managed: Sequence[ManagedCertificate] = ()) -> str:
        names = [m.name for m in managed if any(self.daemon in hook for hook in m.reload)]
        extra = f"\nor, for certkeeper's certificate: certkeeper hooks test {names[0]} (reloads and verifies)" \
            if names else ""
        return self._reload_command() + extra

    def unreachable(self) -> str:
        if self.daemon == "postfix":
            return f"{self._reload_command().replace('reload', 'status')}; then read the mail log (smtpd logs " \
                   "'cannot load certificate' or 'key-certificate mismatch' on each connection)"
        if self.daemon == "dovecot":
            command = "doveadm" if self.dovecot_file is None else f"doveadm -c {self.dovecot_file}"
            return f"{command} log errors"
        if self.daemon == "exim":
            return exim.unreachable(self.exim)
        return "look at the daemon's log"

    def hook_line(self) -> str:
        if self.daemon == "postfix" and self.postfix_dir != DEFAULT_POSTFIX_DIR:
            return f'reload = ["postfix"] and hook_env = {{ POSTFIX_CONFIG_DIR = "{self.postfix_dir}" }}'
        if self.daemon == "dovecot" and self.dovecot_file is not None:
            return f'reload = ["dovecot"] and hook_env = {{ DOVECOT_CONFIG = "{self.dovecot_file}" }}'
        if self.daemon == "exim":
            return exim.hook_line(self.exim)
        return f'reload = ["{self.daemon}"]'

    def set_option(self, service: str | None, name: str, value: str) -> str:
        """Set one Postfix parameter in main.cf, or for one master.cf inet service when ``service`` is given."""
        if service is None:
            return f"{self.postconf} -e '{name} = {value}'"
        return f"{self.postconf} -P '{service}/inet/{name}={value}'"

    def set_files(self, tls: TlsFiles, paths: Sequence[str]) -> str:
        """Point a certificate setting at other files, then reload."""
        if tls.setting == "tls_server_sni_maps":
            return f"in {tls.scope}: {tls.server_name} {', '.join(paths)}\n{self._postmap(tls.scope)}"
        key_setting = _KEY_SETTING.get(tls.setting)
        if self.daemon == "dovecot":
            lines = f"{tls.setting} = <{paths[0]}\n{key_setting} = <{paths[-1]}"
            where = f"in {tls.scope}" if tls.server_name else f"in {self.dovecot_file or 'dovecot.conf'}"
            return f"{where}:\n{lines}\n{self._reload_command()}"
        if self.daemon == "exim":
            return exim.set_files(self.exim, paths[0], paths[-1])
        if self.daemon != "postfix":
            return f"set {tls.setting} to {paths[0]}" + (f" and {key_setting} to {paths[-1]}" if key_setting else "")
        service = tls.scope if tls.scope != "main.cf" else None
        if key_setting is None:
            line = self.set_option(service, tls.setting, ", ".join(paths))
        else:
            line = self.set_option(service, tls.setting, paths[0]) + "\n" + self.set_option(service, key_setting,
                                                                                              paths[-1])
        return f"{line}\n{self._reload_command()}"

    def set_managed(self, tls: TlsFiles, certificate: ManagedCertificate) -> str:
        """Serve certkeeper's ``current`` files instead (combined.pem for Postfix: key and chain flip as one)."""
        folders = [certificate.current_dir / family for family in ("ecdsa", "rsa")] if certificate.pairs > 1 \
            else [certificate.current_dir]
        if self.daemon == "postfix" and tls.setting != "tls_server_sni_maps":
            chain = TlsFiles("smtpd_tls_chain_files", tls.files, "chain", tls.scope)
            return self.set_files(chain, [str(f / "combined.pem") for f in folders])
        if self.daemon == "postfix":
            return self.set_files(tls, [str(f / "combined.pem") for f in folders])
        return self.set_files(tls, [str(folders[0] / "fullchain.pem"), str(folders[0] / "privkey.pem")])

    def _postmap(self, source: str) -> str:
        database = next((m for m in INDEXED_MAPS if source.startswith(f"{m}:")), "")
        target = source if database else f"hash:{source}"
        where = "" if self.postfix_dir == DEFAULT_POSTFIX_DIR else f" -c {self.postfix_dir}"
        return f"postmap{where} -F {target}\n{self._reload_command()}"

    def for_issue(self, issue: Issue, tls: TlsFiles) -> str:
        """The fix for a file issue found by :func:`certkeeper.mailserver.tlsfiles.judge_pair`."""
        path = issue.path or tls.files[0]
        if issue.code == "key-world-readable":
            return exim.key_mode(path) if self.daemon == "exim" else \
                f"chmod 0600 {path}  (or 0640 with chown root:<daemon group>; the daemon reads it as root)"
        if issue.code == "file-world-writable":
            return f"chmod go-w {path}"
        if issue.code == "key-owner":
            return f"chown root: {path}"
        if issue.code == "chain-incomplete":
            return (f"serve the full chain: leaf first, then the intermediate(s), e.g. cat cert.pem chain.pem > "
                    f"{path} (certkeeper's fullchain.pem or combined.pem is already complete)\n"
                    f"{self._reload_command()}")
        if issue.code == "chain-order":
            return f"rewrite {path} in the order: server certificate, its issuer, that one's issuer\n" \
                   f"{self._reload_command()}"
        if issue.code == "certificate-expiring" and _managed_name(path):
            return f"certkeeper renew {_managed_name(path)}"
        if _managed_name(path):
            return f"certkeeper renew --force {_managed_name(path)}\n{self._reload_command()}"
        setting = f"{tls.setting} ({tls.scope})" if tls.scope not in {"main.cf", "exim"} else tls.setting
        return (f"point {setting} at a valid key and its certificate chain, e.g. certkeeper's: certkeeper setup "
                f"{self.daemon} --certificate NAME")


def _managed_name(path: Path) -> str | None:
    match = re.search(r"/certs/([^/]+)/(?:current|versions/[^/]+)/", str(path))
    return match.group(1) if match else None


def fixer_for(config: PostfixConfig | DovecotConfig | EximConfig | None) -> Fixer:
    if isinstance(config, PostfixConfig):
        return Fixer("postfix", postfix_dir=config.config_dir)
    if isinstance(config, DovecotConfig):
        default = config.config_file == Path("/etc/dovecot/dovecot.conf")
        return Fixer("dovecot", dovecot_file=None if default else config.config_file)
    return Fixer("exim", exim=config)
