"""Wall time of ``certkeeper renew`` with 100 certificates and none due, against ``certbot renew`` with 100
lineages and none due, in the same run.  Goal: at most 0.3x certbot's time (a cron job run every hour on
thousands of machines should cost nothing).

Run: ``python tests/bench/bench_renew_none_due.py [--certbot /tmp/certbot-venv/bin/certbot] [--count 100]
[--runs 7]``.  certbot lives in its own virtualenv (``python3 -m venv /tmp/certbot-venv &&
/tmp/certbot-venv/bin/pip install certbot``).

certkeeper: a configuration with ``--count`` certificates from the internal CA (fast to set up), each issued
once, so none is due; no endpoints (a pass with endpoints probes them, which is work certbot never does).
certbot: ``--count`` lineages written the way certbot lays them out (``renewal/NAME.conf``,
``archive/NAME/*1.pem``, ``live/NAME/*.pem`` symlinks) with 90-day certificates, so ``certbot renew`` finds
each not yet due and contacts no server.  Each command runs once to warm up (byte code compiled, page cache
filled), then both run as separate processes, alternately, ``--runs`` times; the median counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certkeeper import pki

DEFAULT_CERTBOT = Path("/tmp/certbot-venv/bin/certbot")


REPO_VENV = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "certkeeper"
# Byte code is written and used, as after any `pip install` (this machine sets PYTHONDONTWRITEBYTECODE, which
# would make certkeeper compile its sources on every run while certbot's virtualenv has them compiled).
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def certkeeper_command() -> list[str]:
    """The repository's virtualenv (like certbot's own), else the Python running this benchmark."""
    if REPO_VENV.exists():
        return [str(REPO_VENV)]
    script = Path(sys.executable).with_name("certkeeper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "certkeeper"]


def write_certkeeper(directory: Path, count: int, *, lifetime: str = "90d") -> Path:
    """A config of ``count`` internal-CA certificates in ``directory``, its CA made and every certificate issued."""
    passphrase = directory / "ca.pass"
    passphrase.write_text("benchmark\n")
    passphrase.chmod(0o600)
    tables = "".join(f'\n[certificates.c{i:03d}]\nissuer = "internal"\ndomains = ["c{i:03d}.example.test"]\n'
                     for i in range(count))
    config = directory / "certkeeper.toml"
    config.write_text(f'[certkeeper]\nstate_dir = "{directory / "state"}"\nconcurrency = 8\n\n'
                      f'[issuers.internal]\ntype = "ca"\nca_dir = "{directory / "ca"}"\n'
                      f'passphrase_file = "{passphrase}"\nlifetime = "{lifetime}"\n{tables}')
    subprocess.run([*certkeeper_command(), "-c", str(config), "ca", "init"], check=True, capture_output=True)
    subprocess.run([*certkeeper_command(), "-c", str(config), "renew", "--quiet"], check=True, capture_output=True)
    return config


def write_certbot_lineages(directory: Path, count: int, version: str) -> Path:
    """``count`` lineages as certbot writes them, each with a 90-day ECDSA certificate from a throwaway CA."""
    config_dir = directory / "config"
    now = pki.now_utc()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    chain_pem = ca.public_bytes(serialization.Encoding.PEM)
    for i in range(count):
        name = f"c{i:03d}.example.test"
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        archive, live = config_dir / "archive" / name, config_dir / "live" / name
        archive.mkdir(parents=True)
        live.mkdir(parents=True)
        files = {"cert": cert_pem, "chain": chain_pem, "fullchain": cert_pem + chain_pem, "privkey": key_pem}
        for kind, data in files.items():
            (archive / f"{kind}1.pem").write_bytes(data)
            (live / f"{kind}.pem").symlink_to(Path("..") / ".." / "archive" / name / f"{kind}1.pem")
        renewal = config_dir / "renewal"
        renewal.mkdir(exist_ok=True)
        (renewal / f"{name}.conf").write_text(
            f"version = {version}\narchive_dir = {archive}\n"
            + "".join(f"{kind} = {live / f'{kind}.pem'}\n" for kind in files)
            + "\n[renewalparams]\naccount = 0123456789abcdef0123456789abcdef\nauthenticator = standalone\n"
            "server = https://127.0.0.1:14000/dir\nkey_type = ecdsa\n")
    return config_dir


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=ENVIRONMENT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        msg = f"{command[0]} exited {result.returncode}: {result.stdout}{result.stderr}"
        raise SystemExit(msg)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--certbot", type=Path, default=DEFAULT_CERTBOT)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not args.certbot.exists():
        print(f"no certbot at {args.certbot}: python3 -m venv /tmp/certbot-venv && "
              "/tmp/certbot-venv/bin/pip install certbot", file=sys.stderr)
        return 2
    version = subprocess.run([str(args.certbot), "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    with tempfile.TemporaryDirectory(prefix="bench-renew-") as scratch:
        base = Path(scratch)
        (base / "ck").mkdir()
        config = write_certkeeper(base / "ck", args.count)
        config_dir = write_certbot_lineages(base / "cb", args.count, version)
        certkeeper = [*certkeeper_command(), "-c", str(config), "renew", "--quiet"]
        certbot = [str(args.certbot), "renew", "--no-random-sleep-on-renew", "--config-dir", str(config_dir),
                   "--work-dir", str(base / "cb" / "work"), "--logs-dir", str(base / "cb" / "logs")]
        timed(certkeeper)  # warm-up: byte code written, caches filled, for both alike
        probe = subprocess.run(certbot, capture_output=True, text=True, check=True, env=ENVIRONMENT)
        assert "No renewals were attempted" in probe.stdout + probe.stderr, probe.stdout + probe.stderr
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(timed(certkeeper))
            theirs.append(timed(certbot))
    mine, base_time = statistics.median(ours), statistics.median(theirs)
    print(f"{args.count} certificates, none due, median of {args.runs} runs (min .. max):")
    print(f"  certkeeper renew  {mine * 1000:7.0f} ms   ({min(ours) * 1000:.0f} .. {max(ours) * 1000:.0f})")
    print(f"  certbot renew     {base_time * 1000:7.0f} ms   ({min(theirs) * 1000:.0f} .. {max(theirs) * 1000:.0f})"
          f"   certbot {version}")
    ratio = mine / base_time
    print(f"  ratio {ratio:.2f}x certbot (goal <= 0.30x): {'met' if ratio <= 0.3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
