"""The plain line of ``check`` and ``renew`` has two readers: argparse, and :mod:`certkeeper.cli.quick` for what
monitoring systems and cron write (issue 23: argparse, gettext and the parser are 5 ms of one check).  These tests
hold them to one meaning: wherever the quick reader answers, argparse gives the same namespace; where it does not
(help, prefixes, bad values, usage errors, other commands), argparse reads the line and words the error.
"""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys

import pytest

from certkeeper.cli import check, quick, renew
from certkeeper.cli.parser import build_parser, command_word

# Words before the command: the common options, and what only argparse reads there.
TOP = ("-c", "/etc/certkeeper/certkeeper.toml", "--config=/etc/c.toml", "-v", "-vv", "--verbose", "--version",
       "-h", "--conf", "-cx", "--config", "")
# Words after it: its arguments, every option in its whole spelling, values good and bad, and what only argparse
# reads (prefixes, help, "--", "=" on a short option, a value that looks like an option).
AFTER = {
    "check": (
        "smtps://mail.test:465", "mail.test:25", "imap://[::1]:143", "pop3s://a", "sieve://b:4190",
        "--warning", "--warning=5", "--warning=-3", "30", "1e3", "nan", "x", "-3", "--critical", "7",
        "--critical=40", "--timeout", "0.5", "--timeout=0", "--concurrency", "3", "2.5", "--concurrency=8",
        "--starttls", "smtp", "none", "bogus", "--starttls=imap", "--key-type", "rsa", "all", "dsa",
        "--servername", "mail.test", "--servername=", "--no-sni", "--json", "-v", "-vv", "-vvv", "--verbose",
        "-c", "/etc/certkeeper/certkeeper.toml", "90", "--config", "--config=/etc/c.toml", "-w", "--file",
        "list.txt", "--mta-sts", "example.org", "--resolver", "127.0.0.1:53", "--ca-file", "ca.pem", "--ca-file=",
        "--dane", "--caa", "--no-scale", "--require-no-tls1", "--require-no-tls1_1",
        "--", "-", "", "--serv", "--json=1", "-cfoo", "-c=x", "-h", "--help", "--jso", "-x", "--no-such", "a b",
        "-vx"),
    "renew": (
        "mail", "mx", "relay", "--force", "--dry-run", "-q", "--quiet", "--json", "-v", "-vv", "--verbose", "-c",
        "/etc/certkeeper/certkeeper.toml", "--config=/etc/c.toml", "--", "-", "", "--for", "-qq", "--quiet=1",
        "-h", "--help", "-x", "--force=yes", "a b"),
}

# What monitoring systems and cron run: each is read by the quick reader.
PLAIN_LINES = (
    ["check", "smtps://mail.test"],
    ["check", "smtp://mail.test:25", "--servername", "mx.test", "--ca-file", "/etc/ssl/ca.pem"],
    ["check", "imaps://mail.test:993", "--warning", "30", "--critical", "14", "--timeout", "5"],
    ["check", "mail.test:587", "--starttls", "smtp", "--no-sni", "--json"],
    ["check", "--warning=30", "--critical=7", "pop3s://mail.test", "-v"],
    ["check", "--json", "smtps://a.test", "imaps://b.test"],
    ["check", "sieve://mail.test:4190", "--require-no-tls1", "--require-no-tls1_1", "--key-type", "all",
     "--no-scale"],
    ["-c", "/etc/certkeeper/certkeeper.toml", "renew", "--quiet"],
    ["renew", "-q"],
    ["-v", "renew", "mail", "mx", "--json", "--dry-run"],
    ["renew", "--force", "mail", "-c", "/etc/certkeeper/other.toml"],
)


def argparse_reading(line: list[str]) -> dict[str, str] | None:
    """argparse's namespace for ``line``, or None where it refuses it (as ``main`` does)."""
    parser = build_parser(command_word(line))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            namespace, extras = parser.parse_known_args(line)
        except SystemExit:
            return None
    return None if extras else comparable(vars(namespace))


def quick_reading(line: list[str]) -> dict[str, str] | None:
    namespace = quick.read_line(line)
    return None if namespace is None else comparable(vars(namespace))


def comparable(values: dict[str, object]) -> dict[str, str]:
    """Each value by its repr: --warning nan is nan to both readers, and nan equals nothing."""
    return {name: repr(value) for name, value in values.items()}


@pytest.mark.parametrize("command", sorted(quick.COMMANDS))
def test_a_line_naming_nothing_means_the_same_to_both_readers(command: str) -> None:
    assert quick_reading([command]) == argparse_reading([command])


@pytest.mark.parametrize("line", PLAIN_LINES, ids=" ".join)
def test_what_monitoring_and_cron_run_is_read_without_argparse_and_means_what_argparse_reads(
        line: list[str]) -> None:
    reading = quick_reading(line)
    assert reading is not None
    assert reading == argparse_reading(line)


@pytest.mark.parametrize("command", sorted(quick.COMMANDS))
def test_wherever_the_quick_reader_answers_argparse_gives_the_same_namespace(command: str) -> None:
    draw = random.Random(23)
    answered = 0
    for _ in range(2000):
        line = [*(draw.choice(TOP) for _ in range(draw.randrange(3))), command,
                *(draw.choice(AFTER[command]) for _ in range(draw.randrange(7)))]
        reading = quick_reading(line)
        if reading is not None:
            answered += 1
            assert reading == argparse_reading(line), line
    assert answered > 200  # the lines it reads are not a rare few (about a sixth of these random ones)


def test_other_commands_and_lines_without_one_are_left_to_argparse() -> None:
    assert quick.read_line(["status"]) is None
    assert quick.read_line(["-c", "x.toml", "status", "--json"]) is None
    assert quick.read_line(["-c", "x.toml"]) is None
    assert quick.read_line([]) is None


@pytest.mark.parametrize("module", [check, renew], ids=["check", "renew"])
def test_every_option_of_the_command_is_one_its_quick_reader_knows(module: object) -> None:
    """An option added to argparse alone would leave the quick reader's namespace without it."""
    name = module.__name__.rpartition(".")[2]  # type: ignore[attr-defined]
    subparsers = next(a for a in build_parser(name)._actions if a.dest == "command")
    parser = subparsers.choices[name]  # type: ignore[index]
    spellings = {s for action in parser._actions for s in action.option_strings}
    line: quick.QuickLine = module.QUICK  # type: ignore[attr-defined]
    assert spellings - {"-h", "--help", "-v", "--verbose", "-c", "--config"} == set(line.valued) | set(line.flags)


def test_a_line_only_argparse_reads_is_still_read_and_refused_as_before() -> None:
    """Through the real command: a prefix of an option works as argparse has it, and usage errors are UNKNOWN."""
    def run(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "certkeeper", *words], capture_output=True, text=True,
                              timeout=60, check=False)

    refused = run("check", "--servername", "a.test", "--no-sni", "smtps://a.test")
    assert refused.returncode == 3
    assert "not allowed with argument --servername" in refused.stderr
    two_runs = run("check", "smtps://a.test", "--json", "smtps://b.test")
    assert two_runs.returncode == 3
    assert "unrecognized arguments: smtps://b.test" in two_runs.stderr
    bad_value = run("check", "--warning", "soon", "smtps://a.test")
    assert bad_value.returncode == 3
    assert "invalid float value: 'soon'" in bad_value.stderr
    prefix = run("check", "--crit", "40", "smtps://a.test")  # 40 > --warning's 21: refused, so --crit was read
    assert prefix.returncode == 3
    assert "--critical (40) must be between 0 and --warning (21)" in prefix.stderr
    renew_two_runs = run("renew", "mail", "--quiet", "mx")
    assert renew_two_runs.returncode == 64
    assert "unrecognized arguments: mx" in renew_two_runs.stderr
