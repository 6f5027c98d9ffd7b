"""``python -m certkeeper``: the same as the ``certkeeper`` command."""

from certkeeper.cli import run

run()
