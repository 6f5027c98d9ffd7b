"""The manual page and the bash completion, generated from the commands: they render, and they complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from certkeeper.cli.docs_cmd import commands
from certkeeper.cli.parser import build_parser


def generated(kind: str) -> str:
    return subprocess.run([sys.executable, "-m", "certkeeper", "docs", kind], capture_output=True, text=True,
                          check=True).stdout


def test_the_manual_page_renders_without_warnings_and_describes_every_command(tmp_path: Path) -> None:
    page = tmp_path / "certkeeper.1"
    page.write_text(generated("man"))
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(page)], capture_output=True, text=True,
                              check=True)
    assert rendered.stderr == ""
    names = [name for name, _ in commands(build_parser(None))]
    assert {"renew", "check", "config check", "config schema", "import", "ca init"} <= set(names)
    for name in names:  # roff escapes hyphens (acme persist-record)
        assert ".SS " + name.replace("-", "\\-") in page.read_text(), name
    text = re.sub(".\b", "", rendered.stdout)  # grotty's overstrikes (bold, underline) off
    assert "EXIT STATUS" in text and "78 configuration error" in text


@pytest.mark.parametrize(("line", "expected"), [
    ("certkeeper re", {"renew", "revoke"}),
    ("certkeeper -c /etc/ck.toml renew --f", {"--force"}),
    ("certkeeper config s", {"schema"}),
    ("certkeeper setup p", {"postfix"}),
    ("certkeeper check --star", {"--starttls"}),
])
def test_bash_completes_commands_subcommands_options_and_values(tmp_path: Path, line: str, expected: set[str]) -> None:
    script = tmp_path / "certkeeper.bash"
    script.write_text(generated("bash-completion"))
    words = line.split(" ")
    probe = (f"source {script}; COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; _certkeeper; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) == expected
