"""Issue 23, row 2: one ``certkeeper check smtps://...`` as a process (what Nagios runs) against ``openssl
s_client`` once, on the same loopback endpoint.

Run: ``python tests/bench/bench_check_process.py [--rounds 10]``.

Both verify the served chain against the same throwaway CA and the name ``mail.test``; s_client with ``-brief``
and stdin closed (one handshake, then it quits).  certkeeper is timed as a user runs it: installed, not editable,
in a fresh venv made once per run in the temporary folder (``python -m venv``, ``pip install --no-deps`` of this
tree from the local wheels, the dev venv's site-packages reachable through a ``.pth`` for the dependencies the
full engine needs); the dev venv's editable ``certkeeper`` (its ``.pth`` files run at every start) is timed too.
Also timed, for what the remainder is made of: the fresh venv's interpreter alone (``python -c pass``, the floor
of any Python command), ``python-ssl``: the same interpreter running a bare script of the stdlib ``ssl`` handshake
with the same verification (the floor of any check written in Python, :data:`PYTHON_SSL`; certkeeper's ratio to
it is reported as well), and it importing pyOpenSSL (what the full engine loads).  Each runs once to warm up,
then all alternately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.rounds import interleave, report  # noqa: E402
from tests.probe_servers import Pki, ServerLoop, _hold  # noqa: E402

# Byte code is used, as after any install (this machine sets PYTHONDONTWRITEBYTECODE).
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# The Python floor: interpreter, ``import ssl`` and one handshake verifying the chain and the name as s_client
# does, the peer certificate read and a line printed.  Arguments: CA file, port, server name.
PYTHON_SSL = """\
import socket, ssl, sys

ca_file, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca_file)
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \\
        context.wrap_socket(sock, server_hostname=name) as connection:
    certificate = connection.getpeercert()
print("OK", certificate["notAfter"])
"""


def certkeeper_command() -> list[str]:
    script = Path(sys.executable).with_name("certkeeper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "certkeeper"]


def installed_venv(folder: Path) -> Path:
    """A fresh venv in ``folder`` with this tree installed as a user installs it (not editable); the dev venv's
    site-packages appended to its path for the dependencies (cryptography, pyOpenSSL) the full engine needs."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, env=ENVIRONMENT, timeout=300)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], check=True,
                   env=ENVIRONMENT, timeout=600, capture_output=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(purelib, "zz-dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return folder


def timed(command: list[str], source: str | None = None) -> float:
    """Seconds of one run; ``source``: a folder holding another ``certkeeper`` package to run instead.  Run in
    ``/`` (``python -m`` puts the working folder first on the path: this tree's package would shadow SRC)."""
    environment = {**ENVIRONMENT, "PYTHONPATH": source} if source else ENVIRONMENT
    started = time.perf_counter()
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                          env=environment, timeout=60, cwd="/")
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        msg = f"{command[0]} exited {done.returncode}: {done.stdout}{done.stderr}"
        raise SystemExit(msg)
    return elapsed


def side(command: list[str], source: str | None = None) -> Callable[[int], float]:
    return lambda _: timed(command, source)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--base", metavar="SRC", help="also time the certkeeper package in SRC (e.g. `git archive "
                        "main certkeeper | tar -x -C SRC`), as the side 'before'")
    parser.add_argument("--no-dev", action="store_true", help="leave out the dev venv's editable certkeeper")
    args = parser.parse_args()
    openssl = shutil.which("openssl")
    if openssl is None:
        print("no openssl on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-check-") as scratch:
        pki = Pki.create(Path(scratch))
        loop = ServerLoop()
        try:
            port = loop.serve(_hold, pki.context(pki.leaf("mail.test")))
            s_client = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "mail.test",
                        "-verify_hostname", "mail.test", "-CAfile", str(pki.ca_file), "-verify_return_error",
                        "-brief"]
            arguments = ["check", f"smtps://127.0.0.1:{port}", "--servername", "mail.test", "--ca-file",
                         str(pki.ca_file)]
            venv = installed_venv(Path(scratch, "venv"))
            check = [str(venv / "bin" / "certkeeper"), *arguments]
            python = [str(venv / "bin" / "python"), "-c", "pass"]
            floor_script = Path(scratch, "python_ssl.py")
            floor_script.write_text(PYTHON_SSL, encoding="utf-8")
            python_ssl = [str(venv / "bin" / "python"), str(floor_script), str(pki.ca_file), str(port), "mail.test"]
            pyopenssl = [str(venv / "bin" / "python"), "-c", "import OpenSSL.SSL"]
            commands = {"s_client": s_client, "certkeeper": check, "python-ssl": python_ssl, "python": python,
                        "+pyOpenSSL": pyopenssl}
            if not args.no_dev:
                commands["dev-editable"] = [*certkeeper_command(), *arguments]
            for command in commands.values():
                timed(command)  # warm-up: byte code, page cache
            sides = {name: side(command) for name, command in commands.items()}
            if args.base:
                # The fresh venv's console script, as the side "certkeeper": SRC comes first on the path.
                before = check
                timed(before, args.base)
                sides["before"] = side(before, args.base)
            times = interleave(args.rounds, sides)
        finally:
            loop.close()
    title = "one check as a process, smtps on 127.0.0.1 (start-up included)"
    report(title, times, baseline="s_client", goal=5)
    python_sides = {name: seconds for name, seconds in times.items()
                    if name in ("python-ssl", "certkeeper", "before", "dev-editable")}
    report(f"{title}, against the Python floor", python_sides, baseline="python-ssl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
