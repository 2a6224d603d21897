"""Admission and settlement: the one place a request is let in against its key's limits.

`admit` takes the request's worst case (images and micro-USD) through the key's rate limits
(requests and images per minute, counting every image it may produce) and then holds it on
every budget in scope: a 429 or a 402 before anything goes upstream. `settle` turns the hold
into what the call produced; should that be more than was held, as much as every budget can
still take. No budget is ever passed, and the usage record says exactly what was charged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aperture import metrics
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
    if not hold.empty:
        metrics.hold_taken()
    return Admission(hold=hold, headers=headers)


def settle(admission: Admission, *, images: int, cost_micro: int) -> Charge:
    """Charge what the call produced (0 and 0 release the hold), never past a budget: the
    charge is what every budget in scope took, and what the usage record says. Never raises:
    a hold that cannot be settled now is released by the reaper, and the answer still goes
    out (its record then says what was produced)."""
    if not admission.hold.empty:
        metrics.hold_settled()  # settled now, or released by the reaper: no longer in flight
    try:
        cost_micro, images = budgets.settle(admission.hold, cost_micro=cost_micro, images=images)
    except Exception:
        logger.exception("could not settle a budget hold")
    return Charge(images=images, cost_micro=cost_micro)
