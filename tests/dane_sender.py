"""A DANE sender's view, sampled again and again: ``python -m tests.dane_sender RESOLVER NAME PORT OUT STOP``.

Each sample is what a sending MTA does for one delivery (RFC 7672 section 2.2): look up the TLSA RRset of
``NAME`` through the validating ``RESOLVER`` (RD and AD set), then open a new SMTP connection to 127.0.0.1:PORT,
STARTTLS, and note the SPKI SHA-256 of the leaf presented.  One JSON line per sample goes to ``OUT``; the loop
ends when the file ``STOP`` exists.  Several of these run at once during a rollover test, each a process of its
own, so handshakes overlap Postfix's reloads as real senders' do.
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import ssl
import sys
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def look_up(resolver: str, name: str) -> dict[str, object]:
    host, port = resolver.rsplit(":", 1)
    query = dns.message.make_query(name, dns.rdatatype.TLSA)
    query.flags |= dns.flags.AD
    try:
        reply = dns.query.udp(query, host, port=int(port), timeout=3)
    except (dns.exception.DNSException, OSError) as exc:
        return {"rcode": f"error: {exc}", "ad": False, "records": []}
    records = [r.cert.hex() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.TLSA for r in rrset
               if r.usage == 3 and r.selector == 1 and r.mtype == 1]
    return {"rcode": dns.rcode.to_text(reply.rcode()), "ad": bool(reply.flags & dns.flags.AD), "records": records}


def served_spki(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the TLSA record is the judge here, not a CA
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=context)
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def main(resolver: str, name: str, port: str, out: str, stop: str) -> int:
    with Path(out).open("a") as samples:
        while not Path(stop).exists():
            opened = time.time()
            lookup = look_up(resolver, name)
            try:
                served = served_spki(int(port))
                error = ""
            except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                served, error = "", f"{type(exc).__name__}: {exc}"
            samples.write(json.dumps({"opened": opened, **lookup, "served": served, "error": error}) + "\n")
            samples.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
