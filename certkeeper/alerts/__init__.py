"""Alerts: which events owe a mail (:mod:`.rules`, pure), the queue and digests (:mod:`.notifier`), the relay
(:mod:`.relay`)."""
