"""MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): the policy senders enforce against our MX certificates.

- :mod:`~certkeeper.mtasts.policy`   pure: policy text and TXT records parsed, rendered, ids, section 4.1 matching
- :mod:`~certkeeper.mtasts.rollout`  pure: widen first, wait ``max_age``, then narrow
"""
