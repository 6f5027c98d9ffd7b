"""A private Postfix instance: ``postfix -c <dir> start``, never the system's /etc/postfix.

Three smtpd listeners on loopback ports picked at start: ``smtp`` (STARTTLS offered),
``submission`` (STARTTLS required) and ``submissions`` (implicit TLS, RFC 8314). The certificate
comes from ``smtpd_tls_chain_files = <key>, <fullchain>``, so a test can point it at
certkeeper's install paths with :meth:`Postfix.use_certificate`.

Two behaviours certkeeper has to live with, both visible here:

* Changing the files or ``main.cf`` is not enough: long-lived smtpd processes keep serving the
  old certificate (for up to ``max_idle`` = 100 s) until :meth:`Postfix.reload`.
* ``postfix reload`` succeeds with a key that does not match the certificate; afterwards every
  TLS handshake fails (smtpd logs "private key mismatch ... disabling TLS support").
  certkeeper must check the pair before it reloads.

For ``certkeeper doctor`` tests, a broken instance is built from the same parts: override or
drop ``main.cf`` settings, drop listeners or change their ``-o`` options, append raw
``master.cf`` lines, and call :meth:`Postfix.write_config` without starting.
"""

from __future__ import annotations

import errno
import grp
import os
import pty
import pwd
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from certkeeper.testbed.certs import TestCA
from certkeeper.testbed.server import (
    IPV6_LOOPBACK,
    LOOPBACK,
    Server,
    accepts_tcp,
    allocate_port,
    allocate_shared_port,
    make_traversable,
    run_checked,
    wait_until,
)

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
LISTENERS = ("smtp", "submission", "submissions")
HOSTNAME = "mail.example.test"

# Per-listener smtpd options (master.cf ``-o``), as a mail admin would configure them.
_LISTENER_OPTIONS: dict[str, dict[str, str]] = {
    "smtp": {},
    "submission": {"syslog_name": "postfix/submission", "smtpd_tls_security_level": "encrypt"},
    "submissions": {"syslog_name": "postfix/submissions", "smtpd_tls_wrappermode": "yes"},
}

# The services a running master needs besides the listeners; chroot off (column 5 "n"),
# because a private instance has no chroot jail prepared.
_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Server):
    """A Postfix instance with its own config, queue and data directories under :attr:`directory`."""

    name = "Postfix"

    def __init__(
        self,
        directory: Path,
        *,
        ca: TestCA | None = None,
        main_cf: Mapping[str, str | None] | None = None,
        listeners: Collection[str] = LISTENERS,
        listener_options: Mapping[str, Mapping[str, str]] | None = None,
        master_cf_extra: str = "",
        start_timeout: float = 15.0,
        address: str = LOOPBACK,
        fixed_ports: Mapping[str, int] | None = None,
        ipv6: bool = False,
    ) -> None:
        """Configure an instance; nothing runs until :meth:`start`.

        ``ca``: signs the seed certificate (one is made otherwise; see :attr:`ca_file`).
        ``main_cf``: settings replacing the defaults; ``None`` as a value removes the setting.
        ``listeners``: which of ``smtp``, ``submission``, ``submissions`` to run.
        ``listener_options``: extra or replacing ``-o`` options per listener.
        ``master_cf_extra``: raw lines appended to ``master.cf``.
        ``address``: the loopback address to listen on (see :func:`~certkeeper.testbed.server.allocate_address`).
        ``fixed_ports``: listeners on a fixed port instead of a free one (``{"smtp": 25}`` for an MX host).
        ``ipv6``: each listener on ``[::1]`` too, on the same port (``inet_protocols = all``), as an MX host with
        an A and an AAAA record; ``address="::1"`` listens on the IPv6 loopback alone.
        """
        super().__init__(directory)
        make_traversable(self.directory)
        unknown = set(listeners) - set(LISTENERS)
        if unknown:
            msg = f"unknown listeners {sorted(unknown)}; choose from {LISTENERS}"
            raise ValueError(msg)
        self.config_dir = self.directory / "config"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        self.listeners = tuple(name for name in LISTENERS if name in listeners)
        self.ports: dict[str, int] = {}
        self.address = address
        self.ipv6 = ipv6
        self._fixed_ports = dict(fixed_ports or {})
        self.start_timeout = start_timeout
        self._main_cf_overrides = dict(main_cf or {})
        self._listener_options = {
            name: {**_LISTENER_OPTIONS[name], **(listener_options or {}).get(name, {})} for name in self.listeners
        }
        self._master_cf_extra = master_cf_extra
        self.ca = ca or TestCA("certkeeper test CA for Postfix")
        self.ca_file = self.ca.write_cert(self.directory / "tls" / "ca.pem")
        seed = self.ca.issue([HOSTNAME, "localhost", LOOPBACK])
        self.key_file, self.fullchain_file = seed.write(self.directory / "tls", "seed")

    @property
    def log_path(self) -> Path:
        return self.directory / "postfix.log"

    def _allocate_ports(self) -> None:
        # A port free on the IPv6 loopback too when the listeners bind it.
        def allocate() -> int:
            return allocate_shared_port((IPV6_LOOPBACK,)) if IPV6_LOOPBACK in self._addresses else allocate_port()
        self.ports = {name: self._fixed_ports.get(name) or allocate() for name in self.listeners}

    @property
    def _addresses(self) -> list[str]:
        return [self.address, IPV6_LOOPBACK] if self.ipv6 and self.address != IPV6_LOOPBACK else [self.address]

    def _main_cf(self) -> dict[str, str]:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.directory),
            "syslog_name": "postfix-certkeeper-testbed",
            "myhostname": HOSTNAME,
            "mydomain": "example.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            # Postfix accepts only addresses configured on an interface here (lo has 127.0.0.1 alone); the
            # master.cf listeners bind the address themselves.
            "inet_interfaces": LOOPBACK if self.address == LOOPBACK else "all",
            "inet_protocols": "all" if self.ipv6 or ":" in self.address else "ipv4",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # Key first, then the certificate and its chain: the order Postfix reads them in.
            "smtpd_tls_chain_files": f"{self.key_file}, {self.fullchain_file}",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
        }
        for key, value in self._main_cf_overrides.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        return settings

    def _master_cf(self) -> str:
        lines = []
        for name in self.listeners:
            for address in self._addresses:
                where = f"[{address}]" if ":" in address else address
                lines.append(f"{where}:{self.ports[name]} inet n - n - - smtpd")
                lines += [f"  -o {key}={value}" for key, value in self._listener_options[name].items()]
        return "\n".join(lines) + "\n" + _SERVICES + self._master_cf_extra

    def write_config(self) -> Path:
        """Write ``main.cf`` and ``master.cf`` (ports allocated if needed); return :attr:`config_dir`."""
        if not self.ports:
            self._allocate_ports()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        main_cf = "".join(f"{key} = {value}\n" for key, value in self._main_cf().items())
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(self._master_cf())
        self.queue_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)
        return self.config_dir

    def postconf(self, **settings: str) -> None:
        """Change ``main.cf`` settings with ``postconf -e`` (takes effect on :meth:`reload`)."""
        assignments = [f"{key}={value}" for key, value in settings.items()]
        run_checked([POSTCONF, "-c", str(self.config_dir), "-e", *assignments], "postconf -e")

    def use_certificate(self, key_path: Path, fullchain_path: Path) -> None:
        """Point smtpd at another key and chain; running smtpd keep the old one until :meth:`reload`."""
        self.postconf(smtpd_tls_chain_files=f"{key_path}, {fullchain_path}")

    def reload(self) -> None:
        """``postfix reload``: master restarts its children, which read the certificate anew.

        Succeeds even when the key does not match the certificate; handshakes fail afterwards.
        """
        returncode, output = run_on_terminal([POSTFIX, "-c", str(self.config_dir), "reload"])
        if returncode != 0:
            msg = f"postfix reload failed (exit {returncode}): {output}"
            raise RuntimeError(msg)

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _master_alive(self) -> bool:
        pid = self._master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _launch(self) -> None:
        self.write_config()
        returncode, output = run_on_terminal([POSTFIX, "-c", str(self.config_dir), "start"])
        with self.log_path.open("a") as log:
            log.write(output)
        if returncode != 0:
            msg = f"postfix start exited {returncode}"
            raise self.fail(msg)
        ready = wait_until(
            lambda: all(accepts_tcp(port, address) for port in self.ports.values() for address in self._addresses),
            timeout=self.start_timeout,
            alive=self._master_alive,
        )
        if not ready:
            msg = f"smtpd not listening on {LOOPBACK} ports {self.ports}"
            raise self.fail(msg)

    def _terminate(self) -> None:
        pid = self._master_pid()
        if pid is None:
            return
        subprocess.run([POSTFIX, "-c", str(self.config_dir), "stop"], capture_output=True, check=False)
        # postfix stop only signals master; wait until it is gone and the ports are free.
        if not wait_until(lambda: not self._master_alive(), timeout=10, alive=lambda: True):
            os.kill(pid, 9)


def maildir_delivery(mailboxes: Mapping[str, Path], owner: str = "nobody") -> tuple[dict[str, str], str]:
    """``main_cf`` and ``master_cf_extra`` for :class:`Postfix` that deliver mail for each address to a Maildir.

    Postfix's own virtual(8) agent writes the Maildir as ``owner`` (Dovecot's test user maps to nobody), so a
    :class:`~certkeeper.testbed.dovecot.Dovecot` serves what this Postfix accepted: pass ``{address:
    dovecot.maildir}``.  Addresses outside these domains are still relayed or refused as before.
    """
    account = pwd.getpwnam(owner)
    domains = sorted({address.rpartition("@")[2] for address in mailboxes})
    # A trailing "/" makes virtual(8) write Maildir format; the base "/" lets the map hold absolute paths.
    entries = ", ".join(f"{address}={str(path).lstrip('/')}/" for address, path in sorted(mailboxes.items()))
    main_cf = {
        "virtual_mailbox_domains": ", ".join(domains),
        "virtual_mailbox_base": "/",
        "virtual_mailbox_maps": f"inline:{{ {entries} }}",
        "virtual_uid_maps": f"static:{account.pw_uid}",
        "virtual_gid_maps": f"static:{account.pw_gid}",
        "virtual_transport": "virtual",
    }
    return main_cf, "virtual   unix  -       n       n       -       -       virtual\n"


def run_on_terminal(command: Sequence[str]) -> tuple[int, str]:
    """Run a Postfix command with a terminal as its stderr; return exit code and output.

    Postfix commands print their errors (``fatal: bad main.cf``) only when stderr is a
    terminal, and otherwise send them to syslog, which a test machine may not have.
    """
    controller, terminal = pty.openpty()
    with subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal) as process:
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError as error:  # EIO: every holder of the terminal side has closed it
                if error.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(controller)
        returncode = process.wait()
    return returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
