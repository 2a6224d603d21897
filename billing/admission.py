"""Admission and settlement: the one place a request is let in against its key's limits.

`admit` takes the request's worst case (images and micro-USD) through the key's rate limits
(requests and images per minute, counting every image it may produce) and then holds it on
every budget in scope: a 429 or a 402 before anything goes upstream. `settle` turns the hold
into what the call produced, never more than was held, so no budget is ever passed and the
usage record says exactly what the budgets were charged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from billing import budgets, ratelimit
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admission:
    hold: budgets.Hold
    headers: dict[str, str]  # the rate-limit headers every answer carries


@dataclass(frozen=True)
class Charge:
    images: int
    cost_micro: int


def admit(
    *,
    principal: KeyPrincipal,
    request_id: str,
    images: int,
    cost_micro: int,
    unpriced_call: bool = False,
) -> Admission:
    """Rate limits, then budget holds; raises RateLimited (429) or InsufficientQuota (402).

    An `unpriced_call` (a passthrough call on a native route that makes no images) still
    holds 1 µUSD and 1 image, so a budget already used up refuses it too."""
    headers = ratelimit.enforce(
        key_id=principal.key_id,
        rpm=principal.rpm_limit,
        ipm=principal.ipm_limit,
        images=images,
    )
    floor = 1 if unpriced_call else 0
    hold = budgets.reserve(
        principal=principal,
        request_id=request_id,
        amount_micro=max(cost_micro, floor),
        images=max(images, floor),
    )
    return Admission(hold=hold, headers=headers)


def charge_within(hold: budgets.Hold, *, images: int, cost_micro: int) -> Charge:
    """What may be charged: what was produced, capped at the hold (the estimate was the worst
    case, so a cap here is an estimation bug, logged, never a budget overrun)."""
    if hold.empty:
        return Charge(images=images, cost_micro=cost_micro)
    held_micro = min(h.amount_micro for h in hold.holds)
    held_images = min(h.images for h in hold.holds)
    if cost_micro > held_micro or images > held_images:
        logger.warning(
            "request produced %s images / %s µUSD, above its hold of %s / %s; charged the hold",
            images,
            cost_micro,
            held_images,
            held_micro,
        )
    return Charge(images=min(images, held_images), cost_micro=min(cost_micro, held_micro))


def settle(admission: Admission, *, images: int, cost_micro: int) -> Charge:
    """Charge what the call produced (0 and 0 release the hold). Never raises: a hold that
    cannot be settled now is released by the reaper, and the answer still goes out."""
    charge = charge_within(admission.hold, images=images, cost_micro=cost_micro)
    try:
        budgets.settle(admission.hold, cost_micro=charge.cost_micro, images=charge.images)
    except Exception:
        logger.exception("could not settle a budget hold")
    return charge
