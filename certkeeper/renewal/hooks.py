"""Reload hooks: programs run after an install so the mail daemons read the new files.

The contract (``hooks/README.md``): no shell, a timeout, a clean environment describing the certificate, output
captured (the last 64 KiB) and logged, a non-zero exit or a timeout is a failure.  Programs run through
:func:`certkeeper.process.run_program`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from certkeeper.errors import HookFailed
from certkeeper.process import redact, run_program
from certkeeper.values import frozen

log = logging.getLogger("certkeeper.renewal.hooks")

# What a hook may rely on finding; nothing else of certkeeper's own environment leaks into it.
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_OUTPUT = 64 * 1024


@frozen
class HookContext:
    """The certificate a hook runs for; becomes the hook's environment."""

    name: str
    domains: tuple[str, ...]
    version: str
    cert_dir: Path
    names: tuple[str, ...] = ()
    extra_env: Mapping[str, str] | None = None

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": _SAFE_PATH,
            "LANG": "C.UTF-8",
            "CERTKEEPER_NAME": self.name,
            "CERTKEEPER_NAMES": " ".join(self.names or (self.name,)),
            "CERTKEEPER_DOMAINS": " ".join(self.domains),
            "CERTKEEPER_VERSION": self.version,
            "CERTKEEPER_CERT_DIR": str(self.cert_dir),
            "CERTKEEPER_FULLCHAIN": str(self.cert_dir / "fullchain.pem"),
            "CERTKEEPER_PRIVKEY": str(self.cert_dir / "privkey.pem"),
            "CERTKEEPER_COMBINED": str(self.cert_dir / "combined.pem"),
            # certbot's names, so existing deploy hooks work unchanged.
            "RENEWED_LINEAGE": str(self.cert_dir),
            "RENEWED_DOMAINS": " ".join(self.domains),
        }
        env.update(self.extra_env or {})
        return env


@frozen
class HookRun:
    hook: Path
    output: str


def run_hook(hook: Path, context: HookContext, *, timeout: float, args: Sequence[str] = ()) -> HookRun:
    """Run one hook; :class:`HookFailed` on a non-zero exit, a timeout, or a hook that cannot start."""
    log.info("running hook %s for %s (version %s)", hook, context.name, context.version)
    try:
        finished = run_program([str(hook), *args], env=context.environment(), timeout=timeout, limit=_MAX_OUTPUT,
                               merge_stderr=True)
    except OSError as exc:
        raise HookFailed(str(hook), exit_status=None, output=_start_failure(hook, exc)) from None
    output = redact(_text(finished.stdout))  # before it reaches the log, the store, status and alert mails
    if finished.timed_out:
        log.warning("hook %s timed out after %g s: %s", hook, timeout, output.strip()[-500:])
        raise HookFailed(str(hook), exit_status=None, output=output, timed_out=True, timeout=timeout)
    for line in output.splitlines()[-20:]:
        log.info("hook %s: %s", hook.name, line)
    if finished.returncode != 0:
        raise HookFailed(str(hook), exit_status=finished.returncode, output=output)
    return HookRun(hook, output)


def _start_failure(hook: Path, exc: OSError) -> str:
    """Why the hook did not start.  exec(2) says ENOENT for a missing #! interpreter too, naming the hook, which
    exists: name the interpreter instead (a CRLF script's is "/bin/sh\\r")."""
    if exc.errno != errno.ENOENT or not hook.is_file():
        return str(exc)
    try:
        with hook.open("rb") as handle:
            first = handle.readline(256)
    except OSError:
        return str(exc)
    if not first.startswith(b"#!"):
        return str(exc)
    interpreter = first[2:].rstrip(b"\n").strip(b" \t").split(b" ")[0]
    said = f"its interpreter {interpreter.decode(errors='replace')!r} (the #! line) does not exist"
    if interpreter.endswith(b"\r"):
        said += f"; the file has Windows line endings (CRLF): convert it, e.g. with dos2unix {hook}"
    return said


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    raw = data if isinstance(data, bytes) else data.encode()
    return raw[-_MAX_OUTPUT:].decode("utf-8", errors="replace")
