"""A misbehaving peer on loopback: one connection, served on a thread, for what no real server does on request
(a greeting dripped a byte at a time, endless or oversized answers).  The alert relay's and the report
mailbox's tests subclass it and say what their server answers in :meth:`HostilePeer.speak`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any


class HostilePeer:
    """Listens on 127.0.0.1 (``port``), with TLS when given ``context``; a subclass sets what :meth:`speak` reads
    before calling this ``__init__``, which starts the thread.  :meth:`stop` ends a drip under way."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self.listener.accept()
            connection = self.context.wrap_socket(raw, server_side=True) if self.context else raw
            with connection, connection.makefile("rb") as lines:
                self.speak(connection, lines)

    def greet(self, connection: socket.socket, greeting: bytes, drip: float) -> bool:
        """``greeting`` at once, or a byte every ``drip`` seconds; False when stopped meanwhile."""
        if not drip:
            connection.sendall(greeting)
            return True
        for byte in greeting:
            if self.closed.wait(drip):
                return False
            connection.sendall(bytes([byte]))
        return True

    def speak(self, connection: socket.socket, lines: Any) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.closed.set()
        self.listener.close()
