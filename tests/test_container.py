"""The Containerfile: an unprivileged user, the hooks shipped, the build context kept small.

No container engine runs on this test machine (the CI host has no Docker or Podman daemon), so the image is not
built here; what can be checked without one is: the instructions, and that the context rules keep the checkout's
local state out while keeping everything the package build needs.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Containerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_runs_as_an_unprivileged_user_after_installing_the_package() -> None:
    steps = instructions()
    kinds = [kind for kind, _ in steps]
    user = [value for kind, value in steps if kind == "USER"]
    assert user == ["certkeeper"]
    assert kinds.index("USER") > max(i for i, (kind, value) in enumerate(steps) if "pip install" in value)
    assert any("--uid 10001" in value for kind, value in steps if kind == "RUN")


def test_the_build_context_leaves_local_state_out_and_keeps_what_the_package_needs() -> None:
    patterns = [p for p in (ROOT / ".containerignore").read_text().splitlines() if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/", maxsplit=1)[0], p) for p in patterns)

    for local in (".venv", ".git", ".coverage.host.1", "certkeeper/__pycache__/x.pyc"):
        assert ignored(local), local
    for needed in ("pyproject.toml", "README.md", "certkeeper/cli/__init__.py", "hooks/postfix"):
        assert not ignored(needed), needed
