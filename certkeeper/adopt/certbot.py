"""Taking over from certbot: ``/etc/letsencrypt`` read, each lineage turned into configuration and a first version.

What a lineage becomes:

- ``renewal/<name>.conf`` (certbot's configobj file) gives the ACME server, the account, the authenticator
  (``standalone`` and ``webroot`` map to http-01), ``reuse_key`` and the deploy hook (certbot stores
  ``--deploy-hook`` as ``renew_hook``), which becomes a certbot-style ``deploy_hooks`` entry: run once per
  certificate and key type with ``RENEWED_LINEAGE`` set, as certbot runs it.  ``renewal-hooks/deploy/*`` count
  as deploy hooks of every lineage.
- ``live/<name>/`` gives the names (the certificate's SANs), the key type and the current pair, installed as the
  certificate's first version: nothing is ordered.
- ``accounts/<server>/<id>/`` gives the account: its key (RSA, as certbot makes them) and URL are written where
  the ACME issuer keeps its account, so the CA sees the same account (rate limits, ARI ``replaces``).

What cannot be mapped (pre and post hooks, DNS plugins, manual auth) is listed for the operator; certbot's own
timer is left alone.  :func:`read_certbot` and :func:`plan_import` are pure of the state directory;
:func:`apply_import` writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from certkeeper import pki
from certkeeper.config import Config
from certkeeper.errors import InputError
from certkeeper.issuers.acme import account_home
from certkeeper.model import KeyType, is_safe_name
from certkeeper.store.atomic import write_atomic
from certkeeper.store.versions import CertificateHome, KeyPair, Ownership
from certkeeper.values import field, frozen

DEFAULT_DIRECTORY = Path("/etc/letsencrypt")
_KNOWN_SERVERS = {
    "acme-v02.api.letsencrypt.org": "letsencrypt",
    "acme-staging-v02.api.letsencrypt.org": "letsencrypt-staging",
}


@frozen
class Lineage:
    """One certbot lineage as certkeeper will manage it."""

    name: str
    domains: tuple[str, ...]
    key_type: KeyType
    server: str
    account: str
    challenge: tuple[tuple[str, str], ...]  # the issuer's http-01 settings, as (key, TOML value)
    reuse_key: bool
    deploy_hooks: tuple[str, ...]
    live: Path
    unmapped: tuple[str, ...] = ()


@frozen
class Account:
    server: str
    id: str
    uri: str
    key: Mapping[str, str] = field(repr=False)  # the JWK; never printed


@frozen
class CertbotState:
    directory: Path
    lineages: tuple[Lineage, ...]
    accounts: tuple[Account, ...]


@frozen
class ImportPlan:
    """What the import adds: TOML to append, and which issuer each lineage and account belongs to."""

    toml: str
    issuer_of: Mapping[str, str]  # lineage name -> issuer name
    new_issuers: tuple[str, ...]
    notes: tuple[str, ...]


def read_renewal_conf(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """certbot's renewal file: the top-level keys and ``[renewalparams]`` (nested ``[[...]]`` maps flattened
    as ``map.key``).  Values are unquoted strings, as configobj writes them."""
    top: dict[str, str] = {}
    params: dict[str, str] = {}
    section, nested = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            nested = line.strip("[]")
            continue
        if line.startswith("["):
            section, nested = line.strip("[]"), ""
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip().strip('"')
        if not section:
            top[key] = value
        elif section == "renewalparams":
            params[f"{nested}.{key}" if nested else key] = value
    return top, params


def read_certbot(directory: Path) -> CertbotState:
    """Every lineage and account under ``directory``; :class:`InputError` naming the file that is unreadable."""
    renewal = directory / "renewal"
    if not renewal.is_dir():
        raise InputError(str(directory), "no renewal/ folder: not a certbot configuration directory")
    global_hooks = tuple(sorted(str(p) for p in (directory / "renewal-hooks" / "deploy").glob("*")
                                if p.is_file()))
    lineages = tuple(_lineage(path, directory, global_hooks) for path in sorted(renewal.glob("*.conf")))
    accounts = tuple(_account(path, directory / "accounts")
                     for path in sorted((directory / "accounts").glob("*/**/regr.json")))
    return CertbotState(directory, lineages, accounts)


def _lineage(path: Path, directory: Path, global_hooks: tuple[str, ...]) -> Lineage:
    try:
        top, params = read_renewal_conf(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"cannot read the renewal file ({exc})") from None
    name = path.name.removesuffix(".conf")
    live = Path(top.get("cert", str(directory / "live" / name / "cert.pem"))).parent
    try:
        certificate = pki.load_certificates((live / "cert.pem").read_bytes())[0]
        key = pki.load_key((live / "privkey.pem").read_bytes())
    except (OSError, ValueError, IndexError) as exc:
        raise InputError(str(live), f"lineage {name}: cannot read cert.pem and privkey.pem ({exc})") from None
    try:
        key_type = KeyType(pki.key_type_of(key))
    except ValueError:
        raise InputError(str(live), f"lineage {name}: privkey.pem holds a key of type {pki.key_type_of(key)}, which "
                         f"certkeeper does not issue for; supported key types: {', '.join(KeyType)}") from None
    if pki.is_ca(certificate):
        raise InputError(str(live), f"lineage {name}: cert.pem is a CA certificate (basicConstraints CA:TRUE), not "
                         "a server certificate; certkeeper does not take it over")
    unmapped = [f"{name}: {key} = {params[key]} (run it from a reload or deploy hook of your own)"
                for key in ("pre_hook", "post_hook") if params.get(key)]
    authenticator = params.get("authenticator", "")
    challenge: list[tuple[str, str]] = [("challenge", '"http-01"')]
    if authenticator == "standalone":
        if params.get("http01_port"):
            challenge.append(("http_port", params["http01_port"]))
        if params.get("http01_address"):
            challenge.append(("http_address", json.dumps(params["http01_address"])))
    elif authenticator == "webroot":
        roots = [v for k, v in params.items() if k.startswith("webroot_map.")] or \
            [p for p in params.get("webroot_path", "").split(",") if p.strip()]
        if roots:
            challenge.append(("webroot", json.dumps(roots[0].strip())))
    else:
        unmapped.append(f"{name}: authenticator {authenticator or '(none)'} has no certkeeper equivalent; the "
                        f"issuer uses http-01 standalone: set challenge (dns-01 with RFC 2136 or dns_hook) to fit")
    hooks = tuple(h for h in (params.get("renew_hook", ""), *global_hooks) if h)
    return Lineage(name=name, domains=tuple(pki.subject_alternative_names(certificate)) or (name,),
                   key_type=key_type, server=params.get("server", ""),
                   account=params.get("account", ""), challenge=tuple(challenge),
                   reuse_key=params.get("reuse_key", "False") == "True", deploy_hooks=hooks, live=live,
                   unmapped=tuple(unmapped))


def _account(regr: Path, accounts: Path) -> Account:
    folder = regr.parent
    try:
        uri = str(json.loads(regr.read_text())["uri"])
        key = json.loads((folder / "private_key.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(str(folder), f"cannot read the certbot account ({type(exc).__name__})") from None
    if not isinstance(key, dict):
        raise InputError(str(folder), "cannot read the certbot account (private_key.json holds no JWK object)")
    # accounts/<host[:port]>/<path of the directory URL>/<id>/: the server is rebuilt from the folder names
    server = "https://" + "/".join(folder.relative_to(accounts).parts[:-1])
    return Account(server=server, id=folder.name, uri=uri, key=key)


def plan_import(state: CertbotState, existing: Mapping[str, Any]) -> ImportPlan:
    """The TOML for every lineage, reusing an ACME issuer of ``existing`` (the configuration file's TOML, which may
    have no certificates yet) whose directory is the lineage's server."""
    issuers: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    configured = _table(existing, "issuers")
    taken = set(configured)
    for name, issuer in configured.items():
        if isinstance(issuer, dict) and issuer.get("type") == "acme" and isinstance(issuer.get("directory"), str):
            issuers.setdefault((issuer["directory"], ()), name)
    certificates = _table(existing, "certificates")
    new_issuers: list[str] = []
    blocks: list[str] = []
    issuer_of: dict[str, str] = {}
    notes: list[str] = []
    for lineage in state.lineages:
        found = issuers.get((lineage.server, lineage.challenge)) or issuers.get((lineage.server, ()))
        if found is None:
            found = _issuer_name(lineage.server, taken)
            taken.add(found)
            issuers[(lineage.server, lineage.challenge)] = found
            new_issuers.append(found)
            blocks.append(f"[issuers.{found}]\n# from certbot: {lineage.server}\ntype = \"acme\"\n"
                          f"directory = {json.dumps(lineage.server)}\n"
                          + "".join(f"{key} = {value}\n" for key, value in lineage.challenge))
        issuer_of[lineage.name] = found
        name = _certificate_name(lineage.name, certificates)
        block = (f"[certificates.{json.dumps(name)}]\n# from certbot lineage {lineage.live}\nissuer = \"{found}\"\n"
                 f"domains = {json.dumps(list(lineage.domains))}\nkey_types = [\"{lineage.key_type.value}\"]\n"
                 f"reuse_key = {'true' if lineage.reuse_key else 'false'}\n")
        if lineage.deploy_hooks:
            block += f"deploy_hooks = {json.dumps(list(lineage.deploy_hooks))}\n"
        blocks.append(block)
        notes += lineage.unmapped
    return ImportPlan("\n".join(blocks), issuer_of, tuple(new_issuers), tuple(notes))


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _issuer_name(server: str, taken: set[str]) -> str:
    host = urlsplit(server).hostname or "acme"
    base = _KNOWN_SERVERS.get(host) or re.sub(r"[^A-Za-z0-9_-]+", "-", f"certbot-{host}").strip("-")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _certificate_name(name: str, configured: Mapping[str, Any]) -> str:
    if not is_safe_name(name):
        msg = f"the lineage name {name!r} cannot be a certificate name"
        raise InputError(name, msg)
    if name in configured:
        msg = f"a certificate named {name!r} is configured already; rename it or remove it first"
        raise InputError(name, msg)
    return name


def check_importable(state: CertbotState) -> None:
    """Read first what :func:`apply_import` takes (the account key and the pair of every lineage): one it cannot
    take fails the import before anything is written, and the dry run with it."""
    accounts = {(a.server, a.id): a for a in state.accounts}
    for lineage in state.lineages:
        account = accounts.get((lineage.server, lineage.account))
        if account is not None:
            _account_key(account)
        _pair(lineage)


def apply_import(state: CertbotState, plan: ImportPlan, config: Config, *, now: datetime) -> list[str]:
    """Accounts and first versions into ``config``'s state directory (``config`` already holds the imported
    tables); returns what was done, a line each.  An account already there is kept, never overwritten."""
    done: list[str] = []
    by_server_id = {(a.server, a.id): a for a in state.accounts}
    for lineage in state.lineages:
        issuer = plan.issuer_of[lineage.name]
        account = by_server_id.get((lineage.server, lineage.account))
        if account is not None:
            done.append(_import_account(config.settings.state_dir, issuer, account))
        certificate = config.certificates[lineage.name]
        home = CertificateHome(config.settings.state_dir, certificate.name, Ownership(certificate.group))
        if home.current() is not None:
            done.append(f"{lineage.name}: a version is installed already; the certbot pair was not imported")
            continue
        pair = _pair(lineage)
        version = home.write_version([pair], issuer=issuer, domains=certificate.domains, now=now)
        home.activate(version)
        done.append(f"{lineage.name}: imported the current pair as version {version.id} (serial "
                    f"{pki.serial_hex(pair.certificate)}, expires {pki.not_after(pair.certificate):%Y-%m-%d})")
    return done


def _import_account(state_dir: Path, issuer: str, account: Account) -> str:
    home = account_home(state_dir, issuer, account.server)
    if (home / "account.key").exists():
        return f"{issuer}: an account is configured already at {home}; certbot's account {account.id} was not used"
    key = _account_key(account)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(home / "account.key", pki.key_to_pem(key), mode=0o600)  # 0600: the CA account's key
    write_atomic(home / "account.json", json.dumps({"directory": account.server, "uri": account.uri}).encode(),
                 mode=0o600)
    return f"{issuer}: took over certbot's account {account.uri}"


def _account_key(account: Account) -> pki.PrivateKey:
    try:
        return pki.key_from_jwk(dict(account.key))
    except ValueError as exc:
        raise InputError(account.id, f"certbot account key: {exc}") from None


def _pair(lineage: Lineage) -> KeyPair:
    try:
        key = pki.load_key((lineage.live / "privkey.pem").read_bytes())
        leaf, chain = pki.split_fullchain((lineage.live / "fullchain.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(str(lineage.live), f"cannot read the pair ({exc})") from None
    if not pki.key_matches(key, leaf):
        raise InputError(str(lineage.live), "privkey.pem does not match the certificate in fullchain.pem")
    return KeyPair(lineage.key_type, key, leaf, tuple(chain))


def summary_notes(state: CertbotState) -> Sequence[str]:
    """What the operator still has to do after an import."""
    return (
        "certbot still renews these lineages on its own: disable it once certkeeper serves them "
        "(systemctl disable --now certbot.timer; rm /etc/cron.d/certbot)",
        f"certkeeper does not change {state.directory}; remove it when you no longer need it",
    )

