"""certkeeper pointed at the test bed's mail stack: a configuration for one certificate from Pebble, reloading
Postfix and Dovecot and verified on all their listeners; Postfix and Dovecot pointed at certkeeper's files; and
what each listener serves.  Shared by the demo (:mod:`certkeeper.testbed.demo`) and the end-to-end tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from certkeeper import pki
from certkeeper.model import KeyType
from certkeeper.probe import ProbeOptions, probe_sync
from certkeeper.targets import parse_target
from certkeeper.testbed.dovecot import Dovecot
from certkeeper.testbed.pebble import Pebble
from certkeeper.testbed.postfix import Postfix
from certkeeper.testbed.smtp_sink import SmtpSink
from certkeeper.values import frozen

CERTIFICATE = "mail"
DOMAINS = ("mail.example.test", "smtp.example.test")
ALERT_TO = "postmaster@example.test"
ALERT_FROM = "certkeeper@mail.example.test"


@frozen
class Listener:
    """One port a mail client connects to, and what to call it in the narration."""

    label: str
    endpoint: str


def mail_listeners(postfix: Postfix, dovecot: Dovecot) -> list[Listener]:
    """Every Postfix and Dovecot listener as a certkeeper endpoint (the scheme names the STARTTLS dialect)."""
    schemes = {"smtp": "smtp", "submission": "smtp", "submissions": "smtps",
               "imap": "imap", "imaps": "imaps", "pop3": "pop3", "pop3s": "pop3s", "sieve": "sieve"}
    listeners = [Listener(f"Postfix {name}", f"{schemes[name]}://127.0.0.1:{port}")
                 for name, port in postfix.ports.items()]
    listeners += [Listener(f"Dovecot {name}", f"{schemes[name]}://127.0.0.1:{port}")
                  for name, port in dovecot.ports.items()]
    return listeners


def write_config(path: Path, *, state_dir: Path, pebble: Pebble, trust_roots: Path,
                 key_types: Sequence[KeyType], renew_before: str, postfix: Postfix | None = None,
                 dovecot: Dovecot | None = None, sink: SmtpSink | None = None,
                 check_interval: str = "1m") -> Path:
    """A certkeeper configuration for the test bed: one certificate from Pebble, reloads, endpoints, alerts.

    Without ``postfix``/``dovecot`` the certificate has no hooks and no endpoints: the form used to issue the
    first version, before the mail daemons read certkeeper's files.
    """
    reload = [name for name, server in (("postfix", postfix), ("dovecot", dovecot)) if server is not None]
    hook_env = {}
    if postfix is not None:
        hook_env["POSTFIX_CONFIG_DIR"] = str(postfix.config_dir)
    if dovecot is not None:
        hook_env["DOVECOT_CONFIG"] = str(dovecot.config_file)
    endpoints = [listener.endpoint for listener in mail_listeners(postfix, dovecot)] \
        if postfix is not None and dovecot is not None else []
    alerts = ""
    if sink is not None:
        alerts = (f"\n[alerts]\nto = {json.dumps([ALERT_TO])}\nfrom = {json.dumps(ALERT_FROM)}\n"
                  f'smtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\nsmtp_security = "none"\n'
                  'smtp_timeout = "10s"\nnotify_success = true\n')
    env = ", ".join(f"{key} = {json.dumps(value)}" for key, value in hook_env.items())
    path.write_text(
        "[certkeeper]\n"
        f"state_dir = {json.dumps(str(state_dir))}\n"
        f'check_interval = "{check_interval}"\n'
        'verify_timeout = "20s"\nhook_timeout = "30s"\nlock_timeout = "10s"\nkeep_versions = 3\n'
        f"{alerts}\n"
        "[issuers.pebble]\n"
        'type = "acme"\n'
        f"directory = {json.dumps(pebble.directory_url)}\n"
        'contact = "mailto:hostmaster@example.test"\n'
        'challenge = "http-01"\n'
        'http_address = "127.0.0.1"\n'
        f"http_port = {pebble.http_port}\n"
        f"ca_bundle = {json.dumps(str(pebble.ca_file))}\n"
        f"trust_roots = {json.dumps(str(trust_roots))}\n\n"
        f"[certificates.{CERTIFICATE}]\n"
        'issuer = "pebble"\n'
        f"domains = {json.dumps(list(DOMAINS))}\n"
        f"key_types = {json.dumps([k.value for k in key_types])}\n"
        f'renew_before = "{renew_before}"\n'
        f"reload = {json.dumps(reload)}\n"
        f"hook_env = {{ {env} }}\n"
        f"endpoints = {json.dumps(endpoints)}\n"
    )
    return path


def point_mail_servers_at(current: Path, key_types: Sequence[KeyType], postfix: Postfix,
                          dovecot: Dovecot) -> None:
    """Configure Postfix and Dovecot to read certkeeper's ``current/`` files, as an administrator would."""
    dual = len(key_types) > 1
    folders = [current / k.family for k in key_types] if dual else [current]
    postfix.postconf(smtpd_tls_chain_files=", ".join(str(f / "combined.pem") for f in folders))
    alternative = folders[1] if dual else None
    dovecot.use_certificate(folders[0] / "fullchain.pem", folders[0] / "privkey.pem",
                            alternative / "fullchain.pem" if alternative else None,
                            alternative / "privkey.pem" if alternative else None)
    postfix.reload()
    dovecot.reload()


def served_fingerprints(endpoints: Sequence[str], *, dual: bool) -> dict[str, tuple[str, ...]]:
    """What each endpoint serves right now (each key type when ``dual``), as ``key-type sha256`` strings."""
    options = ProbeOptions(timeout=10, key_type="all" if dual else None)
    results = probe_sync([parse_target(e) for e in endpoints], options, now=pki.now_utc())
    served: dict[str, tuple[str, ...]] = {}
    for result in results:
        summaries = result.served or ((result.certificate,) if result.certificate else ())
        served[result.target.text] = tuple(f"{s.key_type} {s.fingerprint_sha256}" for s in summaries) \
            or (f"nothing: {result.message}",)
    return served
