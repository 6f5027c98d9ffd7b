"""The configuration's keys, three ways in step: what the parser accepts, the JSON Schema, the reference config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from certkeeper.config.schema import accepted_keys, json_schema

REFERENCE = Path(__file__).resolve().parent.parent / "config" / "certkeeper.toml"
_HEADER = re.compile(r"^\s*#?\s*\[\[?\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")


def documented() -> dict[str, list[str]]:
    """top-level table -> the reference config's lines under its sections (commented-out examples included)."""
    sections: dict[str, list[str]] = {}
    current = ""
    lines = REFERENCE.read_text().splitlines()
    for number, line in enumerate(lines):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).split(".")[0]
            continue
        previous = lines[number - 1].strip() if number else ""
        sections.setdefault(current, []).append(f"{previous}\n{line}")
    return sections


def is_documented(pattern: str, sections: dict[str, list[str]]) -> bool:
    top = pattern.split(".", maxsplit=1)[0].removesuffix("[]")
    name = pattern.rsplit(".", maxsplit=1)[-1].removesuffix("[]")
    assignment = re.compile(rf"(^|[{{,#]|\s){re.escape(name)}\s*=")
    for text in sections.get(top, []):
        previous, line = text.split("\n", 1)
        if not assignment.search(line):
            continue
        body = line.lstrip().removeprefix("#")
        has_comment = "#" in body or previous.startswith("#")
        if has_comment:
            return True
    return False


def test_every_key_the_parser_accepts_is_in_the_reference_config_with_a_comment() -> None:
    sections = documented()
    leaves = [p for p, kind in accepted_keys().items() if kind.get("type") != "object" or p.count(".") > 1]
    missing = sorted(p for p in leaves if "." in p and not is_documented(p, sections))
    assert not missing, f"document these in {REFERENCE} (a line `key = ...` with a comment): {missing}"


def test_the_reference_config_is_valid_against_the_schema_and_an_unknown_key_is_not() -> None:
    schema = json_schema()
    reference = tomllib.loads(REFERENCE.read_text())
    jsonschema.validate(reference, schema)
    reference["certificates"]["mail"]["relaod"] = ["postfix"]
    with pytest.raises(jsonschema.ValidationError, match="relaod"):
        jsonschema.validate(reference, schema)


def test_config_schema_prints_the_schema() -> None:
    done = subprocess.run([sys.executable, "-m", "certkeeper", "config", "schema"], capture_output=True, text=True,
                          check=True)
    printed = json.loads(done.stdout)
    assert printed == json_schema()
    properties = printed["properties"]["certificates"]["additionalProperties"]["properties"]
    assert properties["reload"] == {"type": "array", "items": {"type": "string"}}
    assert printed["properties"]["alerts"]["properties"]["digest"] == {"enum": ["immediate", "daily"]}
