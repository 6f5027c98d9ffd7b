"""The STARTTLS reply parsers and dialogues, without sockets: scripted conversations and Hypothesis junk."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper.probe.conversation import DialogueError
from certkeeper.probe.dialects import (
    imap_capabilities,
    negotiate_starttls_sync,
    parse_imap_line,
    parse_pop3_status,
    parse_sieve_line,
    parse_smtp_reply,
    smtp_extensions,
)
from certkeeper.probe.judge import thresholds_for


class Script:
    """A SyncConversation that replays server lines and records what the client sent."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.sent: list[str] = []

    def read_line(self) -> str:
        if not self.lines:
            msg = "connection-failed"
            raise DialogueError(msg, "closed")
        return self.lines.pop(0)

    def send_line(self, line: str) -> None:
        self.sent.append(line)


def negotiate(dialect: str, lines: list[str]) -> Script:
    script = Script(lines)
    negotiate_starttls_sync(dialect, script, ehlo_name="[127.0.0.1]")  # type: ignore[arg-type]
    return script


def test_smtp_multiline_reply_in_any_case() -> None:
    reply = parse_smtp_reply(["250-mail.test", "250-pipelining", "250-StartTLS", "250 SIZE 100"])
    assert reply.code == 250 and smtp_extensions(reply) == {"PIPELINING", "STARTTLS", "SIZE"}


def test_smtp_reply_code_may_not_change_mid_reply() -> None:
    with pytest.raises(DialogueError, match="changed from 250 to 251"):
        parse_smtp_reply(["250-a", "251 b"])


def test_smtp_dialogue_with_multiline_greeting() -> None:
    script = negotiate("smtp", ["220-mail.test", "220 ESMTP", "250-mail.test", "250 STARTTLS", "220 go"])
    assert script.sent == ["EHLO [127.0.0.1]", "STARTTLS"]


@pytest.mark.parametrize(
    ("dialect", "lines", "code", "match"),
    [
        ("smtp", ["220 hi", "250-x", "250 8BITMIME"], "starttls-not-supported", "does not offer"),
        ("smtp", ["220 hi", "250-x", "250 STARTTLS", "454 4.7.0 TLS not available"], "starttls-not-supported", "454"),
        ("smtp", ["421 busy"], "protocol-error", "refused the session"),
        ("smtp", ["HTTP/1.1 400 Bad"], "protocol-error", "HTTP server"),
        ("imap", ["* OK hi", "* CAPABILITY IMAP4rev1", "c1 OK"], "starttls-not-supported", "CAPABILITY"),
        ("imap", ["* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", "c2 NO later"], "starttls-not-supported", "NO"),
        ("imap", ["* PREAUTH hi"], "starttls-not-supported", "pre-authenticated"),
        ("imap", ["* BYE go away"], "protocol-error", "greeting"),
        ("pop3", ["+OK hi", "+OK", "USER", "."], "starttls-not-supported", "STLS"),
        ("pop3", ["+OK hi", "-ERR no CAPA", "-ERR no"], "starttls-not-supported", "STLS was refused"),
        ("sieve", ['"IMPLEMENTATION" "x"', 'OK "hi"'], "starttls-not-supported", "does not advertise"),
        ("sieve", ['"STARTTLS"', 'OK "hi"', 'NO "later"'], "starttls-not-supported", "refused"),
        ("sieve", ["\x16\x03\x01"], "protocol-error", "speaks TLS right away"),
    ],
)
def test_dialogue_failures_name_the_finding(dialect: str, lines: list[str], code: str, match: str) -> None:
    with pytest.raises(DialogueError, match=match) as caught:
        negotiate(dialect, lines)
    assert caught.value.code == code


def test_imap_capability_from_greeting_skips_the_command() -> None:
    script = negotiate("imap", ["* OK [CAPABILITY IMAP4rev1 starttls] ready", "* junk untagged", "c2 OK go"])
    assert script.sent == ["c2 STARTTLS"]
    assert imap_capabilities(parse_imap_line("* capability IMAP4rev1 STARTTLS")) == frozenset({"IMAP4REV1", "STARTTLS"})


def test_pop3_without_capa_tries_stls() -> None:
    assert negotiate("pop3", ["+OK hi", "-ERR unknown", "+OK go"]).sent == ["CAPA", "STLS"]


def test_sieve_capabilities_in_any_case() -> None:
    script = negotiate("sieve", ['"IMPLEMENTATION" "Dovecot"', '"starttls"', '"SASL" ""', "ok", 'OK "go"'])
    assert script.sent == ["STARTTLS"]


lines = st.lists(st.text(max_size=300), max_size=30)


@given(lines)
def test_smtp_parser_raises_only_dialogue_errors(junk: list[str]) -> None:
    """Whatever a server sends, the parser returns a reply or raises DialogueError: never anything else."""
    with contextlib.suppress(DialogueError):
        parse_smtp_reply(junk)


@given(st.text(max_size=300))
def test_line_parsers_raise_only_dialogue_errors(line: str) -> None:
    for parse in (parse_imap_line, parse_pop3_status, parse_sieve_line):
        with contextlib.suppress(DialogueError):
            parse(line)


@given(st.sampled_from(["smtp", "imap", "pop3", "sieve"]), lines)
def test_dialogues_end_in_success_or_a_dialogue_error(dialect: str, junk: list[str]) -> None:
    try:
        negotiate(dialect, junk)
    except DialogueError as exc:
        assert exc.code in {"protocol-error", "starttls-not-supported", "connection-failed"}


@given(st.floats(0.01, 5000), st.floats(1, 100), st.floats(0, 1))
def test_thresholds_never_exceed_the_configured_ones(lifetime: float, warning: float, share: float) -> None:
    """Scaled thresholds stay ordered, below the configured ones, and below a quarter of the lifetime."""
    critical = warning * share
    scaled_warning, scaled_critical = thresholds_for(lifetime, warning, critical)
    assert scaled_critical <= scaled_warning <= warning
    if lifetime < 4 * warning:
        assert scaled_warning == pytest.approx(lifetime / 4)
    else:
        assert (scaled_warning, scaled_critical) == (warning, critical)
