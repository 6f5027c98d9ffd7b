"""MTA-STS (RFC 8461) as plain values: the policy text, the ``_mta-sts`` TXT record, and MX name matching.

Pure: no clock, no network, no files.  Parsing never raises on bad input; every syntax problem is a
:class:`PolicyFinding` naming the line, so ``certkeeper check --mta-sts`` reports all of them at once and a hostile
or broken policy file cannot crash the daemon.  Input is bounded (:data:`MAX_POLICY_BYTES`) before it is decoded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from certkeeper.model import MTA_STS_MAX_AGE_LIMIT, MTA_STS_MODES
from certkeeper.model import mx_pattern_problem as pattern_problem
from certkeeper.values import field, frozen, mutable

if TYPE_CHECKING:
    from certkeeper.model import MtaStsMode as Mode

MODES = MTA_STS_MODES

# RFC 8461 section 3.3 lets a sender refuse large policies; 64 KiB is what the common senders accept.
MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = MTA_STS_MAX_AGE_LIMIT
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"

# The RFC 8460 result words certkeeper uses for the policy itself.
STS_POLICY_INVALID = "sts-policy-invalid"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_WEBPKI_INVALID = "sts-webpki-invalid"

_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_TXT_FIELD_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")


@frozen
class Policy:
    """One MTA-STS policy: mode, the MX host patterns, how long senders may cache it."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...] = ()
    extensions: tuple[tuple[str, str], ...] = ()


@frozen
class PolicyFinding:
    """A problem with a policy or TXT record: the RFC 8460 word, the line (None: the whole text), what is wrong."""

    code: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@frozen
class ParsedPolicy:
    """What :func:`parse_policy` made of a policy file: the policy when it is usable, and every finding."""

    policy: Policy | None
    findings: tuple[PolicyFinding, ...] = ()

    @property
    def valid(self) -> bool:
        return self.policy is not None and not self.findings


@frozen
class TxtRecord:
    """The ``_mta-sts.<domain>`` TXT record: ``v=STSv1; id=...`` (RFC 8461 section 3.1)."""

    id: str
    extensions: tuple[tuple[str, str], ...] = field(default=())


def _invalid(message: str, line: int | None = None) -> PolicyFinding:
    return PolicyFinding(STS_POLICY_INVALID, message, line)


# -- the policy file (RFC 8461 section 3.2) -------------------------------------------------------------------


@mutable
class _Lines:
    """What the lines of a policy file held, as they were read."""

    findings: list[PolicyFinding] = field(default_factory=list)
    fields: dict[str, tuple[str, int]] = field(default_factory=dict)  # version, mode, max_age: (value, line)
    mx: list[str] = field(default_factory=list)
    extensions: list[tuple[str, str]] = field(default_factory=list)

    def read(self, number: int, line: str) -> None:
        if not line.strip():
            self.findings.append(_invalid("an empty line, which the policy grammar does not allow", number))
            return
        name, colon, value = line.partition(":")
        if not colon:
            self.findings.append(_invalid(f"{_quote(line)} is not a \"key: value\" pair", number))
            return
        if name != name.strip() or not name:
            self.findings.append(_invalid(f"the key {_quote(name)} has white space around it or is empty", number))
            return
        value = value.strip(" \t")
        if name == "mx":
            problem = pattern_problem(value)
            if problem:
                self.findings.append(_invalid(f"mx {_quote(value)}: {problem}", number))
            else:
                self.mx.append(value.lower())
        elif name in ("version", "mode", "max_age"):
            if name in self.fields:
                self.findings.append(_invalid(f"{name} given again (first on line {self.fields[name][1]}); senders "
                                              "use the first", number))
            else:
                self.fields[name] = (value, number)
        elif not _EXTENSION_NAME.match(name):
            self.findings.append(_invalid(f"{_quote(name)} is not a valid key", number))
        elif not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            self.findings.append(_invalid(f"the extension {name!r} has an empty or non-printable value", number))
        else:
            self.extensions.append((name, value))

    def version_ok(self) -> bool:
        version = self.fields.get("version")
        if version is None:
            self.findings.append(_invalid('no "version: STSv1" line'))
        elif version[0] != "STSv1":
            self.findings.append(_invalid(f"version {_quote(version[0])}, expected STSv1", version[1]))
        return version is not None and version[0] == "STSv1"

    def mode(self) -> Mode | None:
        field_ = self.fields.get("mode")
        if field_ is None:
            self.findings.append(_invalid('no "mode:" line (enforce, testing or none)'))
            return None
        mode = next((m for m in MODES if m == field_[0]), None)
        if mode is None:
            self.findings.append(_invalid(f"mode {_quote(field_[0])}, expected enforce, testing or none", field_[1]))
        return mode

    def max_age(self) -> int | None:
        field_ = self.fields.get("max_age")
        if field_ is None:
            self.findings.append(_invalid('no "max_age:" line'))
            return None
        text, number = field_
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            self.findings.append(_invalid(f"max_age {_quote(text)} is not a number of seconds (1 to 10 digits)",
                                          number))
            return None
        if int(text) > MAX_AGE_LIMIT:
            self.findings.append(_invalid(f"max_age {int(text)} is more than {MAX_AGE_LIMIT} (RFC 8461 section "
                                          "3.2)", number))
        return int(text)


def parse_policy(data: bytes) -> ParsedPolicy:
    """Parse the body of ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.

    ``data`` may be longer than :data:`MAX_POLICY_BYTES` (a fetcher reads one byte more to tell): such a policy
    is refused whole, since a truncated policy could silently lose ``mx`` lines.
    """
    if len(data) > MAX_POLICY_BYTES:
        return ParsedPolicy(None, (_invalid(f"the policy is larger than {MAX_POLICY_BYTES // 1024} KiB "
                                            "(RFC 8461 section 3.3); senders refuse it"),))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ParsedPolicy(None, (_invalid(f"the policy is not UTF-8 text (byte {exc.start})"),))
    read = _Lines()
    # Lines end in CRLF or LF (sts-policy-term); a final terminator is optional.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        read.read(number, raw.removesuffix("\r"))
    version_ok, mode, max_age = read.version_ok(), read.mode(), read.max_age()
    if mode in ("enforce", "testing") and not read.mx and not any("mx" in f.message for f in read.findings):
        read.findings.append(_invalid(f'mode {mode} without any "mx:" line; senders can match no MX host'))
    if mode is None or max_age is None or not version_ok:
        return ParsedPolicy(None, tuple(read.findings))
    return ParsedPolicy(Policy(mode, max_age, tuple(read.mx), tuple(read.extensions)), tuple(read.findings))


def render_policy(policy: Policy) -> str:
    """The policy file certkeeper publishes: CRLF lines, version first, mx patterns in the given order."""
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    lines += [f"mx: {pattern}" for pattern in policy.mx]
    lines.append(f"max_age: {policy.max_age}")
    lines += [f"{name}: {value}" for name, value in policy.extensions]
    return "".join(line + "\r\n" for line in lines)


def policy_id(text: str) -> str:
    """The TXT ``id`` for a policy text: 32 hex digits of its SHA-256, so any change of the text changes it.

    Derived, not counted: every node of a fleet, and every pass, computes the same id for the same text.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# -- the TXT record (RFC 8461 section 3.1) --------------------------------------------------------------------


def render_txt(policy_text: str) -> str:
    """``v=STSv1; id=<id>`` for ``policy_text``."""
    return f"v=STSv1; id={policy_id(policy_text)}"


def render_tlsrpt(rua: Sequence[str]) -> str:
    """``v=TLSRPTv1; rua=mailto:...,https://...`` (RFC 8460 section 3)."""
    return "v=TLSRPTv1; rua=" + ",".join(rua)


def parse_txt_records(texts: Iterable[str]) -> tuple[TxtRecord | None, tuple[PolicyFinding, ...]]:
    """Pick and parse the one STS record among the TXT strings of ``_mta-sts.<domain>``.

    RFC 8461 section 3.1: records not starting with ``v=STSv1;`` are discarded; if not exactly one remains, or
    it does not parse, the domain has no usable policy.
    """
    candidates = [t for t in texts if t.startswith("v=STSv1;") or t == "v=STSv1"]
    if not candidates:
        return None, (_invalid('no TXT record starting with "v=STSv1;"'),)
    if len(candidates) > 1:
        return None, (_invalid(f"{len(candidates)} TXT records start with \"v=STSv1;\"; senders use none of "
                               "them unless there is exactly one"),)
    text = candidates[0]
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()
    record_id: str | None = None
    extensions: list[tuple[str, str]] = []
    findings: list[PolicyFinding] = []
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if not equals:
            findings.append(_invalid(f"TXT field {_quote(part)} is not name=value"))
        elif name == "id":
            if record_id is not None:
                findings.append(_invalid("TXT record has two id fields"))
            elif not _TXT_ID.match(value):
                findings.append(_invalid(f"TXT id {_quote(value)} is not 1 to 32 letters and digits"))
            else:
                record_id = value
        elif _EXTENSION_NAME.match(name) and _TXT_FIELD_VALUE.match(value):
            extensions.append((name, value))
        else:
            findings.append(_invalid(f"TXT field {_quote(part)} is not valid"))
    if record_id is None and not any("id" in f.message for f in findings):
        findings.append(_invalid("TXT record has no id field"))
    if findings or record_id is None:
        return None, tuple(findings)
    return TxtRecord(record_id, tuple(extensions)), ()


# -- MX host names against mx patterns (RFC 8461 section 4.1) -------------------------------------------------


def mx_matches(pattern: str, host: str) -> bool:
    """Whether MX host ``host`` matches policy pattern ``pattern`` (RFC 8461 section 4.1).

    Case-insensitive, trailing dots ignored.  ``*.example.com`` matches exactly one further left-most label:
    ``mail.example.com``, not ``example.com`` nor ``foo.bar.example.com``.
    """
    p = pattern.lower().rstrip(".")
    h = host.lower().rstrip(".")
    if p.startswith("*."):
        first, dot, rest = h.partition(".")
        return bool(first) and bool(dot) and rest == p[2:] and first != "*"
    return p == h


def matching_pattern(host: str, patterns: Sequence[str]) -> str | None:
    """The first pattern of ``patterns`` that ``host`` matches, or None."""
    return next((p for p in patterns if mx_matches(p, host)), None)


def name_fits_patterns(name: str, patterns: Sequence[str]) -> bool:
    """Whether a certificate name can serve an MX host the patterns allow.

    A plain name must match a pattern (section 4.1).  A wildcard certificate name ``*.example.com`` covers every
    host one label under ``example.com`` (RFC 6125), so it fits the pattern ``*.example.com`` and any plain
    pattern it covers, such as ``mail.example.com``.
    """
    n = name.lower().rstrip(".")
    if not n.startswith("*."):
        return matching_pattern(n, patterns) is not None
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p == n or (not p.startswith("*.") and mx_matches(n, p)):
            return True
    return False


def policy_diff(published: Sequence[str], wanted: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The patterns ``wanted`` adds to ``published`` and those it drops, each in order."""
    added = tuple(p for p in wanted if p not in published)
    dropped = tuple(p for p in published if p not in wanted)
    return added, dropped


def _quote(text: str) -> str:
    shown = text if len(text) <= 60 else text[:60] + "..."
    return repr(shown)
