"""nginx serving a webroot over HTTPS: the web server an MTA-STS policy host usually is.

A private instance (``nginx -p <dir> -c <dir>/nginx.conf``), never the system's /etc/nginx: one ``server`` with
TLS on :attr:`Nginx.address`:``port`` (a loopback address of its own, so the well-known port 443 is free), the
given certificate, and ``root`` at :attr:`Nginx.webroot`, where certkeeper writes
``.well-known/mta-sts.txt``.  nginx serves ``.txt`` as ``text/plain`` as RFC 8461 section 3.2 asks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from certkeeper.testbed.server import (
    Server,
    accepts_tcp,
    allocate_address,
    make_traversable,
    spawn,
    terminate,
    wait_until,
)

NGINX = "/usr/sbin/nginx"


class Nginx(Server):
    """``nginx -g 'daemon off;'`` in the foreground, one TLS ``server`` block over :attr:`webroot`."""

    name = "nginx"

    def __init__(self, directory: Path, *, cert_file: Path, key_file: Path, server_name: str,
                 webroot: Path | None = None, address: str | None = None, port: int = 443,
                 start_timeout: float = 15.0) -> None:
        super().__init__(directory)
        make_traversable(self.directory)
        self.cert_file = cert_file
        self.key_file = key_file
        self.server_name = server_name
        self.webroot = webroot or self.directory / "webroot"
        self.webroot.mkdir(parents=True, exist_ok=True)
        self.webroot.chmod(0o755)
        self.port = port
        self._fixed_address = address
        self.address = address or ""
        self.config_file = self.directory / "nginx.conf"
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "error.log"

    def _allocate_ports(self) -> None:
        self.address = self._fixed_address or allocate_address([self.port])

    def _write_config(self) -> None:
        temp = self.directory / "temp"
        temp.mkdir(exist_ok=True)
        self.config_file.write_text(
            f"pid {self.directory}/nginx.pid;\n"
            f"error_log {self.log_path} info;\n"
            "worker_processes 1;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"    access_log {self.directory}/access.log;\n"
            f"    client_body_temp_path {temp}/body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            "    types { text/plain txt; text/html html; }\n"
            "    default_type application/octet-stream;\n"
            "    server {\n"
            f"        listen {self.address}:{self.port} ssl;\n"
            f"        server_name {self.server_name};\n"
            f"        ssl_certificate {self.cert_file};\n"
            f"        ssl_certificate_key {self.key_file};\n"
            f"        root {self.webroot};\n"
            "    }\n"
            "}\n"
        )

    def _launch(self) -> None:
        self._write_config()
        # The master reads the key as root; workers (nobody) only read the webroot.
        self._process = spawn([NGINX, "-p", str(self.directory), "-c", str(self.config_file), "-e",
                               str(self.log_path), "-g", "daemon off;"], self.log_path)
        process = self._process
        if not wait_until(lambda: accepts_tcp(self.port, self.address), timeout=self.start_timeout,
                          alive=lambda: process.poll() is None):
            msg = f"not listening on {self.address}:{self.port}"
            raise self.fail(msg)

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None
