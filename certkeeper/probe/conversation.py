"""The channel the STARTTLS dialogues of :mod:`certkeeper.probe.dialects` run over, as both drivers have it: the
line limits, :class:`DialogueError`, the blocking conversation's interface and :class:`Progress` (the stage, the bytes
received before TLS, the transcript).

Apart from the dialogues because a probe needs it for every target, and the dialogues (their reply parsers,
patterns and reply types, about 3 ms to import) only for a STARTTLS one: ``certkeeper check`` of one implicit-TLS
endpoint (:mod:`certkeeper.probe.lean`) does not import them.
"""

from __future__ import annotations

from certkeeper.probe.result import CONNECTION_FAILED, PROTOCOL_ERROR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from typing import Protocol

MAX_LINE = 8192  # RFC 5321 §4.5.3.1.5 allows 512 per reply line; IMAP lines are longer, junk is longer still
MAX_DIALOGUE_BYTES = 64 * 1024
MAX_TRANSCRIPT_LINES = 200


class DialogueError(Exception):
    """The dialogue could not reach the TLS handshake.  ``code`` is the finding code to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


if TYPE_CHECKING:  # what the blocking driver takes, for the type checker: no Protocol class is built at run time
    class SyncConversation(Protocol):
        """A line-oriented channel to the server over a blocking socket; it enforces the limits and the deadline."""

        def read_line(self) -> str:
            """One line without its CRLF; DialogueError(connection-failed) when the server closes."""
            ...

        def send_line(self, line: str) -> None:
            ...


class Progress:
    """Where a target's probe is (so a timeout can say what the server failed to do), the bytes received before
    TLS, and the transcript when one is kept; shared by both drivers, so their limits and words agree."""

    def __init__(self, *, transcript: list[str] | None = None) -> None:
        self.stage = "connecting"
        self.received = 0  # bytes of the lines received before TLS
        self.partial = 0  # bytes received of a line not ended yet (a server that never ends its greeting did speak)
        self.transcript = transcript
        self.last_sent = ""

    def record(self, line: str) -> None:
        if self.transcript is not None and len(self.transcript) < MAX_TRANSCRIPT_LINES:
            self.transcript.append(line if len(line) <= 300 else line[:300] + "...")

    def waiting(self, dialect: str) -> None:
        self.stage = f"waiting for the {dialect} server's " + (
            f"reply to {self.last_sent}" if self.last_sent else "greeting")

    def closed(self, partial: bytes) -> DialogueError:
        """The server closed the connection after ``partial`` (bytes of a line never ended)."""
        said = f" after {partial[:80]!r}" if partial else ""
        return DialogueError(CONNECTION_FAILED, f"the server closed the connection while {self.stage}{said}")

    def too_long(self, dialect: str) -> DialogueError:
        return DialogueError(PROTOCOL_ERROR, f"the server sent a line longer than {MAX_LINE} bytes while "
                                             f"{self.stage}; this is not a {dialect} server")

    def received_line(self, data: bytes, dialect: str) -> str:
        """One line as read (with its LF), counted against :data:`MAX_DIALOGUE_BYTES` and recorded."""
        self.received += len(data)
        if self.received > MAX_DIALOGUE_BYTES:
            raise DialogueError(PROTOCOL_ERROR, f"the server sent more than {MAX_DIALOGUE_BYTES // 1024} KiB before "
                                                f"TLS; this is not a {dialect} server")
        line = data.rstrip(b"\r\n").decode("utf-8", "replace")
        self.record(f"S: {line}")
        return line

    def sending(self, line: str) -> bytes:
        self.last_sent = line[:60]
        self.record(f"C: {line}")
        return line.encode("ascii") + b"\r\n"
