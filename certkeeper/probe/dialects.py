"""The plaintext dialogues that come before TLS: SMTP, IMAP, POP3 and ManageSieve STARTTLS.

Two layers.  The reply parsers (``parse_*``, :class:`SmtpReplyReader`) are pure functions of text lines, so
Hypothesis can throw any junk at them; they raise :class:`DialogueError` and nothing else.  The dialogues
(:func:`negotiate_starttls`) are async and talk through a :class:`Conversation`, which the engine implements
over a socket with bounded line length, bounded total bytes and the target's deadline: this module never
touches a socket, so everything here is testable with a list of lines.

The servers are not ours: every reply may be malformed, multi-line in any order and case, or missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from certkeeper.probe.result import CONNECTION_FAILED, PROTOCOL_ERROR, STARTTLS_NOT_SUPPORTED
from certkeeper.targets import Dialect

# A reply longer than this many lines is not a mail server talking (Postfix's EHLO has about 10).
MAX_REPLY_LINES = 200


class DialogueError(Exception):
    """The dialogue could not reach the TLS handshake.  ``code`` is the finding code to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Conversation(Protocol):
    """A line-oriented channel to the server; the engine enforces limits and the deadline."""

    async def read_line(self) -> str:
        """One line without its CRLF; DialogueError(connection-failed) when the server closes."""
        ...

    async def send_line(self, line: str) -> None:
        ...


def _shorten(text: str, limit: int = 160) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


# --- SMTP (RFC 5321 §4.2 reply syntax, RFC 3207 STARTTLS) -----------------------------------------------

_SMTP_LINE = re.compile(r"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class SmtpReply:
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
            raise DialogueError(PROTOCOL_ERROR, f"not an SMTP reply: {_shorten(line)!r}{_wrong_protocol_hint(line)}")
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


async def _read_smtp_reply(conversation: Conversation) -> SmtpReply:
    reader = SmtpReplyReader()
    while True:
        reply = reader.feed(await conversation.read_line())
        if reply is not None:
            return reply


async def smtp_starttls(conversation: Conversation, ehlo_name: str) -> None:
    """Greeting, EHLO, STARTTLS; returns when the server said 220 to STARTTLS (RFC 3207 §4)."""
    greeting = await _read_smtp_reply(conversation)
    if greeting.code != 220:
        raise DialogueError(PROTOCOL_ERROR, f"the server refused the session: {greeting.code} {greeting.text}")
    await conversation.send_line(f"EHLO {ehlo_name}")
    ehlo = await _read_smtp_reply(conversation)
    if ehlo.code != 250:
        raise DialogueError(PROTOCOL_ERROR, f"EHLO was answered {ehlo.code} {ehlo.text}")
    if "STARTTLS" not in smtp_extensions(ehlo):
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not offer STARTTLS in its EHLO reply")
    await conversation.send_line("STARTTLS")
    reply = await _read_smtp_reply(conversation)
    if reply.code != 220:
        # RFC 3207 §4: 454 "TLS not available due to temporary reason", 501 syntax error.
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STARTTLS was refused: {reply.code} {reply.text}")


# --- IMAP (RFC 9051 / RFC 3501, STARTTLS per RFC 2595 §3.1) ----------------------------------------------

_IMAP_CAPABILITY_CODE = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


@dataclass(frozen=True)
class ImapResponse:
    tag: str  # "*" for untagged, "+" for continuation
    kind: str  # upper-cased first word after the tag: OK, NO, BAD, BYE, PREAUTH, CAPABILITY, ...
    text: str  # the rest of the line


def parse_imap_line(line: str) -> ImapResponse:
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DialogueError(PROTOCOL_ERROR, f"not an IMAP response: {_shorten(line)!r}{_wrong_protocol_hint(line)}")
    return ImapResponse(parts[0], parts[1].upper(), parts[2] if len(parts) > 2 else "")


def imap_capabilities(response: ImapResponse) -> frozenset[str] | None:
    """Capabilities from an untagged CAPABILITY response or a ``[CAPABILITY ...]`` response code, else None."""
    if response.tag == "*" and response.kind == "CAPABILITY":
        return frozenset(word.upper() for word in response.text.split())
    match = _IMAP_CAPABILITY_CODE.search(response.text)
    if match and response.kind in {"OK", "PREAUTH"}:
        return frozenset(word.upper() for word in match.group(1).split())
    return None


async def _imap_command(conversation: Conversation, tag: str, command: str) -> tuple[ImapResponse, frozenset[str]]:
    """Send a tagged command; the tagged completion and any capabilities seen on the way."""
    await conversation.send_line(f"{tag} {command}")
    capabilities: frozenset[str] = frozenset()
    for _ in range(MAX_REPLY_LINES):
        response = parse_imap_line(await conversation.read_line())
        found = imap_capabilities(response)
        if found is not None:
            capabilities |= found
        if response.tag == tag:
            return response, capabilities
        if response.tag == "*" and response.kind == "BYE":
            raise DialogueError(CONNECTION_FAILED, f"the server said BYE: {_shorten(response.text)}")
    raise DialogueError(PROTOCOL_ERROR, f"no tagged reply to {command} within {MAX_REPLY_LINES} lines")


async def imap_starttls(conversation: Conversation) -> None:
    greeting = parse_imap_line(await conversation.read_line())
    if greeting.tag != "*" or greeting.kind not in {"OK", "PREAUTH"}:
        said = f"{greeting.tag} {greeting.kind} {greeting.text}"
        raise DialogueError(PROTOCOL_ERROR, f"unexpected IMAP greeting: {_shorten(said)}{_wrong_protocol_hint(said)}")
    if greeting.kind == "PREAUTH":
        # RFC 2595 §3.1 / RFC 9051 §6.2.1: STARTTLS is only valid in the not-authenticated state.
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server pre-authenticated the session: no STARTTLS possible")
    capabilities = imap_capabilities(greeting)
    if capabilities is None:
        completion, capabilities = await _imap_command(conversation, "c1", "CAPABILITY")
        if completion.kind != "OK":
            said = f"{completion.kind} {_shorten(completion.text)}"
            raise DialogueError(PROTOCOL_ERROR, f"CAPABILITY was answered {said}")
    if "STARTTLS" not in capabilities:
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STARTTLS in its CAPABILITY")
    completion, _ = await _imap_command(conversation, "c2", "STARTTLS")
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
    raise DialogueError(PROTOCOL_ERROR, f"not a POP3 status line: {_shorten(line)!r}{_wrong_protocol_hint(line)}")


async def pop3_starttls(conversation: Conversation) -> None:
    ok, text = parse_pop3_status(await conversation.read_line())
    if not ok:
        raise DialogueError(PROTOCOL_ERROR, f"the server refused the session: -ERR {_shorten(text)}")
    await conversation.send_line("CAPA")
    ok, _ = parse_pop3_status(await conversation.read_line())
    if ok:
        capabilities = set()
        for _ in range(MAX_REPLY_LINES):
            line = await conversation.read_line()
            if line == ".":  # RFC 1939 §3: a multi-line response ends with a lone dot
                break
            if line.split():
                capabilities.add(line.split()[0].upper())
        else:
            raise DialogueError(PROTOCOL_ERROR, f"CAPA list longer than {MAX_REPLY_LINES} lines")
        if "STLS" not in capabilities:
            raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STLS in its CAPA list")
    # Without CAPA (servers older than RFC 2449) the only way to know is to try STLS.
    await conversation.send_line("STLS")
    ok, text = parse_pop3_status(await conversation.read_line())
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
    raise DialogueError(PROTOCOL_ERROR, f"not a ManageSieve response: {_shorten(line)!r}{_wrong_protocol_hint(line)}")


async def _read_sieve_capabilities(conversation: Conversation) -> tuple[str, str, frozenset[str]]:
    capabilities = set()
    for _ in range(MAX_REPLY_LINES):
        kind, text = parse_sieve_line(await conversation.read_line())
        if kind == "CAPABILITY":
            capabilities.add(text)
        else:
            return kind, text, frozenset(capabilities)
    raise DialogueError(PROTOCOL_ERROR, f"ManageSieve capability list longer than {MAX_REPLY_LINES} lines")


async def sieve_starttls(conversation: Conversation) -> None:
    kind, text, capabilities = await _read_sieve_capabilities(conversation)
    if kind != "OK":
        raise DialogueError(PROTOCOL_ERROR, f"the server refused the session: {kind} {_shorten(text)}")
    if "STARTTLS" not in capabilities:
        raise DialogueError(STARTTLS_NOT_SUPPORTED, "the server does not advertise STARTTLS in its capabilities")
    await conversation.send_line("STARTTLS")
    kind, text = parse_sieve_line(await conversation.read_line())
    if kind != "OK":
        raise DialogueError(STARTTLS_NOT_SUPPORTED, f"STARTTLS was refused: {kind} {_shorten(text)}")


async def negotiate_starttls(dialect: Dialect, conversation: Conversation, *, ehlo_name: str) -> None:
    """Run the dialect's dialogue up to the point where the TLS handshake starts."""
    if dialect == "smtp":
        await smtp_starttls(conversation, ehlo_name)
    elif dialect == "imap":
        await imap_starttls(conversation)
    elif dialect == "pop3":
        await pop3_starttls(conversation)
    else:
        await sieve_starttls(conversation)


def _wrong_protocol_hint(line: str) -> str:
    """A hint when the server plainly speaks something else: HTTP, TLS, or another mail protocol."""
    if line.startswith("HTTP/"):
        return " (this is an HTTP server)"
    if line[:1] in {"\x15", "\x16"}:  # TLS record content types: alert, handshake (RFC 8446 §5.1)
        return " (this port speaks TLS right away: try implicit TLS, e.g. smtps:// or imaps://)"
    if line.startswith(("* OK", "+OK", "220 ", "220-", '"IMPLEMENTATION"')):
        return " (another mail protocol answers on this port: check the scheme or --starttls)"
    return ""
