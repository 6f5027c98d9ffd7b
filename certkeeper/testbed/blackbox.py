"""Prometheus' blackbox_exporter (Debian's ``prometheus-blackbox-exporter``), to probe what certkeeper probes.

Modules for the mail protocols certkeeper speaks: ``tls`` (implicit TLS: smtps, imaps, pop3s) and
``smtp_starttls`` / ``imap_starttls`` (blackbox's query_response dialogue, then STARTTLS).  Each module trusts
the one CA file given and verifies ``server_name``, as ``certkeeper check --ca-file --servername`` does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from certkeeper.testbed.server import LOOPBACK, Server, allocate_port, spawn, terminate, wait_until

BINARY = "prometheus-blackbox-exporter"

# query_response steps: JSON is YAML, so the config needs no YAML writer.
_SMTP_STARTTLS = [
    {"expect": "^220 "}, {"send": "EHLO prober\r"}, {"expect": "^250-STARTTLS"}, {"expect": "^250 "},
    {"send": "STARTTLS\r"}, {"expect": "^220"}, {"starttls": True},
]
_IMAP_STARTTLS = [
    {"expect": "OK.*STARTTLS"}, {"send": ". STARTTLS\r"}, {"expect": "OK"}, {"starttls": True},
]


class Blackbox(Server):
    name = "blackbox_exporter"

    def __init__(self, directory: Path, *, ca_file: Path, server_name: str) -> None:
        super().__init__(directory)
        self.ca_file = ca_file
        self.server_name = server_name
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "blackbox.log"

    def _allocate_ports(self) -> None:
        self.port = allocate_port()

    def _modules(self) -> dict[str, object]:
        tls = {"ca_file": str(self.ca_file), "server_name": self.server_name}
        return {"modules": {
            "tls": {"prober": "tcp", "timeout": "5s", "tcp": {"tls": True, "tls_config": tls}},
            "smtp_starttls": {"prober": "tcp", "timeout": "5s",
                              "tcp": {"query_response": _SMTP_STARTTLS, "tls_config": tls}},
            "imap_starttls": {"prober": "tcp", "timeout": "5s",
                              "tcp": {"query_response": _IMAP_STARTTLS, "tls_config": tls}},
        }}

    def _launch(self) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            msg = f"{BINARY} is not installed (python3 -m certkeeper.testbed.install)"
            raise self.fail(msg)
        config = self.directory / "blackbox.yml"
        config.write_text(json.dumps(self._modules(), indent=2))
        self._process = spawn([binary, f"--config.file={config}", f"--web.listen-address={LOOPBACK}:{self.port}"],
                              self.log_path)
        process = self._process
        if not wait_until(self._answers, timeout=15, alive=lambda: process.poll() is None):
            msg = "did not answer on /metrics"
            raise self.fail(msg)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/metrics", timeout=2):
                return True
        except OSError:
            return False

    def _terminate(self) -> None:
        terminate(self._process)
        self._process = None

    def probe(self, module: str, target: str) -> str:
        """The exposition text of one probe (``target`` is host:port)."""
        query = urllib.parse.urlencode({"module": module, "target": target})
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/probe?{query}", timeout=15) as response:
            return str(response.read().decode())
