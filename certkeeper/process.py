"""Running other programs: never through a shell, always with a deadline, and never holding more output than asked.

The only importer of :mod:`subprocess`.  Reload hooks (:mod:`certkeeper.renewal.hooks`), dns-01 hooks
(:mod:`certkeeper.issuers.challenges`) and the mail daemons' configuration tools (:mod:`certkeeper.mailserver.config`)
all run here, so one piece of code holds these rules:

- the program starts in a session of its own, so that on a timeout the whole process group is killed
  (a stuck ``systemctl`` child goes with its hook);
- output is read as it comes, into a bounded buffer (``limit`` bytes, the head or the tail): ``exec yes`` costs
  a few kilobytes, not gigabytes;
- the program is judged by its own exit status.  Once it has exited, the pipes are drained for at most
  ``_DRAIN_SECONDS``: a background child that keeps stdout open (``setsid sleep 40 &``) does not hold the run;
- what a hook printed goes to logs, ``status --json``, alert mails and the store only through :func:`redact`:
  a hook that runs ``cat $CERTKEEPER_PRIVKEY`` must not spread the key.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Literal

from certkeeper.values import frozen

_DRAIN_SECONDS = 0.5
_CHUNK = 65536

# PEM armour (RFC 7468); legacy encrypted keys carry "Proc-Type:"/"DEK-Info:" headers inside the block.
_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_PEM_END = re.compile(r"-----END ([A-Z0-9 ]+)-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=]*|[A-Za-z-]+: .*")
# A long run of base64/base64url (mixed case and digits, padding only at the end) or of hex, alone on a line:
# a key's body without its armour.  Paths and NAME=value lines do not qualify.
_KEY_LIKE = re.compile(r"(?=[^/].*[0-9])(?=.*[a-z])(?=.*[A-Z])[A-Za-z0-9+/_-]{40,}={0,2}|[0-9a-fA-F]{64,}")
# name = value / name: value where the name says secret (TSIG "secret", JWK "d", passwords, HMAC keys).
_SECRET_VALUE = re.compile(
    r"""(?i)(\b(?:secret|password|passphrase|passwd|private[_ -]?key|hmac[_ -]?key|token)"?\s*[:=]?\s*"""
    r"""|"d"\s*:\s*)("[^"\n]{8,}"|'[^'\n]{8,}'|[A-Za-z0-9+/_=.-]{16,})""")


@frozen
class Finished:
    """How a program ended.  ``returncode`` is None when it was killed at the deadline (``timed_out``)."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False


class _Buffer:
    """At most ``limit`` bytes of a stream: the first ones (``head``) or the last ones (``tail``)."""

    def __init__(self, limit: int, keep: Literal["head", "tail"]) -> None:
        self.limit = limit
        self.keep = keep
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        if self.keep == "head":
            room = self.limit - len(self.data)
            self.data += chunk[:max(room, 0)]
            self.truncated |= len(chunk) > room
            return
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]
            self.truncated = True


def redact(text: str) -> str:
    """``text`` with PEM blocks, key-looking lines and secret-looking values replaced by ``[redacted ...]``.

    A block cut by the bounded buffer is redacted too: one without its END line ends at the first line that is
    not PEM body; base64 lines right before an END line without its BEGIN belong to the block (full-width ones,
    the short last one, and a short first one at the very start of the text, where the buffer cut it).
    """
    out: list[str] = []
    inside: str | None = None  # the label of the block being skipped
    complete = False  # its body had its short last line: only END may follow
    body: list[tuple[int, str]] = []  # base64-looking lines that may be the tail of a block cut at its start
    for number, line in enumerate(text.split("\n")):
        stripped = line.strip()
        if inside is not None:
            if _PEM_END.search(stripped):
                out.append(f"[redacted {inside} PEM block]")
                inside = None
                continue
            if _PEM_BODY.fullmatch(stripped) and not complete:
                complete = 0 < len(stripped) < 64 and ":" not in stripped
                continue
            out.append(f"[redacted {inside} PEM block]")
            inside = None
        begin = _PEM_BEGIN.search(stripped)
        end = _PEM_END.search(stripped)
        if begin:
            out += [_redact_line(b) for _, b in body]
            body = []
            inside, complete = begin.group(1), False
            if _PEM_END.search(stripped[begin.end():]):  # a whole block on one line
                out.append(f"[redacted {inside} PEM block]")
                inside = None
        elif end:
            keep = len(body)
            while keep and (keep == len(body) or body[keep - 1][0] == 0 or len(body[keep - 1][1].strip()) >= 16):
                keep -= 1
            out += [_redact_line(b) for _, b in body[:keep]]
            body = []
            out.append(f"[redacted {end.group(1)} PEM block]")
        elif stripped and _PEM_BODY.fullmatch(stripped) and ":" not in stripped:
            body.append((number, line))
        else:
            out += [_redact_line(b) for _, b in body]
            body = []
            out.append(_redact_line(line))
    if inside is not None:
        out.append(f"[redacted {inside} PEM block]")
    out += [_redact_line(b) for _, b in body]
    return "\n".join(out)


def _redact_line(line: str) -> str:
    if _KEY_LIKE.fullmatch(line.strip()):
        return "[redacted key-like line]"
    return _SECRET_VALUE.sub(r"\1[redacted]", line)


def run_program(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: str = "/",
                limit: int = 64 * 1024, keep: Literal["head", "tail"] = "tail",
                merge_stderr: bool = False) -> Finished:
    """Run ``argv`` (no shell, stdin from /dev/null) until it exits or ``timeout`` seconds pass.

    Raises :class:`OSError` when the program cannot be started; everything else is in the :class:`Finished`.
    With ``merge_stderr`` both streams go to ``stdout`` in the order written.
    """
    process = subprocess.Popen(
        list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, start_new_session=True,
    )
    buffers: dict[IO[bytes], _Buffer] = {}
    assert process.stdout is not None
    buffers[process.stdout] = _Buffer(limit, keep)
    if process.stderr is not None:
        buffers[process.stderr] = _Buffer(limit, keep)
    timed_out = _read_until_done(process, buffers, deadline=time.monotonic() + timeout)
    for stream in buffers:
        stream.close()
    out = buffers[process.stdout]
    err = buffers.get(process.stderr) if process.stderr is not None else None
    return Finished(None if timed_out else process.returncode, bytes(out.data), bytes(err.data) if err else b"",
                    timed_out=timed_out, truncated=out.truncated or bool(err and err.truncated))


def _read_until_done(process: subprocess.Popen[bytes], buffers: Mapping[IO[bytes], _Buffer], *,
                     deadline: float) -> bool:
    """Read the pipes until the program has exited and they are drained (or drained enough); True on timeout."""
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, data=stream)
        drain_until: float | None = None
        while selector.get_map():
            now = time.monotonic()
            if process.poll() is not None and drain_until is None:
                drain_until = now + _DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                break
            if drain_until is None and now >= deadline:
                _kill_group(process)
                return True
            wait = (drain_until if drain_until is not None else min(deadline, now + 0.1)) - now
            for key, _ in selector.select(timeout=max(wait, 0.0)):
                readable: IO[bytes] = key.data
                chunk = os.read(readable.fileno(), _CHUNK)
                if chunk:
                    buffers[readable].add(chunk)
                else:
                    selector.unregister(readable)
    try:  # the pipes are closed, the program may still run
        process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return True
    return False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
