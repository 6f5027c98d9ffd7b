"""The plain line of the commands that run unattended, read without argparse: ``check`` (a monitoring system
starts one process per endpoint) and ``renew`` (cron, every few hours).  argparse with gettext and locale and
the command's parser were 5 ms of a 42 ms check.

A command opts in with a module-level ``QUICK`` (a :class:`QuickLine`).  :func:`read_line` takes only the forms
those callers write: whole option names, ``--option value`` or ``--option=value``, ``-v``/``-vv``, ``-c PATH``
before or after the command, the positional arguments in one run.  For anything else (help, a prefix of an
option, a value that is not one, a usage error, another command) it returns None and argparse reads the line
and words it.  Where it answers, its namespace is the one argparse gives: ``tests/test_quick_line.py`` holds
both readers to that over thousands of lines.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, TypeAlias

    # An option taking a value: (dest, conversion, the values allowed or None).
    Option: TypeAlias = tuple[str, Callable[[str], object], tuple[str, ...] | None]
    # What a command's handler is given: argparse's namespace, or read_line's.
    Arguments: TypeAlias = argparse.Namespace | SimpleNamespace

# The commands that have a QUICK, by module: importing any other command's module to look would cost what
# argparse costs.
COMMANDS = {"check": "certkeeper.cli.check", "renew": "certkeeper.cli.renew"}


@frozen
class QuickLine:
    """One command's options as its argparse parser declares them (each by its whole name).

    ``valued``: option -> ``Option``, a dest whose default is a list collecting every value given
    (``action="append"``).  ``flags``: option -> dest, set True.  ``positional``: the dest of the command's
    ``nargs="*"`` argument.  ``exclusive``: dests argparse refuses together.  ``defaults``: every dest and its
    default, which the command's ``register`` also sets on its parser (one list for both).
    """

    positional: str
    valued: Mapping[str, Option]
    flags: Mapping[str, str]
    defaults: Callable[[], dict[str, Any]]
    exclusive: tuple[tuple[str, str], ...] = ()

    def read(self, words: Sequence[str], *, config: str | None = None, verbose: int = 0) -> dict[str, Any] | None:
        """The command's namespace for the ``words`` after its name (the common ``-c``/``-v`` given before the
        name passed in), or None where argparse must read the line."""
        values = {**self.defaults(), "config": config, "verbose": verbose}
        positionals: list[str] = values[self.positional]
        sub_verbose = 0
        ended = False
        line = iter(words)
        for word in line:
            if word and not word.startswith("-"):
                if ended:  # a second run: argparse's "unrecognized arguments"
                    return None
                positionals.append(word)
                continue
            ended = bool(positionals)  # an option after the run of positional arguments ends it
            if word in self.flags:
                values[self.flags[word]] = True
                continue
            count = _verbosity(word)
            if count:
                sub_verbose += count  # after the command's name it replaces the count before it, as in argparse
                values["verbose"] = sub_verbose
                continue
            taken = _value(word, line, self.valued, _CONFIG)
            if taken is None:
                return None
            dest, value = taken
            if isinstance(values[dest], list):
                values[dest].append(value)
            else:
                values[dest] = value
        if any(values[a] not in (None, False) and values[b] not in (None, False) for a, b in self.exclusive):
            return None  # argparse's "not allowed with"
        return values


_CONFIG: Mapping[str, Option] = {"-c": ("config", str, None), "--config": ("config", str, None)}


def _verbosity(word: str) -> int:
    if word == "--verbose":
        return 1
    return len(word) - 1 if word[:2] == "-v" and word.strip("v") == "-" else 0


def _value(word: str, line: Iterator[str], *tables: Mapping[str, Option]) -> tuple[str, Any] | None:
    """(dest, value) of the option ``word`` of one of ``tables`` (its value in it after "=", or the next word), or
    None."""
    name, equals, value = word.partition("=")
    option = next((table[name] for table in tables if name in table), None)
    if option is None or (equals and not name.startswith("--")):
        return None
    if not equals:
        value = next(line, "")
        if not value or value.startswith("-"):
            return None
    dest, convert, allowed = option
    if allowed is not None and value not in allowed:
        return None
    try:
        return dest, convert(value)
    except ValueError:
        return None


def read_line(arguments: Sequence[str]) -> SimpleNamespace | None:
    """The namespace of a whole command line, for the commands in :data:`COMMANDS`; None: argparse's turn."""
    config: str | None = None
    verbose = 0
    line = iter(arguments)
    for word in line:
        if not word.startswith("-"):
            break
        count = _verbosity(word)
        if count:
            verbose += count
            continue
        taken = _value(word, line, _CONFIG)
        if taken is None:
            return None
        config = taken[1]
    else:
        return None
    if word not in COMMANDS:
        return None
    quick: QuickLine = importlib.import_module(COMMANDS[word]).QUICK
    values = quick.read(list(line), config=config, verbose=verbose)
    return None if values is None else SimpleNamespace(command=word, **values)
