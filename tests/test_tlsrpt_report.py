"""RFC 8460 reports parsed into typed records; hostile input refused or bounded, with a clear message."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime

import pytest

from certkeeper.errors import InputError, ReportRefused
from certkeeper.tlsrpt.intake import MAX_PARTS, inflate, read_body, read_mail
from certkeeper.tlsrpt.report import MAX_JSON_BYTES, RESULT_TYPES, parse_document, parse_report, to_document
from tests.tlsrpt_reports import RFC_EXAMPLE, encode, every_result_type, gzip_bomb, gzipped, report, report_mail


def test_the_rfc_example_parses_into_typed_records() -> None:
    parsed = parse_report(encode(RFC_EXAMPLE), "example")
    assert parsed.report_id == "5065427c-23d3-47ca-b6e0-946ea0e8c4be"
    assert parsed.organization_name == "Company-X"
    assert parsed.start == datetime(2016, 4, 1, tzinfo=UTC)
    assert parsed.end == datetime(2016, 4, 1, 23, 59, 59, tzinfo=UTC)
    (policy,) = parsed.policies
    assert (policy.policy_type, policy.policy_domain, policy.mx_hosts) == ("sts", "company-y.example",
                                                                           ("*.mail.company-y.example",))
    assert (policy.successful_sessions, policy.failed_sessions) == (5326, 303)
    assert [(f.result_type, f.receiving_mx_hostname, f.failed_session_count) for f in policy.failures] == [
        ("certificate-expired", "mx1.mail.company-y.example", 100),
        ("starttls-not-supported", "mx2.mail.company-y.example", 200),
        ("validation-failure", "mx-backup.mail.company-y.example", 3),
    ]
    assert policy.failures[2].failure_reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"
    assert policy.failures[1].receiving_ip == "203.0.113.56"


@pytest.mark.parametrize("document", every_result_type(), ids=lambda d: d["report-id"])
def test_every_result_type_parses_and_round_trips(document: dict[str, object]) -> None:
    parsed = read_body(gzipped(document), "application/tlsrpt+gzip", "POST")
    assert parsed.policies[0].failures[0].result_type == str(document["report-id"]).removeprefix("variant-")
    assert parse_document(json.loads(json.dumps(to_document(parsed))), "store") == parsed


def test_every_rfc_result_type_has_a_variant() -> None:
    assert {d["report-id"] for d in every_result_type()} == {f"variant-{r}" for r in RESULT_TYPES}


@pytest.mark.parametrize(("change", "path", "problem"), [
    (lambda d: d.pop("report-id"), r"\$\.report-id", "missing"),
    (lambda d: d["policies"][0]["summary"].update({"total-failure-session-count": "303"}),
     r"\$\.policies\[0\]\.summary\.total-failure-session-count", "found the string '303', expected a whole number"),
    (lambda d: d["policies"][0]["summary"].update({"total-successful-session-count": True}),
     r"\$\.policies\[0\]\.summary\.total-successful-session-count", "found true"),
    (lambda d: d["policies"][0]["failure-details"][2].update({"failed-session-count": -3}),
     r"\$\.policies\[0\]\.failure-details\[2\]\.failed-session-count", "found the number -3"),
    (lambda d: d["policies"][0]["policy"].update({"policy-type": "dmarc"}),
     r"\$\.policies\[0\]\.policy\.policy-type", "found 'dmarc', expected one of tlsa, sts, no-policy-found"),
    (lambda d: d.update({"policies": {"a": 1}}), r"\$\.policies", "found an object, expected an array"),
    (lambda d: d["date-range"].update({"start-datetime": "yesterday"}), r"\$\.date-range\.start-datetime",
     "RFC 3339"),
    (lambda d: d["date-range"].update({"end-datetime": "2016-04-01T23:59:59"}), r"\$\.date-range\.end-datetime",
     "time zone"),
    (lambda d: d["date-range"].update({"end-datetime": "2016-03-01T00:00:00Z"}), r"\$\.date-range\.end-datetime",
     "before start-datetime"),
    (lambda d: d["policies"][0]["failure-details"][0].update({"receiving-mx-hostname": "mx1 ; rm -rf"}),
     r"\$\.policies\[0\]\.failure-details\[0\]\.receiving-mx-hostname", "expected a host name"),
])
def test_a_schema_violation_is_refused_naming_its_json_path(change: object, path: str, problem: str) -> None:
    document = json.loads(json.dumps(RFC_EXAMPLE))
    change(document)  # type: ignore[operator]
    with pytest.raises(ReportRefused, match=rf"^POST from 127\.0\.0\.1: TLS report refused: {path}: .*{problem}"):
        parse_report(encode(document), "POST from 127.0.0.1")


def test_a_refusal_is_an_input_error_with_exit_65() -> None:
    with pytest.raises(InputError) as caught:
        parse_report(b"[]", "x")
    assert caught.value.exit_code == 65
    assert "$: found an array of 0, expected an object" in str(caught.value)


def test_non_utf8_is_refused_naming_the_byte() -> None:
    data = encode(RFC_EXAMPLE).replace(b"Company-X", b"Company-\xff")
    with pytest.raises(ReportRefused, match=r"not UTF-8 \(byte 0xff at offset 31\)"):
        parse_report(data, "mail 1")


def test_deep_nesting_is_refused_not_a_traceback() -> None:
    with pytest.raises(ReportRefused, match="nested too deeply"):
        parse_report(b"[" * 200_000 + b"]" * 200_000, "POST")


def test_a_duplicated_key_is_refused() -> None:
    with pytest.raises(ReportRefused, match="the key 'report-id' appears twice"):
        parse_report(b'{"report-id": "a", "report-id": "b"}', "POST")


@pytest.mark.parametrize("text", [b'{"a": NaN}', b'{"a": 1' + b"0" * 5000 + b"}", b"{not json"])
def test_numbers_no_report_holds_and_broken_json_are_refused(text: bytes) -> None:
    with pytest.raises(ReportRefused, match=r"^POST: TLS report refused: \$: not JSON"):
        parse_report(text, "POST")


def test_a_100_mb_json_is_refused_by_its_size_before_decoding() -> None:
    huge = b'{"report-id": "' + b"a" * (100 * 1024 * 1024) + b'"}'
    with pytest.raises(ReportRefused, match=f"104,857,617 bytes of JSON, more than the {MAX_JSON_BYTES:,} accepted"):
        parse_report(huge, "POST")


def test_a_gzip_bomb_is_refused_after_inflating_no_more_than_the_cap() -> None:
    bomb = gzip_bomb(4)
    assert len(bomb) < 5 * 1024 * 1024
    with pytest.raises(ReportRefused, match=r"inflates to more than 20,971,520 bytes .*refused without inflating"):
        inflate(bomb, "POST")


def test_a_gzip_of_a_100_mb_json_is_refused_like_a_bomb() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = compressor.compress(b'{"report-id": "') + b"".join(
        compressor.compress(b"a" * 1024 * 1024) for _ in range(100)) + compressor.flush()
    with pytest.raises(ReportRefused, match="inflates to more than"):
        read_body(body, "application/tlsrpt+gzip", "POST")


def test_an_oversized_compressed_body_is_refused_unread() -> None:
    with pytest.raises(ReportRefused, match="6,291,456 compressed bytes, more than the 5,242,880 accepted"):
        inflate(b"\x1f\x8b" + b"\0" * (6 * 1024 * 1024 - 2), "POST")


def test_a_truncated_gzip_is_refused() -> None:
    data = gzipped(RFC_EXAMPLE)
    with pytest.raises(ReportRefused, match="truncated gzip"):
        inflate(data[: len(data) // 2], "mail 3, part 2")


@pytest.mark.parametrize(("data", "problem"), [
    (b"not gzip at all", "not a valid gzip stream"),
    (gzip.compress(b"{}") + b"trailing", "8 bytes after the end of the gzip stream"),
])
def test_gzip_that_is_not_one_clean_stream_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ReportRefused, match=problem):
        inflate(data, "POST")


def test_a_wrong_media_type_is_refused() -> None:
    with pytest.raises(ReportRefused, match="media type 'text/plain', expected application/tlsrpt"):
        read_body(b"{}", "text/plain", "POST")


def test_a_report_mail_yields_its_report_gzip_or_json() -> None:
    for media_type in ("application/tlsrpt+gzip", "application/tlsrpt+json"):
        intake = read_mail(report_mail(RFC_EXAMPLE, media_type=media_type), "mail 7")
        assert [r.report_id for r in intake.reports] == [RFC_EXAMPLE["report-id"]]
        assert intake.refused == ()


def test_a_mail_with_1000_attachments_is_refused_whole() -> None:
    mail = report_mail(report("many"), attachments=1000)
    intake = read_mail(mail, "mail 9")
    assert intake.reports == ()
    (refusal,) = intake.refused
    assert str(refusal) == (f"mail 9: TLS report refused: more than {MAX_PARTS} MIME parts; a report mail has a "
                            "few: nothing in it imported")


def test_one_bad_part_does_not_hide_the_good_one() -> None:
    good = report_mail(report("good"))
    bad_body = gzipped(report("bad"))[:40]
    mail = good.replace(b"--certkeeper-report-boundary--", b"--certkeeper-report-boundary\r\n"
                        b"Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                        + __import__("base64").encodebytes(bad_body) + b"\r\n--certkeeper-report-boundary--")
    intake = read_mail(mail.replace(b"\r\n", b"\n"), "mail 2")
    assert [r.report_id for r in intake.reports] == ["good"]
    assert [str(r) for r in intake.refused] == [
        "mail 2, part 3 (application/tlsrpt+gzip): TLS report refused: truncated gzip: the stream ends after 40 "
        "bytes without its trailer"]


def test_a_mail_without_a_report_part_is_refused() -> None:
    intake = read_mail(b"From: a@b\nSubject: hello\n\nnot a report\n", "mail 4")
    assert [str(r) for r in intake.refused] == [
        "mail 4: TLS report refused: no application/tlsrpt+gzip or application/tlsrpt+json part: not a TLS "
        "report mail"]


def test_an_oversized_mail_is_refused_before_parsing() -> None:
    intake = read_mail(b"x" * (11 * 1024 * 1024), "mail 5")
    assert "a mail of 11,534,336 bytes, more than the 10,485,760 accepted" in str(intake.refused[0])


def test_multipart_nested_past_the_parser_is_refused() -> None:
    body = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(3000))
    intake = read_mail(b"From: a@b\nContent-Type: multipart/mixed; boundary=b0\n\n" + body, "mail 8")
    assert [str(r) for r in intake.refused] == [
        "mail 8: TLS report refused: multipart nested too deeply to parse: not a report mail, nothing in it imported"]


def test_multipart_nested_a_little_too_deep_is_refused() -> None:
    body = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(12))
    intake = read_mail(b"From: a@b\nContent-Type: multipart/mixed; boundary=b0\n\n" + body, "mail 8")
    assert "multipart nested more than 8 deep" in str(intake.refused[0])


def test_contact_info_may_be_missing() -> None:
    document = json.loads(json.dumps(RFC_EXAMPLE))
    del document["contact-info"]
    assert parse_document(document, "POST").contact_info == ""
