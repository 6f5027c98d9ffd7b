"""Real servers on loopback for the test suite and for ``certkeeper demo``.

Each server (:mod:`.pebble`, :mod:`.bind`, :mod:`.postfix`, :mod:`.dovecot`, :mod:`.exim`, :mod:`.smtp_sink`)
runs without systemd, on 127.0.0.1, on ports picked at start, out of a private directory that
also holds its logs, so several test runs can share one machine. :mod:`.certs` makes the
throwaway certificates they start with, and :mod:`.install` puts the Debian packages in place.

Nothing is imported here on purpose: ``python3 -m certkeeper.testbed.install`` runs on a bare
system Python (stdlib only), before the virtualenv with ``cryptography`` exists.
"""
