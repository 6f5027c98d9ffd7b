"""Unwrapping reports as they arrive: a gzip body (RFC 8460 section 5.2) or a report mail (section 5.3).  Pure.

Every step is bounded before it does work: a compressed body over :data:`MAX_COMPRESSED_BYTES` is refused unread;
gzip is inflated as a stream that stops one byte past :data:`~certkeeper.tlsrpt.report.MAX_JSON_BYTES`, so a gzip
bomb costs at most that much memory and is refused without being inflated; a mail over :data:`MAX_MAIL_BYTES`
is refused before it is parsed, and one with more than :data:`MAX_PARTS` MIME parts is refused whole.  One bad
report never hides the good ones: :class:`Intake` carries both.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

from certkeeper.errors import ReportRefused
from certkeeper.tlsrpt.report import MAX_JSON_BYTES, TlsReport, parse_report
from certkeeper.values import frozen

MAX_COMPRESSED_BYTES = 5 * 1024 * 1024
MAX_MAIL_BYTES = 10 * 1024 * 1024
MAX_PARTS = 50  # a report mail has a text part, one report, perhaps a signature; 50 leaves room
GZIP_TYPE = "application/tlsrpt+gzip"
JSON_TYPE = "application/tlsrpt+json"
MAX_MULTIPART_DEPTH = 8  # RFC 8460's multipart/report holds its parts one level down
MEDIA_TYPES = (GZIP_TYPE, JSON_TYPE)


@frozen
class Intake:
    """What one delivery (a mail, a POST) held: the reports parsed and the ones refused, each with its reason."""

    reports: tuple[TlsReport, ...] = ()
    refused: tuple[ReportRefused, ...] = ()


def inflate(data: bytes, where: str, *, max_compressed: int = MAX_COMPRESSED_BYTES,
            max_inflated: int = MAX_JSON_BYTES) -> bytes:
    """The bytes inside one gzip stream, never more than ``max_inflated`` of them."""
    if len(data) > max_compressed:
        raise ReportRefused(where, "", f"{len(data):,} compressed bytes, more than the {max_compressed:,} accepted")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # 16+: gzip header and CRC-32 trailer required
    try:
        # max_length: stop one byte past the cap, so a bomb is detected after max_inflated bytes, not after GBs.
        inflated = inflater.decompress(data, max_inflated + 1)
    except zlib.error as exc:
        raise ReportRefused(where, "", f"not a valid gzip stream ({exc})") from None
    if len(inflated) > max_inflated:
        raise ReportRefused(where, "", f"inflates to more than {max_inflated:,} bytes (from {len(data):,}); "
                                       "refused without inflating the rest")
    if not inflater.eof:
        raise ReportRefused(where, "", f"truncated gzip: the stream ends after {len(data):,} bytes without its "
                                       "trailer")
    if inflater.unused_data.strip(b"\0"):
        raise ReportRefused(where, "", f"{len(inflater.unused_data):,} bytes after the end of the gzip stream")
    return inflated


def read_body(data: bytes, media_type: str, where: str) -> TlsReport:
    """One report body of ``media_type`` (``application/tlsrpt+gzip`` or ``+json``)."""
    if media_type == GZIP_TYPE:
        return parse_report(inflate(data, where), where)
    if media_type == JSON_TYPE:
        return parse_report(data, where)
    raise ReportRefused(where, "", f"media type {media_type or 'none'!r}, expected {GZIP_TYPE} or {JSON_TYPE}")


def read_mail(data: bytes, where: str, *, max_bytes: int = MAX_MAIL_BYTES, max_parts: int = MAX_PARTS) -> Intake:
    """The reports attached to one report mail (RFC 8460 section 5.3), and what was refused in it."""
    if len(data) > max_bytes:
        return Intake(refused=(ReportRefused(where, "", f"a mail of {len(data):,} bytes, more than the "
                                                        f"{max_bytes:,} accepted"),))
    try:
        message = BytesParser(policy=policy.default).parsebytes(data)
        parts = _parts(message, max_parts + 1, where)
    except RecursionError:  # the email parser recurses per multipart level
        return Intake(refused=(ReportRefused(where, "", "multipart nested too deeply to parse: not a report "
                                                        "mail, nothing in it imported"),))
    except ReportRefused as exc:
        return Intake(refused=(exc,))
    if len(parts) > max_parts:
        return Intake(refused=(ReportRefused(where, "", f"more than {max_parts} MIME parts; a report mail has a "
                                                        "few: nothing in it imported"),))
    reports: list[TlsReport] = []
    refused: list[ReportRefused] = []
    for index, part in enumerate(parts):
        media_type = part.get_content_type()
        if media_type not in MEDIA_TYPES:
            continue
        part_where = f"{where}, part {index + 1} ({media_type}{_filename(part)})"
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            refused.append(ReportRefused(part_where, "", "a part without content"))
            continue
        try:
            reports.append(read_body(payload, media_type, part_where))
        except ReportRefused as exc:
            refused.append(exc)
    if not reports and not refused:
        refused.append(ReportRefused(where, "", f"no {GZIP_TYPE} or {JSON_TYPE} part: not a TLS report mail"))
    return Intake(tuple(reports), tuple(refused))


def merge(intakes: Sequence[Intake]) -> Intake:
    return Intake(tuple(r for i in intakes for r in i.reports), tuple(r for i in intakes for r in i.refused))


def _parts(message: Message, limit: int, where: str) -> list[Message]:
    """Leaf parts, depth first, stopping once ``limit`` are found (a mail of 10,000 parts costs no more)."""
    found: list[Message] = []
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack and len(found) < limit:
        part, depth = stack.pop()
        if part.is_multipart():
            if depth >= MAX_MULTIPART_DEPTH:
                raise ReportRefused(where, "", f"multipart nested more than {MAX_MULTIPART_DEPTH} deep: "
                                               "not a report mail, nothing in it imported")
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend((child, depth + 1) for child in reversed(children) if isinstance(child, Message))
        else:
            found.append(part)
    return found


def _filename(part: Message) -> str:
    name = part.get_filename() if isinstance(part, EmailMessage) else None
    return f", {name}" if name else ""
