"""One time limit for a whole exchange over a blocking socket, where the socket's own timeout bounds each read.

A peer sending a byte just within the socket's timeout, each time, would hold a client without end.  The bounded
clients (the alert relay, the report mailbox, the MTA-STS policy fetch, the probe of one endpoint) wait instead, at
each step, only for what is left of one :class:`Deadline`; an HTTP answer read by http.client does so through a
:class:`DeadlineReader`.  Imports nothing but :mod:`time` and :mod:`io` (which the interpreter has loaded before
any program starts): the probe of one endpoint is on the start-up path of ``certkeeper check``
(tests/test_startup_imports.py).
"""

from __future__ import annotations

import io
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from http.client import HTTPResponse
    from typing import Any, Final


class Deadline:
    """``timeout`` seconds from now, on :func:`time.monotonic`.

    Once it has passed, :meth:`remaining` and :meth:`arm` raise ``late()``: each caller names its own error
    (a plain :class:`TimeoutError` unless told otherwise).
    """

    __slots__ = ("_end",)

    def __init__(self, timeout: float) -> None:
        self._end: Final = time.monotonic() + timeout

    def remaining(self, late: Callable[[], BaseException] = TimeoutError) -> float:
        """The seconds left, always more than 0."""
        left = self._end - time.monotonic()
        if left <= 0:  # never settimeout(0): that would make the socket non-blocking
            raise late()
        return left

    def arm(self, sock: socket.socket, late: Callable[[], BaseException] = TimeoutError) -> None:
        """Let the next operation on ``sock`` wait for what is left."""
        sock.settimeout(self.remaining(late))


class DeadlineReader(io.RawIOBase):
    """A socket's own reader (the raw stream of ``sock.makefile``), every read waiting only for what is left of
    ``deadline``: http.client reads an answer's status line, headers and body through it, where the socket's
    timeout would bound each read alone.  Once the deadline has passed, ``late(received)`` is raised,
    ``received`` being the bytes read until then."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: Deadline,
                 late: Callable[[int], BaseException]) -> None:
        super().__init__()
        self._raw = raw  # not the socket itself: the reader keeps it open when a connection closes it first
        self._sock = sock
        self._deadline = deadline
        self._late = late
        self._received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        try:
            self._deadline.arm(self._sock)
            count: int | None = self._raw.readinto(buffer)
        except TimeoutError:
            raise self._late(self._received) from None
        self._received += count or 0
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def read_within(response: HTTPResponse, sock: socket.socket, deadline: Deadline,
                late: Callable[[int], BaseException]) -> None:
    """``response`` (made, not yet begun) reads from ``sock`` through a :class:`DeadlineReader`."""
    response.fp = io.BufferedReader(DeadlineReader(response.fp.detach(), sock, deadline, late))
