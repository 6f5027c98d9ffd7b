"""The plaintext dialogues that come before TLS: SMTP, IMAP, POP3 and ManageSieve STARTTLS.

Three layers.  The reply parsers (``parse_*``, :class:`SmtpReplyReader`) are pure functions of text lines, so
Hypothesis can throw any junk at them; they raise :class:`DialogueError` and nothing else.  The dialogues
(:func:`dialogue`) are generators, one state machine per protocol: each step yields a line to send, or
:data:`READ` to be handed the server's next line, and returns when the TLS handshake may start.  Two drivers
run them: the engine's :class:`~certkeeper.probe.wire.Wire`, which feeds each line as it arrives in an event-loop
callback, and :func:`negotiate_starttls_sync` over a blocking
:class:`~certkeeper.probe.conversation.SyncConversation` (``certkeeper check`` of one endpoint,
:mod:`certkeeper.probe.lean`); both bound line length and total bytes with
:class:`~certkeeper.probe.conversation.Progress`, and the target's deadline.  This module never touches a socket,
so everything here is testable with a list of lines.

The servers are not ours: every reply may be malformed, multi-line in any order and case, or missing.
"""

from __future__ import annotations

import re
from collections.abc import Generator

from certkeeper.probe.conversation import DialogueError
from certkeeper.probe.report import printable
from certkeeper.probe.result import CONNECTION_FAILED, PROTOCOL_ERROR, STARTTLS_NOT_SUPPORTED
from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from certkeeper.probe.conversation import SyncConversation
    from certkeeper.targets import Dialect

# A reply longer than this many lines is not a mail server talking (Postfix's EHLO has about 10).
MAX_REPLY_LINES = 200

# What a dialogue step yields to be handed the server's next line; any other value is a line to send.
READ = None
Dialogue = Generator[str | None, str, None]


def _shorten(text: str, limit: int = 160) -> str:
    text = printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


# --- SMTP (RFC 5321 §4.2 reply syntax, RFC 3207 STARTTLS) -----------------------------------------------

_SMTP_LINE = re.compile(r"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.DOTALL)


@frozen
class SmtpReply:
    """One whole SMTP reply."""

    code: int
    lines: tuple[str, ...]  # the text after "ddd-" / "ddd " of each line

    @property
    def text(self) -> str:
        return " / ".join(line for line in self.lines if line)


class SmtpReplyReader:
    """Assembles one SMTP reply from its lines: ``250-a`` ... ``250 z`` (RFC 5321 §4.2.1)."""

    def __init__(self) -> None:
        self._code: str | None = None
        self._lines: list[str] = []

    def feed(self, line: str) -> SmtpReply | None:
        """The complete reply once its last line arrives, else None; DialogueError on a malformed line."""
        match = _SMTP_LINE.match(line)
        if not match:
            msg = "not an SMTP reply"
            raise _malformed(msg, line, "smtp")
        code, separator, text = match.groups()
        if self._code is not None and code != self._code:
            raise DialogueError(
                PROTOCOL_ERROR, f"SMTP reply code changed from {self._code} to {code} inside a multi-line reply"
            )
        self._code = code
        self._lines.append(text)
        if len(self._lines) > MAX_REPLY_LINES:
            raise DialogueError(PROTOCOL_ERROR, f"SMTP reply longer than {MAX_REPLY_LINES} lines")
        if separator == "-":
            return None
        return SmtpReply(int(code), tuple(self._lines))


def parse_smtp_reply(lines: list[str]) -> SmtpReply:
    """A whole reply from its lines (for tests and callers holding all lines already)."""
    reader = SmtpReplyReader()
    for line in lines:
        reply = reader.feed(line)
        if reply is not None:
            return reply
    raise DialogueError(PROTOCOL_ERROR, "SMTP reply ended without a final line")


def smtp_extensions(ehlo: SmtpReply) -> frozenset[str]:
    """The EHLO keywords, upper-cased; the first line is the server's name, not an extension (RFC 5321 §4.1.1.1)."""
    return frozenset(line.split()[0].upper() for line in ehlo.lines[1:] if line.split())


def _read_smtp_reply() -> Generator[str | None, str, SmtpReply]:
    reader = SmtpReplyReader()
    while True:
        reply = reader.feed((yield READ))
        if reply is not None:
            return reply


def smtp_starttls(ehlo_name: str) -> Dialogue:
    """Greeting, EHLO, STARTTLS; returns when the server said 220 to STARTTLS (RFC 3207 §4)."""
    greeting = yield from _read_smtp_reply()
    if greeting.code != 220:
        raise DialogueError(PROTOCOL_ERROR,
                            f"the server refused the session: {greeting.code} {_shorten(greeting.text)}")
    yield f"EHLO {ehlo_name}"
    ehlo = yield from _read_smtp_reply()
    if ehlo.code != 250:
        raise DialogueError(PROTOCOL_ERROR, f"EHLO was answered {ehlo.code} {_shorten(ehlo.text)}")
    if "STARTTLS" not in smtp_extensions(ehlo):
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not offer STARTTLS in its EHLO reply")
    yield "STARTTLS"
    reply = yield from _read_smtp_reply()
    if reply.code != 220:
        # RFC 3207 §4: 454 "TLS not available due to temporary reason", 501 syntax error.
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STARTTLS was refused: {reply.code} {_shorten(reply.text)}")


# --- IMAP (RFC 9051 / RFC 3501, STARTTLS per RFC 2595 §3.1) ----------------------------------------------

_IMAP_CAPABILITY_CODE = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


@frozen
class ImapResponse:
    """One IMAP response line."""

    tag: str  # "*" for untagged, "+" for continuation
    kind: str  # upper-cased first word after the tag: OK, NO, BAD, BYE, PREAUTH, CAPABILITY, ...
    text: str  # the rest of the line


def parse_imap_line(line: str) -> ImapResponse:
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        msg = "not an IMAP response"
        raise _malformed(msg, line, "imap")
    return ImapResponse(parts[0], parts[1].upper(), parts[2] if len(parts) > 2 else "")


def imap_capabilities(response: ImapResponse) -> frozenset[str] | None:
    """Capabilities from an untagged CAPABILITY response or a ``[CAPABILITY ...]`` response code, else None."""
    if response.tag == "*" and response.kind == "CAPABILITY":
        return frozenset(word.upper() for word in response.text.split())
    match = _IMAP_CAPABILITY_CODE.search(response.text)
    if match and response.kind in {"OK", "PREAUTH"}:
        return frozenset(word.upper() for word in match.group(1).split())
    return None


def _imap_command(tag: str, command: str) -> Generator[str | None, str, tuple[ImapResponse, frozenset[str]]]:
    """Send a tagged command; the tagged completion and any capabilities seen on the way."""
    yield f"{tag} {command}"
    capabilities: frozenset[str] = frozenset()
    for _ in range(MAX_REPLY_LINES):
        response = parse_imap_line((yield READ))
        found = imap_capabilities(response)
        if found is not None:
            capabilities |= found
        if response.tag == tag:
            return response, capabilities
        if response.tag == "*" and response.kind == "BYE":
            raise DialogueError(CONNECTION_FAILED, f"the server said BYE: {_shorten(response.text)}")
    raise DialogueError(PROTOCOL_ERROR, f"no tagged reply to {command} within {MAX_REPLY_LINES} lines")


def imap_starttls() -> Dialogue:
    greeting = parse_imap_line((yield READ))
    if greeting.tag != "*" or greeting.kind not in {"OK", "PREAUTH"}:
        said = f"{greeting.tag} {greeting.kind} {greeting.text}"
        msg = "unexpected IMAP greeting"
        raise _malformed(msg, said, "imap", quoted=False)
    if greeting.kind == "PREAUTH":
        # RFC 2595 §3.1 / RFC 9051 §6.2.1: STARTTLS is only valid in the not-authenticated state.
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server pre-authenticated the session: no STARTTLS possible")
    capabilities = imap_capabilities(greeting)
    if capabilities is None:
        completion, capabilities = yield from _imap_command("c1", "CAPABILITY")
        if completion.kind != "OK":
            said = f"{completion.kind} {_shorten(completion.text)}"
            raise DialogueError(PROTOCOL_ERROR, f"CAPABILITY was answered {said}")
    if "STARTTLS" not in capabilities:
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STARTTLS in its CAPABILITY")
    completion, _ = yield from _imap_command("c2", "STARTTLS")
    if completion.kind != "OK":
        said = f"{completion.kind} {_shorten(completion.text)}"
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STARTTLS was refused: {said}")


# --- POP3 (RFC 1939, CAPA per RFC 2449, STLS per RFC 2595 §4) --------------------------------------------


def parse_pop3_status(line: str) -> tuple[bool, str]:
    """``+OK text`` -> (True, text), ``-ERR text`` -> (False, text); DialogueError otherwise."""
    head, _, text = line.partition(" ")
    if head.upper() == "+OK":
        return True, text
    if head.upper() == "-ERR":
        return False, text
    msg = "not a POP3 status line"
    raise _malformed(msg, line, "pop3")


def pop3_starttls() -> Dialogue:
    ok, text = parse_pop3_status((yield READ))
    if not ok:
        raise DialogueError(PROTOCOL_ERROR, f"the server refused the session: -ERR {_shorten(text)}")
    yield "CAPA"
    ok, _ = parse_pop3_status((yield READ))
    if ok:
        capabilities = set()
        for _ in range(MAX_REPLY_LINES):
            line = yield READ
            if line == ".":  # RFC 1939 §3: a multi-line response ends with a lone dot
                break
            if line.split():
                capabilities.add(line.split()[0].upper())
        else:
            raise DialogueError(PROTOCOL_ERROR, f"CAPA list longer than {MAX_REPLY_LINES} lines")
        if "STLS" not in capabilities:
            raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STLS in its CAPA list")
    # Without CAPA (servers older than RFC 2449) the only way to know is to try STLS.
    yield "STLS"
    ok, text = parse_pop3_status((yield READ))
    if not ok:
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STLS was refused: -ERR {_shorten(text)}")


# --- ManageSieve (RFC 5804 §1.7 capabilities, §2.2 STARTTLS) ----------------------------------------------

_SIEVE_RESPONSE = re.compile(r"^(OK|NO|BYE)\b(.*)$", re.IGNORECASE)
_SIEVE_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def parse_sieve_line(line: str) -> tuple[str, str]:
    """A response line -> ("OK"|"NO"|"BYE", rest), or a capability line -> ("CAPABILITY", its name)."""
    match = _SIEVE_RESPONSE.match(line)
    if match:
        return match.group(1).upper(), match.group(2).strip()
    quoted = _SIEVE_QUOTED.match(line)
    if quoted:
        return "CAPABILITY", quoted.group(1).upper()
    msg = "not a ManageSieve response"
    raise _malformed(msg, line, "sieve")


def _read_sieve_capabilities() -> Generator[str | None, str, tuple[str, str, frozenset[str]]]:
    capabilities = set()
    for _ in range(MAX_REPLY_LINES):
        kind, text = parse_sieve_line((yield READ))
        if kind == "CAPABILITY":
            capabilities.add(text)
        else:
            return kind, text, frozenset(capabilities)
    raise DialogueError(PROTOCOL_ERROR, f"ManageSieve capability list longer than {MAX_REPLY_LINES} lines")


def sieve_starttls() -> Dialogue:
    kind, text, capabilities = yield from _read_sieve_capabilities()
    if kind != "OK":
        raise DialogueError(PROTOCOL_ERROR, f"the server refused the session: {kind} {_shorten(text)}")
    if "STARTTLS" not in capabilities:
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STARTTLS in its capabilities")
    yield "STARTTLS"
    kind, text = parse_sieve_line((yield READ))
    if kind != "OK":
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STARTTLS was refused: {kind} {_shorten(text)}")


def dialogue(dialect: Dialect, *, ehlo_name: str) -> Dialogue:
    """The dialect's dialogue up to the point where the TLS handshake starts, as a state machine."""
    if dialect == "smtp":
        return smtp_starttls(ehlo_name)
    if dialect == "imap":
        return imap_starttls()
    if dialect == "pop3":
        return pop3_starttls()
    return sieve_starttls()


def negotiate_starttls_sync(dialect: Dialect, conversation: SyncConversation, *, ehlo_name: str) -> None:
    """Run the dialect's dialogue over a blocking conversation."""
    steps = dialogue(dialect, ehlo_name=ehlo_name)
    try:
        step = next(steps)
        while True:
            if step is READ:
                step = steps.send(conversation.read_line())
            else:
                conversation.send_line(step)
                step = steps.send("")
    except StopIteration:
        return


def _malformed(what: str, line: str, own: str, *, quoted: bool = True) -> DialogueError:
    """``what``, the line as the server sent it (shortened, control characters as "?") and a hint."""
    shown = repr(_shorten(line)) if quoted else _shorten(line)
    return DialogueError(PROTOCOL_ERROR, f"{what}: {shown}{_wrong_protocol_hint(line, own)}")


def _wrong_protocol_hint(line: str, own: str) -> str:
    """A hint when the server plainly speaks something else than ``own``: HTTP, TLS, or another mail protocol (a
    POP3 server's malformed "+OKAY" is not another protocol)."""
    if line.startswith("HTTP/"):
        return " (this is an HTTP server)"
    if line[:1] in {"\x15", "\x16"}:  # TLS record content types: alert, handshake (RFC 8446 §5.1)
        return " (this port speaks TLS right away: try implicit TLS, e.g. smtps:// or imaps://)"
    others = [prefix for protocol, prefixes in _GREETINGS.items() if protocol != own for prefix in prefixes]
    if line.startswith(tuple(others)):
        return " (another mail protocol answers on this port: check the scheme or --starttls)"
    return ""


_GREETINGS = {"imap": ("* OK",), "pop3": ("+OK",), "smtp": ("220 ", "220-"), "sieve": ('"IMPLEMENTATION"',)}
