"""``python -m certkeeper``: the same as the ``certkeeper`` command."""

import sys

from certkeeper.cli import main

sys.exit(main())
