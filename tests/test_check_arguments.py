"""``certkeeper check``'s line has two readers: argparse, and :func:`certkeeper.cli.check.parse_quickly` for the
plain form a monitoring system writes (issue 23: argparse, gettext and the parser are 5 ms of one check).  These
tests hold them to one meaning: wherever the quick reader answers, argparse gives the same namespace; where it
does not (help, prefixes, bad values, usage errors), argparse reads the line and words the error.
"""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys

import pytest

from certkeeper.cli.check import parse_quickly
from certkeeper.cli.parser import build_parser

# Words a line is made of: targets, every option of check in its whole spelling, values good and bad, and what
# only argparse reads (prefixes, help, "--", "=" on a short option, a value that looks like an option).
VOCABULARY = (
    "smtps://mail.test:465", "mail.test:25", "imap://[::1]:143", "pop3s://a", "sieve://b:4190",
    "--warning", "--warning=5", "--warning=-3", "30", "1e3", "nan", "x", "-3", "--critical", "7", "--critical=40",
    "--timeout", "0.5", "--timeout=0", "--concurrency", "3", "2.5", "--concurrency=8",
    "--starttls", "smtp", "none", "bogus", "--starttls=imap", "--key-type", "rsa", "all", "dsa",
    "--servername", "mail.test", "--servername=", "--no-sni", "--json", "-v", "-vv", "-vvv", "--verbose",
    "-c", "/etc/certkeeper/certkeeper.toml", "90", "--config", "--config=/etc/c.toml", "-w", "--file", "list.txt",
    "--mta-sts", "example.org", "--resolver", "127.0.0.1:53", "--ca-file", "ca.pem", "--ca-file=", "--dane",
    "--caa", "--no-scale", "--require-no-tls1", "--require-no-tls1_1",
    "--", "-", "", "--serv", "--json=1", "-cfoo", "-c=x", "-h", "--help", "--jso", "-x", "--no-such", "a b", "-vx",
)

# What monitoring systems run: each is read by the quick reader.
MONITORING_LINES = (
    ["smtps://mail.test"],
    ["smtp://mail.test:25", "--servername", "mx.test", "--ca-file", "/etc/ssl/ca.pem"],
    ["imaps://mail.test:993", "--warning", "30", "--critical", "14", "--timeout", "5"],
    ["mail.test:587", "--starttls", "smtp", "--no-sni", "--json"],
    ["--warning=30", "--critical=7", "pop3s://mail.test", "-v"],
    ["sieve://mail.test:4190", "--require-no-tls1", "--require-no-tls1_1", "--key-type", "all", "--no-scale"],
)


def argparse_reading(words: list[str]) -> dict[str, str] | None:
    """argparse's namespace for ``check WORDS``, or None where it refuses the line (as ``main`` does)."""
    parser = build_parser("check")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            namespace, extras = parser.parse_known_args(["check", *words])
        except SystemExit:
            return None
    return None if extras else comparable(vars(namespace))


def quick_reading(words: list[str]) -> dict[str, str] | None:
    namespace = parse_quickly(words)
    return None if namespace is None else comparable(vars(namespace))


def comparable(values: dict[str, object]) -> dict[str, str]:
    """Each value by its repr: --warning nan is nan to both readers, and nan equals nothing."""
    return {name: repr(value) for name, value in values.items()}


def test_a_line_naming_nothing_means_the_same_to_both_readers() -> None:
    assert quick_reading([]) == argparse_reading([])


@pytest.mark.parametrize("words", MONITORING_LINES, ids=" ".join)
def test_what_monitoring_systems_run_is_read_without_argparse_and_means_what_argparse_reads(
        words: list[str]) -> None:
    quick = quick_reading(words)
    assert quick is not None
    assert quick == argparse_reading(words)


def test_wherever_the_quick_reader_answers_argparse_gives_the_same_namespace() -> None:
    draw = random.Random(23)
    answered = 0
    for _ in range(3000):
        words = [draw.choice(VOCABULARY) for _ in range(draw.randrange(8))]
        quick = quick_reading(words)
        if quick is not None:
            answered += 1
            assert quick == argparse_reading(words), words
    assert answered > 300  # the lines it reads are not a rare few (about a third of these random ones)


def test_every_option_of_check_is_one_the_quick_reader_knows() -> None:
    """An option added to argparse alone would leave the quick reader's namespace without it."""
    from certkeeper.cli import check

    subparsers = next(a for a in build_parser("check")._actions if a.dest == "command")
    parser = subparsers.choices["check"]  # type: ignore[index]
    spellings = {s for action in parser._actions for s in action.option_strings}
    assert spellings - {"-h", "--help", "-v", "--verbose"} == set(check._VALUED) | set(check._FLAGS)


def test_a_line_only_argparse_reads_is_still_read_and_refused_as_before() -> None:
    """Through the real command: a prefix of an option works as argparse has it, and usage errors are UNKNOWN."""
    def check(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "certkeeper", "check", *words], capture_output=True,
                              text=True, timeout=60, check=False)

    refused = check("--servername", "a.test", "--no-sni", "smtps://a.test")
    assert refused.returncode == 3
    assert "not allowed with argument --servername" in refused.stderr
    two_runs = check("smtps://a.test", "--json", "smtps://b.test")
    assert two_runs.returncode == 3
    assert "unrecognized arguments: smtps://b.test" in two_runs.stderr
    bad_value = check("--warning", "soon", "smtps://a.test")
    assert bad_value.returncode == 3
    assert "invalid float value: 'soon'" in bad_value.stderr
    prefix = check("--crit", "40", "smtps://a.test")  # 40 > --warning's 21: refused, so --crit was read
    assert prefix.returncode == 3
    assert "--critical (40) must be between 0 and --warning (21)" in prefix.stderr
