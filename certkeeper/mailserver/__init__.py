"""The local mail daemons: what Postfix, Dovecot and Exim are configured to do (:mod:`.config`), the files they
load (:mod:`.tlsfiles`), the TLS rules and fixes (:mod:`.rules`), ``doctor`` (:mod:`.doctor`) and ``setup``
(:mod:`.setup`)."""
