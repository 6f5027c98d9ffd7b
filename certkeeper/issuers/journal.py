"""Challenge answers published in DNS and not yet known to be removed (issue 21.5).

A dns-01 TXT value is written here, fsynced, before it is published, and forgotten once the order is over and
its removal was attempted.  A process killed in between leaves the file behind: the next run holding the
certificate's lock removes those exact values (:meth:`certkeeper.issuers.acme.AcmeIssuer.remove_leftovers`), so
stray ``_acme-challenge`` values never pile up (nine of them no longer fit a UDP answer, and CAs then saw
"Correct value not found").

Only the standard library here: a pass with nothing due asks :func:`has_pending` without importing ACME or DNS.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from certkeeper.errors import InputError
from certkeeper.store.atomic import write_atomic

# identifier, token, key authorization: enough to rebuild the TXT name and value (RFC 8555 section 8.4).
Entry = tuple[str, str, str]


def journal_path(state_dir: Path, certificate: str) -> Path:
    return state_dir / "challenges" / f"{certificate}.json"


def has_pending(state_dir: Path, certificate: str) -> bool:
    return journal_path(state_dir, certificate).exists()


def certificates_pending(state_dir: Path) -> frozenset[str]:
    """Every certificate with values pending, from one folder listing (a pass asks once, not per certificate)."""
    try:
        return frozenset(entry.name.removesuffix(".json") for entry in (state_dir / "challenges").iterdir()
                         if entry.name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def pending(state_dir: Path, certificate: str) -> list[Entry]:
    path = journal_path(state_dir, certificate)
    try:
        rows = json.loads(path.read_text())
        return [(str(a), str(b), str(c)) for a, b, c in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise InputError(str(path), f"unreadable list of published dns-01 values ({exc})") from None


def record(state_dir: Path, certificate: str, entries: Sequence[Entry]) -> None:
    """Add ``entries`` durably (fsynced) before they are published."""
    path = journal_path(state_dir, certificate)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    known = pending(state_dir, certificate)
    merged = known + [e for e in entries if e not in known]
    # 0600: the key authorizations name the account's key thumbprint; nobody else needs them.
    write_atomic(path, json.dumps(merged).encode(), mode=0o600)


def forget(state_dir: Path, certificate: str, entries: Sequence[Entry]) -> None:
    """Drop ``entries``; the file goes when nothing is left."""
    path = journal_path(state_dir, certificate)
    left = [e for e in pending(state_dir, certificate) if e not in entries]
    if left:
        write_atomic(path, json.dumps(left).encode(), mode=0o600)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
