"""Reading one TOML table of the configuration: typed getters that record located errors.

Each getter marks its key as seen and, on a wrong value, records a :class:`ConfigError` naming the file, the
key path (``certificates.mail.issuer``), what was found and what was expected, then returns the default, so
that every mistake in a file is reported in one go.  :meth:`Table.finish` turns the keys nobody asked for into
"unknown key" errors with a "did you mean".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from certkeeper.errors import ConfigError
from certkeeper.model import MAX_NAME_LENGTH, format_duration, is_safe_name, parse_duration
from certkeeper.targets import Target, parse_target


def did_you_mean(word: str, candidates: Iterator[str] | Mapping[str, Any] | tuple[str, ...]) -> str:
    import difflib  # only for a configuration with a mistake in it

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else ""


T = TypeVar("T")

#: The largest whole number any key takes unless it says less: what SQLite, struct and timedelta all hold.
MAX_INTEGER = 2**31 - 1
#: The most days a key counted in days takes (ten years): ``timedelta(days=...)`` and dates stay in range.
MAX_DAYS = 3660
#: A DNS TTL is an unsigned 32-bit field whose top bit must be zero (RFC 2181 section 8).
MAX_TTL = 2**31 - 1

# Schema fragments of the commonest getters (copied by _get when noted): built once, not per key read.
_STRING_LIST: Mapping[str, Any] = {"type": "array", "items": {"type": "string"}}
_OBJECT: Mapping[str, Any] = {"type": "object"}


class Table:
    """One TOML table being read: typed getters that record located errors, and unknown-key detection."""

    def __init__(self, data: Mapping[str, Any], key_path: str, file: Path, errors: list[ConfigError], *,
                 keys: dict[str, dict[str, Any]] | None = None, pattern: str | None = None) -> None:
        self.data = data
        self.key_path = key_path
        self.file = file
        self.errors = errors
        self.seen: set[str] = set()
        # ``keys``: when given, every key asked for is noted there as a JSON Schema fragment, under its pattern
        # (``certificates.*.reload``, ``watch[].endpoints``): what ``config schema`` prints.
        self.keys = keys
        self.pattern = key_path if pattern is None else pattern

    def _child(self, data: Mapping[str, Any], key_path: str, pattern: str) -> Table:
        return Table(data, key_path, self.file, self.errors, keys=self.keys, pattern=pattern)

    def _pattern(self, key: str) -> str:
        return f"{self.pattern}.{key}" if self.pattern else key

    def where(self, key: str) -> str:
        return f"{self.key_path}.{key}" if self.key_path else key

    def error(self, key: str, found: str, expected: str, hint: str = "") -> None:
        self.errors.append(ConfigError(self.file, self.where(key), found, expected, hint))

    def _get(self, key: str, kind: Mapping[str, Any] | None = None) -> Any:
        self.seen.add(key)
        if self.keys is not None:
            self.keys.setdefault(self._pattern(key), copy.deepcopy(dict(kind or {})))  # fragments may be shared
        return self.data.get(key)

    def _typed(self, key: str, kind: type | tuple[type, ...], expected: str, default: Any) -> Any:
        if self.keys is None:  # no schema noted: nothing to describe (a pass reads 14 keys of 1,000 tables)
            self.seen.add(key)
            value = self.data.get(key)
        else:
            value = self._get(key, {"type": {str: "string", bool: "boolean", int: "integer"}.get(kind, "string")}
                              if isinstance(kind, type) else {})
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, describe(value), expected)
            return default
        return value

    def string(self, key: str, default: str | None) -> str | None:
        value: str | None = self._typed(key, str, "a string", default)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._typed(key, bool, "true or false", default)
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int = MAX_INTEGER) -> int:
        value: int = self._typed(key, int, "a whole number", default)
        if minimum is not None and value < minimum:
            self.error(key, str(value), f"a whole number of at least {minimum}")
            return default
        if value > maximum:
            self.error(key, str(value), f"a whole number from {minimum} to {maximum}" if minimum is not None
                       else f"a whole number of at most {maximum}")
            return default
        return value

    def port(self, key: str, default: int) -> int:
        value = self.integer(key, default)
        if not 0 < value < 65536:
            self.error(key, str(value), "a TCP port from 1 to 65535")
            return default
        return value

    def path(self, key: str, default: Path | None) -> Path | None:
        value = self.string(key, None)
        return Path(value) if value else default

    def absolute_path(self, key: str, default: Path | None) -> Path | None:
        """A folder or secret file certkeeper trusts: never "" (which read as unset) nor relative to the cwd."""
        value = self.string(key, None)
        if value is None:
            return default
        if not value.startswith("/"):
            self.error(key, f'"{value}", a relative path' if value else "an empty string",
                       'an absolute path, starting with "/"')
            return default
        return Path(value)

    def existing_file(self, key: str, default: Path | None) -> Path | None:
        path = self.path(key, default)
        if path is not None and path != default and not path.is_file():
            self.error(key, f'"{path}", which does not exist or is not a file', "an existing file")
        return path

    def url(self, key: str, default: str | None, *, required: bool = False, https_only: bool = False) -> str | None:
        """A URL; ``https_only`` for one certkeeper signs requests to (an ACME directory: RFC 8555 section 6.1),
        otherwise http:// too (a CRL distribution point, signed data fetched over plain HTTP by design)."""
        value = self.string(key, default)
        if value is None:
            if required:
                self.error(key, "nothing", "an https:// URL")
            return None
        if not value.startswith(("https://",) if https_only else ("https://", "http://")):
            self.error(key, repr(value), "an https:// URL")
        return value

    def duration(self, key: str, default: Any, *, minimum: timedelta | None = None) -> Any:
        value = self.parsed(key, parse_duration, default, 'a duration such as "90s", "15m", "12h" or "30d"')
        if minimum is not None and value is not None and value < minimum:
            self.error(key, format_duration(value), f"at least {format_duration(minimum)}")
            return default
        return value

    def seconds(self, key: str, default: int, *, maximum: int) -> int:
        """Whole seconds, written as a number or as a duration such as ``"7d"`` (MTA-STS ``max_age``)."""
        value = self._get(key, {"type": ["integer", "string"]})
        if value is None:
            return default
        seconds: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str):
            try:
                seconds = int(parse_duration(value).total_seconds())
            except ValueError:
                seconds = None
        if seconds is None or not 0 <= seconds <= maximum:
            self.error(key, describe(value), f'seconds from 0 to {maximum}, or a duration such as "7d"')
            return default
        return seconds

    def choice(self, key: str, choices: tuple[str, ...], default: str | None) -> Any:
        value = self._get(key, {"enum": list(choices)})
        if value is None:
            if default is None:
                self.error(key, "nothing", "one of " + ", ".join(f'"{c}"' for c in choices))
            return default
        if value not in choices:
            self.error(key, describe(value), "one of " + ", ".join(f'"{c}"' for c in choices),
                       did_you_mean(str(value), choices))
            return default
        return value

    def parsed(self, key: str, parse: Callable[[str], T], default: Any, expected: str) -> Any:
        value = self._get(key, {"type": "string", "description": expected})
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, describe(value), expected)
            return default
        try:
            return parse(value)
        except ValueError:
            self.error(key, repr(value), expected)
            return default

    def string_list(self, key: str, default: Any) -> list[str] | None:
        value = self._get(key, _STRING_LIST)
        if value is None:
            return list(default) if default is not None else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, describe(value), "a list of strings")
            return list(default) if default is not None else None
        return value

    def string_or_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
        if isinstance(value, str):
            return (value,)
        return tuple(self.string_list(key, default) or ())

    def string_table(self, key: str) -> dict[str, str]:
        """A table of string values, such as ``hook_env = { POSTFIX_CONFIG_DIR = "/etc/postfix-out" }``."""
        table = self.optional_table(key)
        if table is None:
            return {}
        result = {}
        for name, value in table.data.items():
            table.seen.add(name)
            if not isinstance(value, str):
                table.error(name, describe(value), "a string")
            elif not name.replace("_", "").isalnum() or not name.isascii():
                table.error(name, repr(name), "an environment variable name (letters, digits, _)")
            else:
                result[name] = value
        return result

    def int_list(self, key: str, default: Any, *, maximum: int, expected: str = "") -> list[int]:
        value = self._get(key, {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": maximum}})
        if value is None:
            return list(default) if default is not None else []
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= maximum for v in value)):
            self.error(key, describe(value), expected or f"a list of whole numbers from 1 to {maximum}")
            return list(default) if default is not None else []
        return value

    def parsed_list(self, key: str, parse: Callable[[str], T], default: tuple[T, ...], expected: str) -> list[T]:
        items = self.string_list(key, None)
        if items is None:
            return list(default)
        if not items:
            self.error(key, "an empty list", expected)
            return list(default)
        result: list[T] = []
        for i, item in enumerate(items):
            try:
                result.append(parse(item))
            except ValueError:
                self.error(f"{key}[{i}]", repr(item), expected)
        return result or list(default)

    def hook_list(self, key: str) -> tuple[str, ...]:
        hooks = self.string_list(key, ()) or []
        for i, hook in enumerate(hooks):
            if "/" in hook and not hook.startswith("/"):
                self.error(f"{key}[{i}]", repr(hook), "a hook name from hooks/ (postfix, dovecot, ...) or an "
                           "absolute path")
            elif "/" not in hook and not is_safe_name(hook):
                self.error(f"{key}[{i}]", repr(hook), "a hook name made of letters, digits, '.', '_' and '-'")
        return tuple(hooks)

    def target_list(self, key: str) -> tuple[Target, ...]:
        targets: list[Target] = []
        for i, text in enumerate(self.string_list(key, ()) or []):
            try:
                targets.append(parse_target(text))
            except ValueError as exc:
                self.error(f"{key}[{i}]", repr(text), "an endpoint such as smtps://mail.example.org:465", str(exc))
        return tuple(targets)

    def table(self, key: str) -> Table:
        """A table that may be empty: ``[certkeeper]`` with every key defaulted is fine."""
        return self.optional_table(key) or self._child({}, self.where(key), self._pattern(key))

    def optional_table(self, key: str) -> Table | None:
        value = self._get(key, _OBJECT)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(key, describe(value), "a table")
            return None
        return self._child(value, self.where(key), self._pattern(key))

    def named_tables(self, key: str) -> Iterator[tuple[str, Table]]:
        group = self.optional_table(key)
        if group is None:
            return
        for name, value in group.data.items():
            group.seen.add(name)
            if not is_safe_name(name):
                group.error(name, repr(name), f"a name of at most {MAX_NAME_LENGTH} letters, digits, '.', '_' "
                            "and '-' (not . or ..)", "names become directory names")
                continue
            if not isinstance(value, dict):
                group.error(name, describe(value), "a table")
                continue
            yield name, self._child(value, group.where(name), f"{group.pattern}.*")

    def array_of_tables(self, key: str) -> Iterator[Table]:
        value = self._get(key, {"type": "array"})
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(key, describe(value), f"[[{key}]] tables")
            return
        for i, item in enumerate(value):
            yield self._child(item, f"{self.where(key)}[{i}]", f"{self._pattern(key)}[]")

    def finish(self, *, ignore_unknown: bool = False) -> None:
        if ignore_unknown:
            return
        for key in self.data:
            if key not in self.seen:
                self.error(key, "an unknown key", "one of " + ", ".join(sorted(self.seen)) if self.seen
                           else "no keys here", did_you_mean(key, tuple(self.seen)))



def describe(value: Any) -> str:
    kind = {str: "string", int: "number", float: "number", bool: "boolean", list: "list", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}" if not isinstance(value, dict) else "a table"
