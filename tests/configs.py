"""The minimal configurations tests start from: a state folder, an internal CA issuer named ``internal`` (or an
ACME issuer named ``ca``) and one certificate ``mail``.  One copy, so a new required key changes one place."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from certkeeper.config import AcmeIssuerConfig, load_config


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


def acme_issuer_config(tmp_path: Path, directory: str, extra: str = "") -> AcmeIssuerConfig:
    """The ``[issuers.ca]`` ACME issuer of directory ``directory`` as parsed, ``extra`` lines added to its table."""
    path = tmp_path / "certkeeper.toml"
    path.write_text(f'[certkeeper]\nstate_dir = "{tmp_path}"\n\n[issuers.ca]\ntype = "acme"\n'
                    f'directory = "{directory}"\n{extra}\n\n'
                    '[certificates.mail]\nissuer = "ca"\ndomains = ["mail.example.test"]\n')
    issuer = load_config(path).issuers["ca"]
    assert isinstance(issuer, AcmeIssuerConfig)
    return issuer
