"""Issuers: where certificates come from.  One protocol (:mod:`certkeeper.issuers.base`), two implementations."""
