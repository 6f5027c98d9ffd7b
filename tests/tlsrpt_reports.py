"""TLS reports for the tests: RFC 8460's example, variants for every result type, and mails carrying them."""

from __future__ import annotations

import copy
import gzip
import json
import zlib
from email.message import EmailMessage
from typing import Any

from certkeeper.tlsrpt.report import RESULT_TYPES

# RFC 8460 section 4.8 (the example report), as published.
RFC_EXAMPLE: dict[str, Any] = {
    "organization-name": "Company-X",
    "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
    "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "policies": [{
        "policy": {
            "policy-type": "sts",
            "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"],
            "policy-domain": "company-y.example",
            "mx-host": "*.mail.company-y.example",
        },
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [{
            "result-type": "certificate-expired",
            "sending-mta-ip": "2001:db8:abcd:0012::1",
            "receiving-mx-hostname": "mx1.mail.company-y.example",
            "failed-session-count": 100,
        }, {
            "result-type": "starttls-not-supported",
            "sending-mta-ip": "2001:db8:abcd:0013::1",
            "receiving-mx-hostname": "mx2.mail.company-y.example",
            "receiving-ip": "203.0.113.56",
            "failed-session-count": 200,
            "additional-information": "https://reports.company-x.example/report_info?id=5065427c-23d3#StarttlsNotSupported",
        }, {
            "result-type": "validation-failure",
            "sending-mta-ip": "198.51.100.62",
            "receiving-ip": "203.0.113.58",
            "receiving-mx-hostname": "mx-backup.mail.company-y.example",
            "failed-session-count": 3,
            "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED",
        }],
    }],
}


def report(report_id: str, *, organization: str = "Company-X", domain: str = "example.test",
           mx: str = "mail.example.test", result: str = "certificate-expired", failed: int = 10,
           succeeded: int = 90, start: str = "2026-12-01T00:00:00Z", end: str = "2026-12-01T23:59:59Z",
           policy_type: str = "sts") -> dict[str, Any]:
    """A report of one policy with one kind of failure against one MX."""
    document = copy.deepcopy(RFC_EXAMPLE)
    document.update({"organization-name": organization, "report-id": report_id,
                     "date-range": {"start-datetime": start, "end-datetime": end},
                     "contact-info": f"tlsrpt@{organization.lower()}.example"})
    document["policies"] = [{
        "policy": {"policy-type": policy_type, "policy-domain": domain,
                   "policy-string": ["version: STSv1", "mode: enforce", f"mx: {mx}", "max_age: 86400"],
                   "mx-host": [mx]},
        "summary": {"total-successful-session-count": succeeded, "total-failure-session-count": failed},
        "failure-details": [{"result-type": result, "sending-mta-ip": "192.0.2.1",
                             "receiving-mx-hostname": mx, "receiving-ip": "127.0.0.1",
                             "failed-session-count": failed}] if failed else [],
    }]
    return document


def every_result_type() -> list[dict[str, Any]]:
    return [report(f"variant-{result}", result=result, policy_type="tlsa" if result.startswith(("tlsa", "dnssec",
                   "dane")) else "sts") for result in RESULT_TYPES]


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def gzipped(document: dict[str, Any]) -> bytes:
    return gzip.compress(encode(document))


def report_mail(document: dict[str, Any] | None, *, sender: str = "tlsrpt@company-x.example",
                to: str = "alice@example.test", body: bytes | None = None,
                media_type: str = "application/tlsrpt+gzip", attachments: int = 1) -> bytes:
    """A report mail as RFC 8460 section 5.3 describes (multipart/report; report-type="tlsrpt")."""
    message = EmailMessage()
    report_id = document["report-id"] if document else "none"
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Report Domain: example.test Submitter: company-x.example Report-ID: <{report_id}>"
    message["TLS-Report-Domain"] = "example.test"
    message["TLS-Report-Submitter"] = "company-x.example"
    message.set_content("This is an aggregate TLS report from company-x.example")
    if body is None and document is not None:
        body = gzipped(document) if media_type.endswith("gzip") else encode(document)
    maintype, subtype = media_type.split("/")
    for index in range(attachments):
        message.add_attachment(body or b"", maintype=maintype, subtype=subtype,
                               filename=f"company-x.example!example.test!1480550400!1480636799!{index}.json.gz")
    message.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"')
    message.set_boundary("certkeeper-report-boundary")
    return message.as_bytes()


def gzip_bomb(gibibytes: int) -> bytes:
    """gzip of ``gibibytes`` GiB of zeros, built in milliseconds: after a full flush every 1 MiB of zeros compresses
    to the same bytes, so one block is repeated (the trailer's CRC is left zero: nothing reads that far)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = compressor.compress(b"\0" * (1024 * 1024)) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(b"\0" * (1024 * 1024)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    return head + block * (1024 * gibibytes - 2) + tail[:-8] + b"\0" * 8
