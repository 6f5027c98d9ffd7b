"""A private PostgreSQL cluster on loopback, for fleet tests and the fleet benchmark.

Started without systemd from the Debian package's binaries (``/usr/lib/postgresql/15/bin``): ``initdb`` into a
temporary directory, ``pg_ctl start`` on a port asked from the kernel, listening on 127.0.0.1 only, its unix
socket inside the same directory.  PostgreSQL refuses to run as root, so when we are root the directory is
handed to the ``postgres`` user and every server command runs through ``runuser -u postgres --``.

Clients authenticate with a password (scram-sha-256) over TCP, like a real fleet node; administration (creating
databases) goes through the private unix socket with peer authentication, using ``psql``, so this module needs
nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from certkeeper.testbed.server import LOOPBACK, allocate_port

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
ROLE = "certkeeper"


class PostgresStartError(RuntimeError):
    """The cluster did not come up; the message carries the tail of its log."""




class PostgresCluster:
    """One throwaway cluster: ``with PostgresCluster() as pg: pg.url`` (a database owned by a password role)."""

    def __init__(self, base: Path | None = None, *, bin_dir: Path = BIN_DIR) -> None:
        self.bin_dir = bin_dir
        self.directory = Path(tempfile.mkdtemp(prefix="certkeeper-pg-", dir=base))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_path = self.directory / "postgres.log"
        self.password = secrets.token_urlsafe(18)
        # Beside the cluster, not in it: the cluster's folder belongs to postgres, and certkeeper refuses a
        # secret file in a folder another user can change.
        self.secrets_dir = Path(tempfile.mkdtemp(prefix="certkeeper-pg-secrets-", dir=base))
        self.password_file = self.secrets_dir / "db.pass"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._databases = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if not (self.bin_dir / "initdb").exists():
            msg = f"{self.bin_dir}/initdb not found: install the postgresql-15 package"
            raise PostgresStartError(msg)
        self.socket_dir.mkdir()
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.directory.chmod(0o755)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        for attempt in range(3):
            self.port = allocate_port()
            options = (
                f"-c listen_addresses={LOOPBACK} -c port={self.port} "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=off -c max_connections=300 "
                f"-c synchronous_commit=off -c full_page_writes=off"
            )
            started = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                "30",
                "start",
                check=False,
            )
            if started.returncode == 0:
                break
            if attempt == 2 or "in use" not in self._log_tail():
                msg = f"pg_ctl start failed: {started.stdout}{started.stderr}\n{self._log_tail()}"
                raise PostgresStartError(msg)
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
        self.url = self.create_database()
        return self

    def stop(self) -> None:
        if self.port:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.port = 0
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.secrets_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------------------------

    url: str = ""

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database owned by the password role; returns its URL (no password in it)."""
        if name is None:
            self._databases += 1
            name = f"certkeeper_{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE template0")
        return self.database_url(name)

    def database_url(self, name: str) -> str:
        return f"postgresql://{ROLE}@{LOOPBACK}:{self.port}/{name}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private socket; returns psql's unaligned output."""
        done = self._run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        )
        return done.stdout.strip()

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/", check=False)
        if check and done.returncode != 0:
            msg = f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{self._log_tail()}"
            raise PostgresStartError(msg)
        return done

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
