"""An RFC 8460 report, parsed into frozen typed records.  Pure: bytes in, records or a refusal out.

The schema is RFC 8460 section 4 (the JSON of a TLS report); every violation is refused with
:class:`~certkeeper.errors.ReportRefused` naming the JSON path (``$.policies[0].summary.total-failure-session-count``)
and what was found.  Bounds hold before any work: the text is capped in bytes before it is decoded, must be UTF-8
(RFC 8259 section 8.1), may not repeat a key in one object, and may not nest deeper than Python's JSON decoder
allows (a ``RecursionError`` there becomes a refusal, never a traceback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from certkeeper.errors import ReportRefused
from certkeeper.values import frozen

# A real daily report of a large sender is a few hundred kilobytes of JSON; 20 MiB leaves room and bounds memory.
MAX_JSON_BYTES = 20 * 1024 * 1024
MAX_COUNT = 2**53  # session counts beyond any plausible day, and exact in every JSON reader
MAX_POLICIES = 10_000
MAX_FAILURE_DETAILS = 100_000

POLICY_TYPES = ("tlsa", "sts", "no-policy-found")  # RFC 8460 section 4.4
# RFC 8460 section 4.3 (negotiation), 4.3.2 (DANE: "tlsa-invalid", ...), 4.3.3 (MTA-STS: "sts-...").
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
    "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    "sts-policy-invalid", "sts-webpki-invalid",
)
# Result types a certificate certkeeper manages (or the DANE and MTA-STS records describing it) can cause.
CERTIFICATE_RESULTS = frozenset({
    "certificate-expired", "certificate-host-mismatch", "certificate-not-trusted", "validation-failure",
    "tlsa-invalid", "dnssec-invalid", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
})
_TOKEN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@frozen
class FailureDetail:
    """One ``failure-details`` entry: sessions that failed one way against one receiving MX."""

    result_type: str
    failed_session_count: int
    receiving_mx_hostname: str = ""
    receiving_mx_helo: str = ""
    receiving_ip: str = ""
    sending_mta_ip: str = ""
    failure_reason_code: str = ""
    additional_information: str = ""


@frozen
class PolicyResult:
    """One ``policies`` entry: the policy the sender applied and how its sessions went."""

    policy_type: str
    policy_domain: str
    policy_strings: tuple[str, ...]
    mx_hosts: tuple[str, ...]
    successful_sessions: int
    failed_sessions: int
    failures: tuple[FailureDetail, ...]


@frozen
class TlsReport:
    """A whole report (RFC 8460 section 4.4)."""

    report_id: str
    organization_name: str
    contact_info: str
    start: datetime
    end: datetime
    policies: tuple[PolicyResult, ...]

    @property
    def failed_sessions(self) -> int:
        return sum(p.failed_sessions for p in self.policies)

    @property
    def successful_sessions(self) -> int:
        return sum(p.successful_sessions for p in self.policies)


def parse_report(data: bytes, where: str, *, max_bytes: int = MAX_JSON_BYTES) -> TlsReport:
    """The report in ``data`` (the JSON text); ``where`` names its origin in a refusal (``mail 12, part 2``)."""
    return parse_document(decode_json(data, where, max_bytes=max_bytes), where)


def decode_json(data: bytes, where: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """JSON text to Python values, bounded: size first, then UTF-8, duplicate keys, depth, numbers."""
    if len(data) > max_bytes:
        raise ReportRefused(where, "$", f"{len(data):,} bytes of JSON, more than the {max_bytes:,} accepted")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportRefused(where, "$", f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                                        "RFC 8460 reports are UTF-8 JSON") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ReportRefused(where, "$", "JSON nested too deeply to be a TLS report") from None
    except _DuplicateKey as exc:
        raise ReportRefused(where, "$", f"the key {exc.key!r} appears twice in one object") from None
    except json.JSONDecodeError as exc:
        raise ReportRefused(where, "$", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer of more digits than Python converts, or NaN/Infinity
        raise ReportRefused(where, "$", f"not JSON a report can hold: {exc}") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    msg = f"{name} is not a JSON number"
    raise ValueError(msg)


def parse_document(document: Any, where: str) -> TlsReport:
    """A decoded JSON document to a :class:`TlsReport`, every field checked against RFC 8460 section 4."""
    root = _Node(document, where)
    date_range = root.field("date-range")
    start = date_range.field("start-datetime").datetime()
    end = date_range.field("end-datetime").datetime()
    if end < start:
        date_range.field("end-datetime").refuse(f"{end.isoformat()}, before start-datetime {start.isoformat()}")
    policies_node = root.field("policies")
    policies = tuple(_policy(node) for node in policies_node.items(MAX_POLICIES))
    return TlsReport(
        report_id=root.field("report-id").string(),
        organization_name=root.field("organization-name").string(),
        contact_info=_optional_text(root, "contact-info"),
        start=start,
        end=end,
        policies=policies,
    )


def _policy(node: _Node) -> PolicyResult:
    policy = node.field("policy")
    policy_type_node = policy.field("policy-type")
    policy_type = policy_type_node.string()
    if policy_type not in POLICY_TYPES:
        policy_type_node.refuse(f"{policy_type!r}", "one of " + ", ".join(POLICY_TYPES))
    strings = policy.optional("policy-string")
    mx_hosts = policy.optional("mx-host")
    summary = node.field("summary")
    failures = node.optional("failure-details")
    return PolicyResult(
        policy_type=policy_type,
        policy_domain=policy.field("policy-domain").hostname(),
        policy_strings=tuple(s.string() for s in strings.items(10_000)) if strings else (),
        # RFC 8460's example writes mx-host as a list and its schema as one pattern: both are seen in the wild.
        mx_hosts=_strings(mx_hosts) if mx_hosts else (),
        successful_sessions=summary.field("total-successful-session-count").count(),
        failed_sessions=summary.field("total-failure-session-count").count(),
        failures=tuple(_failure(f) for f in failures.items(MAX_FAILURE_DETAILS)) if failures else (),
    )


def _failure(node: _Node) -> FailureDetail:
    result_node = node.field("result-type")
    result_type = result_node.string()
    if not _TOKEN.fullmatch(result_type):
        result_node.refuse(f"{result_type!r}", "a result type such as " + ", ".join(RESULT_TYPES[:3]))
    mx = node.optional("receiving-mx-hostname")
    return FailureDetail(
        result_type=result_type,
        failed_session_count=node.field("failed-session-count").count(),
        receiving_mx_hostname=mx.hostname() if mx else "",
        receiving_mx_helo=_optional_text(node, "receiving-mx-helo"),
        receiving_ip=_optional_text(node, "receiving-ip"),
        sending_mta_ip=_optional_text(node, "sending-mta-ip"),
        failure_reason_code=_optional_text(node, "failure-reason-code"),
        additional_information=_optional_text(node, "additional-information"),
    )


def _optional_text(node: _Node, key: str) -> str:
    value = node._object().get(key)  # the common case without a node: a string, or nothing
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _Node(value, node.where, node, f".{key}").string()


def _strings(node: _Node) -> tuple[str, ...]:
    if isinstance(node.value, str):
        return (node.string(),)
    return tuple(item.string() for item in node.items(1_000))


class _Node:
    """A value at a JSON path, with typed accessors that refuse naming the path.

    The path is spelled only when a refusal needs it (a large report has tens of thousands of values).
    """

    __slots__ = ("parent", "step", "value", "where")

    def __init__(self, value: Any, where: str, parent: _Node | None = None, step: str = "$") -> None:
        self.value = value
        self.where = where
        self.parent = parent
        self.step = step

    @property
    def path(self) -> str:
        steps = []
        node: _Node | None = self
        while node is not None:
            steps.append(node.step)
            node = node.parent
        return "".join(reversed(steps))

    def refuse(self, found: str, expected: str = "") -> None:
        problem = f"found {found}" + (f", expected {expected}" if expected else "")
        raise ReportRefused(self.where, self.path, problem)

    def _object(self) -> Mapping[str, Any]:
        if not isinstance(self.value, dict):
            self.refuse(_describe(self.value), "an object")
        return self.value  # type: ignore[no-any-return]

    def field(self, key: str) -> _Node:
        fields = self._object()
        if key not in fields:
            raise ReportRefused(self.where, f"{self.path}.{key}", "missing (RFC 8460 section 4 requires it)")
        return _Node(fields[key], self.where, self, f".{key}")

    def optional(self, key: str) -> _Node | None:
        fields = self._object()
        value = fields.get(key)
        return _Node(value, self.where, self, f".{key}") if value is not None else None

    def items(self, limit: int) -> list[_Node]:
        if not isinstance(self.value, list):
            self.refuse(_describe(self.value), "an array")
        values: Sequence[Any] = self.value
        if len(values) > limit:
            self.refuse(f"an array of {len(values):,} entries", f"at most {limit:,}")
        return [_Node(value, self.where, self, f"[{i}]") for i, value in enumerate(values)]

    def string(self, *, allow_empty: bool = False) -> str:
        if not isinstance(self.value, str) or (not self.value and not allow_empty):
            self.refuse(_describe(self.value), "a non-empty string")
        return self.value  # type: ignore[no-any-return]

    def hostname(self) -> str:
        name = self.string().rstrip(".").lower()
        if not re.fullmatch(r"(\*\.)?[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", name):
            self.refuse(f"{self.value!r}", "a host name")
        return name

    def count(self) -> int:
        if type(self.value) is not int or not 0 <= self.value <= MAX_COUNT:
            self.refuse(_describe(self.value), "a whole number of sessions, 0 or more")
        return self.value  # type: ignore[no-any-return]

    def datetime(self) -> datetime:
        text = self.string()
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            value = None
        if value is None or value.tzinfo is None:
            self.refuse(f"{text!r}", "an RFC 3339 date-time with a time zone (2016-04-01T00:00:00Z)")
        assert value is not None
        return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {shown!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return "an object"


def to_document(report: TlsReport) -> dict[str, Any]:
    """The report as RFC 8460 JSON again (what the store keeps); :func:`parse_document` reads it back equal."""
    def failure(f: FailureDetail) -> dict[str, Any]:
        optional = {
            "receiving-mx-hostname": f.receiving_mx_hostname, "receiving-mx-helo": f.receiving_mx_helo,
            "receiving-ip": f.receiving_ip, "sending-mta-ip": f.sending_mta_ip,
            "failure-reason-code": f.failure_reason_code, "additional-information": f.additional_information,
        }
        return {"result-type": f.result_type, "failed-session-count": f.failed_session_count,
                **{key: value for key, value in optional.items() if value}}

    return {
        "organization-name": report.organization_name,
        "date-range": {"start-datetime": report.start.isoformat(), "end-datetime": report.end.isoformat()},
        "contact-info": report.contact_info,
        "report-id": report.report_id,
        "policies": [
            {
                "policy": {"policy-type": p.policy_type, "policy-string": list(p.policy_strings),
                           "policy-domain": p.policy_domain, "mx-host": list(p.mx_hosts)},
                "summary": {"total-successful-session-count": p.successful_sessions,
                            "total-failure-session-count": p.failed_sessions},
                "failure-details": [failure(f) for f in p.failures],
            }
            for p in report.policies
        ],
    }
