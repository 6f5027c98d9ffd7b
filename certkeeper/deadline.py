"""One time limit for a whole exchange over a blocking socket, where the socket's own timeout bounds each read.

A peer sending a byte just within the socket's timeout, each time, would hold a client without end.  The bounded
clients (the alert relay, the report mailbox, the MTA-STS policy fetch, the probe of one endpoint) wait instead, at
each step, only for what is left of one :class:`Deadline`.  Imports nothing but :mod:`time`: the probe of one
endpoint is on the start-up path of ``certkeeper check`` (tests/test_startup_imports.py).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Final


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
