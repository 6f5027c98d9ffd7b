"""The command line.  Errors become exit codes here, and only here.

:func:`main` parses the line (:mod:`certkeeper.cli.parser`, or for the plain line of ``check`` and ``renew``
:mod:`certkeeper.cli.quick`, without argparse) and runs the command's handler with a
:class:`~certkeeper.cli.context.Context`, which loads the configuration and the store on first use.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from certkeeper.cli.context import Context
from certkeeper.errors import EX_SOFTWARE, EX_USAGE, CertkeeperError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from typing import NoReturn

    from certkeeper.cli.quick import Arguments


def configure_logging(verbose: int) -> None:
    """Log records to stderr, WARNING and up (-v INFO, -vv DEBUG); once per process (later calls change nothing)."""
    import logging

    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    from certkeeper.cli.quick import read_line

    args: Arguments | None = read_line(arguments)
    if args is None:
        from certkeeper.cli.parser import build_parser, command_word

        parser = build_parser(command_word(arguments))
        args, extras = parser.parse_known_args(arguments)
        if extras:
            print(f"certkeeper: error: unrecognized arguments: {' '.join(extras)}", file=sys.stderr)
            status: int = getattr(args, "usage_status", EX_USAGE)  # check's own, set with its defaults
            return status
        if not getattr(args, "handler", None):
            parser.print_help()
            return 0
    if not getattr(args, "own_logging", False):  # check sets it up only when it runs the full engine
        configure_logging(args.verbose)
    context = Context(config_path=args.config)
    try:
        result: int = args.handler(args, context)
    except CertkeeperError as exc:
        print(f"certkeeper: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("certkeeper: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # an internal failure: say so plainly, with the traceback for a bug report
        import logging

        configure_logging(args.verbose)
        logging.getLogger("certkeeper").exception("internal error (please report it with this traceback)")
        return EX_SOFTWARE
    else:
        return result
    finally:
        context.close()


def run() -> NoReturn:
    """The process: ``certkeeper`` and ``python -m certkeeper`` (:func:`main` is for callers in Python).

    Two settings of the cyclic garbage collector, for a process that makes most of its objects once (the imports,
    the configuration) and keeps them to the end (issue 23; mypy does the same):
    - a young-generation collection every 100,000 allocations instead of 700: a ``renew`` ordering one
      certificate ran about 80 collections, mostly over objects the imports had just made;
    - before the interpreter tears itself down, every object is taken out of the collector's reach
      (``gc.freeze``): the collections of the teardown walked every object the libraries made (cryptography,
      requests, the acme library), a fifth of that renew's CPU.
    Nothing else changes: cycles are still collected while the command runs (the daemon included), atexit
    handlers run and files are flushed and closed as before; at the end, reference cycles are left to the
    operating system, which is about to reclaim the whole process.
    """
    gc.set_threshold(100_000, 10, 10)
    status = main()
    gc.freeze()
    sys.exit(status)
