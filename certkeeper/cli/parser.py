"""The parser of every command, built with argparse: what ``certkeeper --help`` shows and what each command
accepts.

Each command lives in a module of this package exposing ``ORDER`` (its place in ``--help``) and
``register(subparsers, common)``, which adds its parser (with ``parents=[common]``, so ``-c`` and ``-v`` work
after the command name too) and sets ``handler``.  Modules are found by listing the package, and they import
heavy libraries (acme, the probe, the daemon) inside their handlers, so ``certkeeper renew`` with nothing due
starts fast.  The plain line of ``check`` and ``renew`` does not come here at all (:mod:`certkeeper.cli.quick`: what
monitoring systems and cron run; argparse, its parsers and gettext are 5 ms of a 40 ms check).
"""

from __future__ import annotations

import argparse
import importlib

# argparse's messages go through gettext, which imports locale on first use: imported with the parser instead,
# so that a process importing certkeeper before it drops privileges has it (tests/test_packaging.py; cryptography
# used to bring it in, through email and calendar).
import locale  # noqa: F401
import os
import sys
from collections.abc import Sequence

from certkeeper.errors import EX_USAGE

_PACKAGE = __name__.rpartition(".")[0]  # certkeeper.cli: the commands' modules

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Literal, NoReturn

DESCRIPTION = """\
certkeeper keeps the TLS certificates of mail servers valid, installed and served.

It watches what SMTP, submission, IMAP, POP3 and ManageSieve endpoints really serve, renews through ACME or its
own internal CA, installs each new key pair atomically, reloads Postfix and Dovecot, verifies from the outside
that the new certificate is served (rolling back if not), and alerts by email before anything expires.
"""

EPILOG = """\
configuration: -c PATH, else $CERTKEEPER_CONFIG, else /etc/certkeeper/certkeeper.toml
exit status: 0 ok; 1 a renewal, hook or verification failed; 64 usage; 65 bad input file;
             69 CA, relay or report mailbox unavailable; 74 state store error; 75 lock busy; 77 an unsafe path
             (state_dir, copy_to, hook or secret file others can change); 78 configuration error
             (check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, as monitoring plugins do)
"""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting 64 (EX_USAGE) instead of 2, or a command's own ``usage_status``.

    ``certkeeper check`` sets 3: monitoring plugins report invalid arguments as UNKNOWN, and 2 means CRITICAL.
    """

    usage_status = EX_USAGE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", PlainHelpFormatter)  # commands' parsers too (add_parser builds these)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(self.usage_status)


class _TerminalWidth(argparse.HelpFormatter):
    """argparse's formatter, reading the terminal width as :func:`shutil.get_terminal_size` does without importing
    shutil (and the compression modules it loads): argparse builds a formatter for every ``add_argument``, so every
    command would pay for it, ``certkeeper check`` under Nagios and ``renew`` from cron included."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class PlainHelpFormatter(_TerminalWidth):
    """The default: descriptions and help re-wrapped to the terminal."""


class HelpFormatter(_TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written (their lists and exit-status tables); help re-wrapped."""


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Version(argparse.Action):
    """``--version``, reading the package metadata only when asked (see ``certkeeper.__getattr__``)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import certkeeper

        print(f"certkeeper {certkeeper.__version__}")
        parser.exit()


def absolute_path(text: str) -> Path:
    """An argument naming a file or folder, made absolute: the mail tools certkeeper runs start in ``/``, where a
    relative ``--postfix-config pf`` would name another folder."""
    from pathlib import Path  # not with the CLI: one check never needs pathlib (issue 23)

    return Path(text).absolute()


_MAIL_CONFIG_METAVARS = {"postfix": "DIR", "dovecot": "FILE", "exim": "FILE"}


def add_mail_config_argument(parser: argparse.ArgumentParser, daemon: Literal["postfix", "dovecot", "exim"],
                             help: str) -> None:
    """``--postfix-config DIR``, ``--dovecot-config FILE`` or ``--exim-config FILE``, read with
    :func:`absolute_path`, as doctor and setup take them.  One option a call: each command keeps its own help
    and its own order."""
    parser.add_argument(f"--{daemon}-config", metavar=_MAIL_CONFIG_METAVARS[daemon], type=absolute_path, help=help)


def build_parser(command: str | None = None) -> Parser:
    """The parser with every command, or with just ``command`` when its module is known by name.

    A command lives in ``<command>.py`` or ``<command>_cmd.py``; parsing ``certkeeper renew`` then imports one
    command module instead of all of them (a cron job that finds nothing due should cost next to nothing).
    """
    parser = Parser(
        prog="certkeeper", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("-c", "--config", metavar="PATH", help="configuration file (TOML)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="configuration file (TOML)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    names = _command_modules(command)
    modules = []
    for name in names:
        module = importlib.import_module(f"{_PACKAGE}.{name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(subparsers, common)
    return parser


def _command_modules(command: str | None) -> list[str]:
    """The module holding ``command`` when there is one (imported by its name, listing nothing), else all.

    Imported rather than looked up with ``importlib.util.find_spec``: the parser imports it next anyway, and
    every command would import ``importlib.util`` for this alone.
    """
    if command is not None and command.isidentifier():
        for name in (command, f"{command}_cmd"):
            try:
                module = importlib.import_module(f"{_PACKAGE}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{_PACKAGE}.{name}":  # the module exists, and something it imports does not
                    raise
                continue
            if hasattr(module, "register"):  # not a helper module (parser, context): a command's
                return [name]
    import pkgutil

    return [info.name for info in pkgutil.iter_modules(sys.modules[_PACKAGE].__path__)]


def command_word(argv: Sequence[str]) -> str | None:
    """The command named on the line (``renew`` in ``-c x.toml renew --quiet``), or None for help/version."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif word in ("-h", "--help", "--version"):
            return None
        elif not word.startswith("-"):
            return word
    return None


