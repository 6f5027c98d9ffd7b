"""The minimal configuration CLI tests start from: a state folder, an internal CA issuer named ``internal`` and
one certificate ``mail``.  One copy, so a new required key changes one place."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path


def internal_ca_config(tmp_path: Path, *, domains: Sequence[str] = ("mail.example.org",), settings: str = "",
                       issuer: str = "", certificate: str = "", rest: str = "") -> Path:
    """Write ``certkeeper.toml`` under ``tmp_path``; each keyword adds lines to its table (``rest``: more tables)."""
    path = tmp_path / "certkeeper.toml"
    names = ", ".join(f'"{d}"' for d in domains)
    path.write_text(
        f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\n{textwrap.dedent(settings).strip()}\n\n'
        f'[issuers.internal]\ntype = "ca"\nca_dir = "{tmp_path / "ca"}"\n{textwrap.dedent(issuer).strip()}\n\n'
        f'[certificates.mail]\nissuer = "internal"\ndomains = [{names}]\n{textwrap.dedent(certificate).strip()}\n'
        + textwrap.dedent(rest))
    return path
