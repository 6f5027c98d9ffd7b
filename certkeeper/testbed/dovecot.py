"""A private Dovecot: ``dovecot -F -c <conf>`` with its own base_dir, never /etc/dovecot.

Listeners on loopback ports picked at start: IMAP (STARTTLS), IMAPS, POP3 (STLS), POP3S and
ManageSieve (STARTTLS). The certificate is read from the paths in an included ``ssl.conf``
(``ssl_cert = <path``), which :meth:`Dovecot.use_certificate` rewrites; Dovecot reads the
files again on :meth:`Dovecot.reload` (``doveadm reload``).

Dovecot refuses to start without a certificate, so one is seeded. Like Postfix, it reloads
"successfully" with a key that does not match the certificate, and then fails every handshake.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.server import (
    LOOPBACK,
    Server,
    accepts_tcp,
    allocate_port,
    make_traversable,
    run_checked,
    spawn,
    terminate,
    wait_until,
)

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
HOSTNAME = "mail.example.test"
USER = "alice"
PASSWORD = "wonderland"  # the test user's; on loopback only
# Debian's DH parameters; with them missing Dovecot 2.3 logs errors for DHE ciphers.
_DH_PARAMETERS = Path("/usr/share/dovecot/dh.pem")
# (service, listener, ssl) for each port; the key of :attr:`Dovecot.ports` is the listener.
_LISTENERS = (
    ("imap-login", "imap", False),
    ("imap-login", "imaps", True),
    ("pop3-login", "pop3", False),
    ("pop3-login", "pop3s", True),
    ("managesieve-login", "sieve", False),
)


class Dovecot(Server):
    """A Dovecot instance serving one test user (:data:`USER` / :data:`PASSWORD`)."""

    name = "Dovecot"

    def __init__(self, directory: Path, *, ca: TestCA | None = None, start_timeout: float = 15.0) -> None:
        """Configure an instance; ``ca`` signs the seed certificate (one is made otherwise)."""
        super().__init__(directory)
        make_traversable(self.directory)
        self.config_file = self.directory / "dovecot.conf"
        self.ssl_config_file = self.directory / "ssl.conf"
        self.base_dir = self.directory / "run"
        self.ports: dict[str, int] = {}
        self.start_timeout = start_timeout
        self.ca = ca or TestCA("certkeeper test CA for Dovecot")
        self.ca_file = self.ca.write_cert(self.directory / "tls" / "ca.pem")
        seed = self.ca.issue([HOSTNAME, "localhost", LOOPBACK])
        self.key_file, self.fullchain_file = seed.write(self.directory / "tls", "seed")
        self.use_certificate(self.fullchain_file, self.key_file)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "dovecot.log"

    @property
    def maildir(self) -> Path:
        """:data:`USER`'s Maildir (``mail_location = maildir:~/Maildir``): where a local Postfix can deliver to
        (see :func:`certkeeper.testbed.postfix.maildir_delivery`); Dovecot serves it over IMAP(S)."""
        return self.directory / "home" / USER / "Maildir"

    def use_certificate(self, cert: Path, key: Path, alt_cert: Path | None = None, alt_key: Path | None = None) -> None:
        """Point Dovecot at other files (``alt_*``: a second key type); effective on :meth:`reload`."""
        lines = [f"ssl_cert = <{cert}", f"ssl_key = <{key}"]
        if alt_cert is not None and alt_key is not None:
            lines += [f"ssl_alt_cert = <{alt_cert}", f"ssl_alt_key = <{alt_key}"]
        self.ssl_config_file.write_text("\n".join(lines) + "\n")

    def reload(self) -> None:
        """``doveadm reload``: new login processes read the certificate files again.

        Succeeds even when the key does not match the certificate; handshakes fail afterwards.
        """
        run_checked([DOVEADM, "-c", str(self.config_file), "reload"], "doveadm reload")

    def _allocate_ports(self) -> None:
        self.ports = {listener: allocate_port() for _, listener, _ in _LISTENERS}

    def _write_config(self) -> None:
        nobody = pwd.getpwnam("nobody")
        home = self.directory / "home"
        (home / USER).mkdir(parents=True, exist_ok=True)
        os.chown(home / USER, nobody.pw_uid, nobody.pw_gid)
        services = ""
        for service in dict.fromkeys(name for name, _, _ in _LISTENERS):
            listeners = "".join(
                f"  inet_listener {listener} {{\n"
                f"    address = {LOOPBACK}\n    port = {self.ports[listener]}\n"
                f"    ssl = {'yes' if ssl else 'no'}\n  }}\n"
                for name, listener, ssl in _LISTENERS
                if name == service
            )
            services += f"service {service} {{\n{listeners}}}\n"
        dh = f"ssl_dh = <{_DH_PARAMETERS}\n" if _DH_PARAMETERS.exists() else ""
        self.config_file.write_text(
            f"base_dir = {self.base_dir}\n"
            f"state_dir = {self.directory / 'state'}\n"
            # Distinct instance names keep doveadm and the logs of parallel runs apart.
            f"instance_name = certkeeper-testbed-{self.directory.name}\n"
            "protocols = imap pop3 sieve\n"
            f"listen = {LOOPBACK}\n"
            f"hostname = {HOSTNAME}\n"
            f"log_path = {self.log_path}\n"
            "ssl = yes\n"
            f"{dh}"
            f"!include {self.ssl_config_file}\n"
            "auth_mechanisms = plain login\n"
            "passdb {\n  driver = static\n"
            f"  args = user={USER} password={PASSWORD}\n}}\n"
            "userdb {\n  driver = static\n"
            f"  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={home}/%u\n}}\n"
            f"first_valid_uid = {nobody.pw_uid}\n"
            "mail_location = maildir:~/Maildir\n"
            f"{services}"
        )

    def _launch(self) -> None:
        self._write_config()
        # -F: stay in the foreground as our child, so stopping needs no pid file.
        process = spawn([DOVECOT, "-F", "-c", str(self.config_file)], self.log_path)
        self._process = process
        ready = wait_until(
            lambda: all(accepts_tcp(port) for port in self.ports.values()),
            timeout=self.start_timeout,
            alive=lambda: process.poll() is None,
        )
        if not ready:
            msg = f"not listening on {LOOPBACK} ports {self.ports}"
            raise self.fail(msg)

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None
