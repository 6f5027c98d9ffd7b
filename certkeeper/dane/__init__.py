"""DANE for SMTP (RFC 7672): TLSA records (:mod:`.records`, pure), their publication (:mod:`.publish`), the key
rollover (:mod:`.rollover`), the one TLSA judge (:mod:`.judge`) and the per-pass observation (:mod:`.observe`)."""
