"""Changing a domain's ``mx`` set without breaking delivery: widen first, wait, then narrow.

Senders cache a policy for its ``max_age`` (RFC 8461 section 5.1).  Adding a pattern is safe at once: a sender
with the old policy cached still accepts every host it accepted before.  Dropping one is not: a sender holding
the new, narrower policy refuses an MX host the old one allowed, while senders with the old one cached still
send there.  So a change that drops patterns is published in two steps: the union (old patterns plus the new
ones, with a new id) now, and the wanted, narrower policy only after the union has been published for
``narrow_after`` (default: the policy's ``max_age``), when no sender can still hold a policy without the new
patterns.

Pure: the published state and ``now`` come in, the policy to publish goes out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from certkeeper.mtasts.policy import Policy, policy_diff
from certkeeper.values import frozen, replace


@frozen
class Publication:
    """What is published for a domain: the policy, since when this text, and since when this ``mx`` set."""

    policy: Policy
    since: datetime
    mx_since: datetime


@frozen
class PublishDecision:
    """The policy to publish now and why; ``narrow_at`` is when a pending narrowing becomes due (else None)."""

    policy: Policy
    reason: str
    narrow_at: datetime | None = None

    @property
    def pending(self) -> bool:
        return self.narrow_at is not None


def decide_publication(current: Publication | None, wanted: Policy, now: datetime, *,
                       narrow_after: timedelta | None = None) -> PublishDecision:
    """What to publish in this pass, given what is published (``current``) and what the configuration wants."""
    if current is None:
        return PublishDecision(wanted, "first publication")
    added, dropped = policy_diff(current.policy.mx, wanted.mx)
    if not dropped:
        if wanted == current.policy:
            return PublishDecision(wanted, "unchanged")
        return PublishDecision(wanted, "widened" if added else "changed (mode, max_age or extensions)")
    if wanted.mode == "none" or not wanted.mx:
        # "none" tells senders to stop enforcing; it is safe at once (RFC 8461 section 5, "Removing MTA-STS").
        return PublishDecision(wanted, "mode none")
    wait = narrow_after if narrow_after is not None else timedelta(seconds=current.policy.max_age)
    if added:
        union = replace(wanted, mx=current.policy.mx + added)
        return PublishDecision(union, f"widened first, to narrow after {wait} ({', '.join(dropped)} dropped then)",
                               narrow_at=now + wait)
    narrow_at = current.mx_since + wait
    if now >= narrow_at:
        return PublishDecision(wanted, f"narrowed ({', '.join(dropped)} dropped)")
    # Keep the published mx set; mode, max_age and extensions may still change.
    return PublishDecision(replace(wanted, mx=current.policy.mx),
                           f"narrowing ({', '.join(dropped)}) waits until senders' cached policies expired",
                           narrow_at=narrow_at)


def next_publication(current: Publication | None, decision: PublishDecision, now: datetime) -> Publication:
    """The published state after ``decision`` was carried out at ``now``."""
    if current is None:
        return Publication(decision.policy, now, now)
    if decision.policy == current.policy:
        return current
    mx_since = current.mx_since if decision.policy.mx == current.policy.mx else now
    return Publication(decision.policy, now, mx_since)
