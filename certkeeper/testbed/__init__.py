"""Real servers on loopback for the test suite and for ``certkeeper demo``.

Each server (:mod:`.pebble`, :mod:`.bind`, :mod:`.postfix`, :mod:`.dovecot`, :mod:`.exim`, :mod:`.smtp_sink`,
:mod:`.nginx`) runs without systemd, on 127.0.0.1, on ports picked at start, out of a private directory
that also holds its logs, so several test runs can share one machine. Servers that senders reach on a
well-known port (an MX on 25, an MTA-STS policy host on 443) get a 127.x.y.z address of their own
instead (:func:`.server.allocate_address`), which the test bed's BIND points their names at. :mod:`.certs` makes the
throwaway certificates they start with, and :mod:`.install` puts the Debian packages in place.

Nothing is imported here on purpose: ``python3 -m certkeeper.testbed.install`` runs on a bare
system Python (stdlib only), before the virtualenv with ``cryptography`` exists.
"""
