"""TLS reporting (RFC 8460): what sending servers say about our certificates, set against what certkeeper did.

``report`` parses (pure), ``intake`` unwraps gzip and mail bounded (pure), ``imap`` and ``http`` bring reports in
(the only imaplib user; the POST endpoint), ``correlate`` sets failures against certkeeper's history (pure),
``summary`` counts sessions for the command line and the metrics.
"""
