"""Benchmarks of the internal CA: ``renew`` end to end against its floor (issue 23 row 6), and ``issue()`` alone.

Run on demand (pytest does not collect it)::

    python -m tests.bench.bench_internal_ca [--count 1000] [--rounds 3]     # row 6: renew vs floor
    python -m tests.bench.bench_internal_ca --issue-only [--count 1000]     # issue() vs a bare cryptography loop

Row 6: ``certkeeper renew`` as a process on a config of ``--count`` certificates from one internal CA, nothing
installed yet (every one is issued and installed: key, leaf, version folder, ``current`` flip, state), against
:mod:`tests.bench.internal_ca_floor`, a process doing the bare issue and writing the same files with the same
fsyncs on as many threads as renew's ``concurrency`` (4).  Both run in interleaved rounds
(:mod:`tests.bench.rounds`); goal: at most 1.1x the floor.

``--issue-only``: both sides generate an ECDSA P-256 key per certificate and sign the same TLS server profile
with the same ECDSA P-256 intermediate key.  The issuer additionally checks the names against the name
constraints, looks for a rollover (one stat), and appends the serial to the CA's index.  The goal is at least
0.8x the bare rate.  The two loops alternate certificate by certificate, so that CPU frequency changes and noisy
neighbours (a shared CI machine) hit both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's certkeeper and tests/

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from certkeeper import pki  # noqa: E402
from certkeeper.config import CaIssuerConfig  # noqa: E402
from certkeeper.issuers.base import IssueRequest  # noqa: E402
from certkeeper.issuers.internal_ca import InternalCaIssuer, init_ca  # noqa: E402
from certkeeper.model import KeyType  # noqa: E402
from tests.bench.bench_renew_none_due import ENVIRONMENT, certkeeper_command  # noqa: E402
from tests.bench.rounds import interleave, report  # noqa: E402

DOMAINS = ("mail.example.test", "smtp.example.test")


def bare_issue(intermediate: x509.Certificate, intermediate_key: pki.PrivateKey, lifetime: timedelta) -> None:
    """What any script would do with cryptography alone: a key, a certificate, a signature."""
    key = pki.generate_key(KeyType.ECDSA_P256)
    now = pki.now_utc()
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAINS[0])]))
        .issuer_name(intermediate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in DOMAINS]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(intermediate_key, hashes.SHA256())
    )


def issue_loop(count: int = 1000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        passphrase = Path(tmp) / "ca.pass"
        passphrase.write_text("benchmark passphrase\n")
        passphrase.chmod(0o600)
        config = CaIssuerConfig(name="bench", ca_dir=Path(tmp) / "ca", passphrase_file=passphrase,
                                permitted_domains=("example.test",))
        init_ca(config, now=pki.now_utc())
        intermediate = pki.load_certificates((config.ca_dir / "intermediate.pem").read_bytes())[0]
        intermediate_key = pki.load_key((config.ca_dir / "intermediate.key").read_bytes(), b"benchmark passphrase")
        issuer = InternalCaIssuer(config)
        # Warm-up, and the one-time decryption of the intermediate key, outside the timed part.
        issuer.issue(IssueRequest("bench", DOMAINS, pki.generate_key(KeyType.ECDSA_P256), KeyType.ECDSA_P256))
        bare_issue(intermediate, intermediate_key, config.lifetime)

        bare_times: list[float] = []
        issuer_times: list[float] = []
        for i in range(count):
            start = time.perf_counter()
            bare_issue(intermediate, intermediate_key, config.lifetime)
            middle = time.perf_counter()
            key = pki.generate_key(KeyType.ECDSA_P256)
            issuer.issue(IssueRequest(f"bench-{i % 50}", DOMAINS, key, KeyType.ECDSA_P256))
            issuer_times.append(time.perf_counter() - middle)
            bare_times.append(middle - start)
        bare_seconds, issuer_seconds = sum(bare_times), sum(issuer_times)
        done = count
        index_lines = (config.ca_dir / "index.jsonl").read_text().count("\n")
    bare_rate, issuer_rate = done / bare_seconds, done / issuer_seconds
    ratio = issuer_rate / bare_rate
    print(f"certificates per loop: {done} (ECDSA P-256 leaf key generated each time, P-256 intermediate signs)")
    print(f"bare cryptography loop:  {bare_rate:8.0f} certificates/s  ({bare_seconds / done * 1e6:6.0f} us each)")
    print(f"InternalCaIssuer.issue:  {issuer_rate:8.0f} certificates/s  ({issuer_seconds / done * 1e6:6.0f} us each)")
    print(f"ratio issuer/bare:       {ratio:8.2f}x  (goal >= 0.80x)  index lines written: {index_lines}")
    # Medians shrug off the odd descheduling that a total can pick up on a busy machine.
    bare_median, issuer_median = statistics.median(bare_times), statistics.median(issuer_times)
    print(f"medians: bare {bare_median * 1e6:.0f} us, issuer {issuer_median * 1e6:.0f} us, "
          f"ratio {bare_median / issuer_median:.2f}x")
    return ratio


CONCURRENCY = 4  # renew's default


def write_config(root: Path, state: Path, count: int) -> Path:
    tables = "".join(f'\n[certificates.c{i:04d}]\nissuer = "internal"\ndomains = ["c{i:04d}.example.test"]\n'
                     for i in range(count))
    config = root / f"certkeeper-{state.name}.toml"
    config.write_text(f'[certkeeper]\nstate_dir = "{state}"\nconcurrency = {CONCURRENCY}\n\n'
                      f'[issuers.internal]\ntype = "ca"\nca_dir = "{root / "ca"}"\n'
                      f'passphrase_file = "{root / "ca.pass"}"\nlifetime = "90d"\n'
                      f'permitted_domains = ["example.test"]\n{tables}')
    return config


def renew_rounds(count: int, rounds: int, before: str | None = None) -> dict[str, tuple[float, float]]:
    """Row 6: ``certkeeper renew`` of ``count`` new certificates against the floor, in interleaved rounds."""
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        root = Path(tmp)
        (root / "ca.pass").write_text("benchmark passphrase\n")
        (root / "ca.pass").chmod(0o600)
        subprocess.run([*certkeeper_command(), "-c", str(write_config(root, root / "init", 1)), "ca", "init"],
                       check=True, capture_output=True, env=ENVIRONMENT)

        def renew(command: list[str], state: str) -> float:
            config = write_config(root, root / state, count)
            started = time.perf_counter()
            # From the scratch folder: from the checkout, ``-m certkeeper`` finds the checkout's package whichever
            # Python runs it, and ``--before`` would time this tree twice.
            subprocess.run([*command, "-c", str(config), "renew", "--quiet"], check=True, capture_output=True,
                           env=ENVIRONMENT, cwd=root)
            return time.perf_counter() - started

        def floor(round_number: int) -> float:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tests.bench.internal_ca_floor", str(root / "ca"),
                            str(root / "ca.pass"), str(root / f"floor-{round_number}"), str(count), str(CONCURRENCY)],
                           check=True, env=ENVIRONMENT, cwd=Path(__file__).resolve().parents[2])
            return time.perf_counter() - started

        sides = {"floor": floor, "certkeeper": lambda r: renew(certkeeper_command(), f"state-{r}")}
        if before is not None:  # another certkeeper (e.g. main's) in the same rounds
            sides["before"] = lambda r: renew([before, "-m", "certkeeper"], f"before-{r}")
        results = interleave(rounds, sides)
    return report(f"renew of {count} internal-CA certificates, end to end", results, goal=1.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--issue-only", action="store_true", help="issue() against a bare cryptography loop")
    parser.add_argument("--before", help="a Python whose `-m certkeeper` is measured too, as side 'before'")
    args = parser.parse_args()
    if args.issue_only:
        return 0 if issue_loop(args.count) >= 0.8 else 1
    low, _ = renew_rounds(args.count, args.rounds, args.before)["certkeeper"]
    return 0 if low <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
