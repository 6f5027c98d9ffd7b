"""``[tlsrpt]``: the documented keys parse; every mistake is located."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from certkeeper.config import ImapMailbox, load_config, parse_imap_url
from certkeeper.errors import ConfigError
from tests.test_config import EXAMPLE, MINIMAL


def test_the_reference_config_documents_tlsrpt() -> None:
    tlsrpt = load_config(EXAMPLE).tlsrpt
    assert tlsrpt is not None
    assert tlsrpt.imap == ImapMailbox("reports", "mail.example.org", 993, "INBOX")
    assert tlsrpt.password_file == Path("/etc/certkeeper/tlsrpt-imap.pass")
    assert tlsrpt.delete_after_import is False
    assert tlsrpt.listen == ("127.0.0.1", 8444)
    assert (tlsrpt.certificate, tlsrpt.alert_threshold, tlsrpt.fetch_interval) == ("mail", 10, timedelta(minutes=15))


@pytest.mark.parametrize(("table", "message"), [
    ('imap = "imap://reports@mail.example.org/INBOX"\npassword_file = "/p"',
     r"tlsrpt\.imap: found 'imap://reports@mail\.example\.org/INBOX', expected an imaps:// URL"),
    ('imap = "imaps://reports:secret@mail.example.org/INBOX"\npassword_file = "/p"',
     r"tlsrpt\.imap: found .*, expected a URL without a password"),
    ('imap = "imaps://reports@mail.example.org/INBOX"', r"tlsrpt\.password_file: found nothing"),
    ('imap = "imaps://r@m/INBOX"\npassword_file = "/p"\npassword = "x"',
     r"tlsrpt\.password: found a password in the configuration file"),
    ('listen = "127.0.0.1:8444"', r"tlsrpt\.certificate: found nothing, expected the managed certificate"),
    ('listen = "127.0.0.1:8444"\ncertificate = "mial"', r"tlsrpt\.certificate: found 'mial'.*did you mean \"mail\""),
    ('listen = "8444"\ncertificate = "mail"', r"tlsrpt\.listen: found '8444', expected host:port"),
    ('imap = "imaps://r@m/INBOX"\npassword_file = "/p"\nalert_threshold = 0',
     r"tlsrpt\.alert_threshold: found 0, expected a whole number of at least 1"),
    ('delete_after_import = true', r"tlsrpt\.imap: found neither imap nor listen"),
    ('imap = "imaps://r@m/INBOX"\npassword_file = "/p"\ndelete_after_imports = true',
     r"tlsrpt\.delete_after_imports.*did you mean \"delete_after_import\""),
])
def test_each_tlsrpt_mistake_is_located(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "certkeeper.toml"
    path.write_text(textwrap.dedent(MINIMAL) + "\n[tlsrpt]\n" + table + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_imap_url_keeps_port_and_mailbox() -> None:
    assert parse_imap_url("imaps://tls%2Breports@127.0.0.1:10993/Reports%20TLS") == ImapMailbox(
        "tls+reports", "127.0.0.1", 10993, "Reports TLS")


def test_config_check_shows_the_resolved_tlsrpt_settings() -> None:
    from certkeeper.cli.config_cmd import describe_config

    shown = describe_config(load_config(EXAMPLE))["tlsrpt"]
    assert shown["imap"] == "imaps://reports@mail.example.org/INBOX"
    assert shown["listen"] == ["127.0.0.1", 8444]
    assert shown["password_file"] == "/etc/certkeeper/tlsrpt-imap.pass"  # the file's name, never its content


def test_the_config_schema_lists_every_tlsrpt_key() -> None:
    from certkeeper.config.schema import json_schema

    tlsrpt = json_schema()["properties"]["tlsrpt"]
    assert sorted(tlsrpt["properties"]) == ["alert_threshold", "ca_file", "certificate", "delete_after_import",
                                            "fetch_interval", "imap", "listen", "password_file"]
    assert tlsrpt["additionalProperties"] is False
