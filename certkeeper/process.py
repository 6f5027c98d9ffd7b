"""Running other programs: never through a shell, always with a deadline, and never holding more output than asked.

The only importer of :mod:`subprocess`.  Reload hooks (:mod:`certkeeper.renewal.hooks`), dns-01 hooks
(:mod:`certkeeper.issuers.challenges`) and the mail daemons' configuration tools (:mod:`certkeeper.mailserver.config`)
all run here, so one piece of code holds these rules:

- the program starts in a session of its own, so that on a timeout the whole process group is killed
  (a stuck ``systemctl`` child goes with its hook);
- output is read as it comes, into a bounded buffer (``limit`` bytes, the head or the tail): ``exec yes`` costs
  a few kilobytes, not gigabytes;
- the program is judged by its own exit status.  Once it has exited, the pipes are drained for at most
  ``_DRAIN_SECONDS``: a background child that keeps stdout open (``setsid sleep 40 &``) does not hold the run.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

_DRAIN_SECONDS = 0.5
_CHUNK = 65536


@dataclass(frozen=True)
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
