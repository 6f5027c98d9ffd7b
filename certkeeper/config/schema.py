"""The configuration's JSON Schema (``certkeeper config schema``), read off the parser itself.

The parser notes every key it asks for (:class:`certkeeper.config.table.Table` with ``keys``); parsing
:data:`SAMPLE`, which has one table of every kind, therefore lists every key certkeeper accepts, with its type,
and the schema can never drift from the code.  Editors use it for completion and validation of
``certkeeper.toml`` (TOML language servers read JSON Schema).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from certkeeper.config.load import parse_config

# One table of every kind the parser has (both issuer types, a certificate with DANE and copies, a watch entry,
# an MTA-STS domain, TLS reports), so that every getter runs.  The values only need to parse.
SAMPLE = """
[certkeeper]
state_dir = "/var/lib/certkeeper"
[alerts]
to = ["postmaster@example.org"]
from = "certkeeper@example.org"
[issuers.acme]
type = "acme"
directory = "https://acme.example.org/directory"
[issuers.ca]
type = "ca"
ca_dir = "/var/lib/certkeeper/ca"
[certificates.mail]
issuer = "acme"
domains = ["mail.example.org"]
copy_to = { combined = "/etc/postfix/mail.pem" }
dane = { tlsa = ["3 1 1"] }
[[watch]]
endpoints = ["smtps://mail.example.org:465"]
[mta_sts."example.org"]
webroot = "/var/www/mta-sts"
[tlsrpt]
imap = "imaps://reports@mail.example.org/INBOX"
password_file = "/etc/certkeeper/tlsrpt-imap.pass"
listen = "127.0.0.1:8444"
certificate = "mail"
"""


def accepted_keys() -> dict[str, dict[str, Any]]:
    """Every key the parser accepts, as ``pattern -> JSON Schema fragment`` (``certificates.*.reload``)."""
    keys: dict[str, dict[str, Any]] = {}
    parse_config(tomllib.loads(SAMPLE), Path("sample.toml"), keys=keys)
    return keys


def json_schema() -> dict[str, Any]:
    """The schema (draft 2020-12) of ``certkeeper.toml``: unknown keys are errors, as ``config check`` says."""
    root: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                            "title": "certkeeper configuration", "type": "object", "properties": {},
                            "additionalProperties": False}
    for pattern, fragment in sorted(accepted_keys().items()):
        node = root
        parts = pattern.split(".")
        for part in parts[:-1]:
            node = _descend(node, part)
        leaf = parts[-1]
        name = leaf.removesuffix("[]")
        existing = node.setdefault("properties", {}).get(name)
        node["properties"][name] = {**fragment, **(existing or {})}
        node.setdefault("additionalProperties", False)
    return root


def _descend(node: dict[str, Any], part: str) -> dict[str, Any]:
    if part == "*":  # a named table: issuers.NAME, certificates.NAME
        child = node.get("additionalProperties")
        if not isinstance(child, dict):
            child = node["additionalProperties"] = {"type": "object"}
        return child
    name = part.removesuffix("[]")
    holder: dict[str, Any] = node.setdefault("properties", {}).setdefault(
        name, {"type": "array" if part.endswith("[]") else "object"})
    if part.endswith("[]"):
        items: dict[str, Any] = holder.setdefault("items", {"type": "object", "additionalProperties": False})
        return items
    return holder
