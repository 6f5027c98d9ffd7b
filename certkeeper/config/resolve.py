"""What the configuration names on this machine: hook programs, groups and secret files, each checked as
``config check`` promises ("OK" means ``renew`` will find them) and reported with its key path.

Pure of certkeeper's state, but not of the machine: it looks at the file system and the group database.  The
parser (:mod:`.load`) stays free of both, so a configuration can be parsed anywhere.
"""

from __future__ import annotations

import grp
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from certkeeper.config.load import AcmeIssuerConfig, CaIssuerConfig, Config
from certkeeper.errors import ConfigError, UnsafePath
from certkeeper.permissions import check_trusted_file

# Secrets may be readable by a group (0640: the service user's group), never writable by it nor seen by others.
_SECRET_FORBIDDEN_BITS = 0o037


def default_hook_dirs() -> list[Path]:
    """Where hook names are looked up when ``hooks_dir`` is not set: local overrides first, then shipped."""
    return [
        Path("/etc/certkeeper/hooks"),
        Path(sys.prefix) / "share" / "certkeeper" / "hooks",  # wheel, pipx, virtualenv and .deb installs
        Path(__file__).resolve().parents[2] / "hooks",  # a source checkout
    ]


def resolve_hook(reference: str, hooks_dir: Path | None, config_file: Path, key_path: str = "reload") -> Path:
    """A hook name (``postfix``) or an absolute path -> the executable to run; :class:`ConfigError` if it is not
    there, not executable, or writable by anyone but its owner (any user could then run code as certkeeper), or
    if it or a folder above it belongs to anyone but root and the service user (who could swap it)."""
    if reference.startswith("/"):
        path = Path(reference)
        candidates = [path]
    else:
        candidates = [d / reference for d in ([hooks_dir] if hooks_dir else default_hook_dirs())]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        where = ", ".join(str(c.parent) for c in candidates)
        found = _not_a_file(path) if reference.startswith("/") else f"which is not in {where}"
        raise ConfigError(config_file, key_path, f'hook "{reference}", {found}',
                          "a hook name from hooks/ or an absolute path to an executable")
    if not os.access(path, os.X_OK):
        raise ConfigError(config_file, key_path, f'hook "{path}", which is not executable',
                          "an executable file", f"chmod 755 {path}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise ConfigError(config_file, key_path, f'hook "{path}" with mode {mode:04o}, writable by others',
                          "a hook only its owner may change", f"chmod go-w {path}")
    try:
        check_trusted_file(path, "reload hook")
    except UnsafePath as exc:
        raise ConfigError(config_file, key_path, f'hook "{path}", but {exc.path} {exc.problem} (owner {exc.owner}, '
                          f"mode {exc.mode & 0o7777:04o})", "a hook only root or the service user can change",
                          exc.fix) from None
    return path


def _not_a_file(path: Path) -> str:
    """What an absolute hook path is instead of a file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "which does not exist"
    except OSError as exc:
        return f"which cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"a symbolic link to {path.readlink()}, which does not exist" if not path.exists() \
            else f"a symbolic link to {path.readlink()}, which is not a file"
    if stat.S_ISDIR(st.st_mode):
        return "which is a folder, not a program"
    return "which is not a regular file"


def check_resolvable(config: Config) -> list[ConfigError]:
    """Every hook, group and secret file the configuration names, checked; the errors, none when all is well."""
    errors: list[ConfigError] = []
    for certificate in config.certificates.values():
        where = f"certificates.{certificate.name}"
        for key, references in (("reload", certificate.reload), ("deploy_hooks", certificate.deploy_hooks)):
            for reference in references:
                try:
                    resolve_hook(reference, config.settings.hooks_dir, config.path, f"{where}.{key}")
                except ConfigError as exc:
                    errors.append(exc)
        if certificate.group is not None:
            try:
                grp.getgrnam(certificate.group)
            except KeyError:
                errors.append(ConfigError(config.path, f"{where}.group", f'group "{certificate.group}", which does '
                                          "not exist on this machine", "the name of an existing group",
                                          "getent group lists them"))
    for key_path, path in _secret_files(config):
        problem = _secret_problem(path)
        if problem:
            errors.append(ConfigError(config.path, key_path, f"{path}: {problem[0]}", problem[1], problem[2]))
    return errors


def _secret_files(config: Config) -> Iterator[tuple[str, Path]]:
    settings = config.settings
    if settings.database_password_file:
        yield "certkeeper.database_password_file", settings.database_password_file
    if settings.fleet_key_file:
        yield "certkeeper.fleet_key_file", settings.fleet_key_file
    if config.alerts and config.alerts.smtp_password_file:
        yield "alerts.smtp_password_file", config.alerts.smtp_password_file
    for name, issuer in config.issuers.items():
        if isinstance(issuer, AcmeIssuerConfig):
            if issuer.tsig_key_file:
                yield f"issuers.{name}.tsig_key_file", issuer.tsig_key_file
            if issuer.eab_hmac_key_file:
                yield f"issuers.{name}.eab_hmac_key_file", issuer.eab_hmac_key_file
        elif isinstance(issuer, CaIssuerConfig) and issuer.passphrase_file:
            yield f"issuers.{name}.passphrase_file", issuer.passphrase_file
    for name, certificate in config.certificates.items():
        if certificate.dane and certificate.dane.tsig_key_file:
            yield f"certificates.{name}.dane.tsig_key_file", certificate.dane.tsig_key_file


def _secret_problem(path: Path) -> tuple[str, str, str] | None:
    """(found, expected, hint) when a secret file is missing, unreadable or readable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "no such file", "a file holding the secret", f"create it with mode 0600: install -m 600 /dev/null {path}"
    except OSError as exc:
        return f"a file that cannot be examined ({exc.strerror})", "a readable secret file", ""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", "a file holding the secret", ""
    if not os.access(path, os.R_OK):
        return "a file this user cannot read", "a secret file readable by certkeeper's user", \
            f"chown root {path} (or the service user)"
    return secret_mode_problem(path, st.st_mode)


def secret_mode_problem(path: Path, st_mode: int) -> tuple[str, str, str] | None:
    """(found, expected, hint) when a secret file's mode lets others read it or its group change it."""
    mode = stat.S_IMODE(st_mode)
    if mode & _SECRET_FORBIDDEN_BITS:
        return f"mode {mode:04o}", "a secret file no wider than 0640", f"chmod 600 {path}"
    return None
