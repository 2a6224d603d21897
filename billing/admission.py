"""Admission and settlement: the one place a request is let in against its key's limits.

`admit` takes the request's worst case (images and micro-USD) through the key's rate limits
(requests and images per minute, counting every image it may produce) and then holds it on
every budget in scope: a 429 or a 402 before anything goes upstream. `settle` turns the hold
into what the call produced; should that be more than was held, as much as every budget can
still take. No budget is ever passed, and the usage record says exactly what was charged.

A key may also limit each of its end users (the request's `user`): requests per minute, in
the same atomic step as its own rate limits, and images per UTC day, held like a budget and
settled to what was produced. Such a key serves only requests that name their end user.

Costs come in at the provider's price and are charged marked up by the workspace's
`price_multiplier` (1.25 for a reseller's 25%), rounded up to the micro-dollar: the hold and
the charge are what the tenant pays, so budgets count the charged cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from aperture import metrics
from aperture.errors import InvalidRequest
from billing import budgets, ratelimit
from tenants.end_users import end_user_id
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


def marked_up(provider_micro: int, multiplier: Decimal) -> int:
    """What the tenant is charged for a cost at the provider's price: times the workspace's
    multiplier, rounded up to the micro-dollar (no fraction of one is lost to the operator)."""
    if provider_micro <= 0 or multiplier == 1:
        return max(provider_micro, 0)
    numerator, denominator = multiplier.as_integer_ratio()
    return -(-provider_micro * numerator // denominator)


@dataclass(frozen=True)
class Admission:
    hold: budgets.Hold
    headers: dict[str, str]  # the rate-limit headers every answer carries
    user_images: ratelimit.DailyHold | None = None  # the end user's images held today
    multiplier: Decimal = Decimal(1)  # the workspace's markup when admitted, for the settle


@dataclass(frozen=True)
class Charge:
    images: int
    cost_micro: int  # charged: marked up, and within every budget
    provider_cost_micro: int = 0  # what the call cost at the provider's price


def admit(
    *,
    principal: KeyPrincipal,
    request_id: str,
    images: int,
    cost_micro: int,
    unpriced_call: bool = False,
    end_user: str = "",
    held_until: datetime | None = None,
) -> Admission:
    """Rate limits (the key's and its end user's), then holds on the end user's day and on
    every budget; raises InvalidRequest (400: no `user` where the key needs one), RateLimited
    (429) or InsufficientQuota (402). `cost_micro` is the worst case at the provider's
    price; what is held is that marked up.

    An `unpriced_call` (a passthrough call on a native route that makes no images) still
    holds 1 µUSD and 1 image, so a budget already used up refuses it too."""
    require_end_user(principal, end_user)
    per_user = _limits_end_users(principal)
    user_id = end_user_id(principal.workspace_id, end_user) if per_user else ""
    headers = ratelimit.enforce(
        key_id=principal.key_id,
        rpm=principal.rpm_limit,
        ipm=principal.ipm_limit,
        images=images,
        end_user=user_id,
        user_rpm=principal.per_user_rpm,
    )
    user_images = None
    if user_id and principal.per_user_limit_images:
        user_images, day_headers = ratelimit.take_daily(
            key_id=principal.key_id,
            end_user=user_id,
            limit=principal.per_user_limit_images,
            images=images,
        )
        headers = {**headers, **day_headers}
    floor = 1 if unpriced_call else 0
    try:
        hold = budgets.reserve(
            principal=principal,
            request_id=request_id,
            amount_micro=max(marked_up(cost_micro, principal.price_multiplier), floor),
            images=max(images, floor),
            held_until=held_until,
        )
    except BaseException:
        ratelimit.settle_daily(user_images, images=0)  # refused: the end user's day is as it was
        raise
    if not hold.empty:
        metrics.hold_taken()
    return Admission(
        hold=hold,
        headers=headers,
        user_images=user_images,
        multiplier=principal.price_multiplier,
    )


def cover(admission: Admission, *, images: int, cost_micro: int) -> Admission:
    """The admission, its hold grown to cover a worst case (at the provider's price) that
    rose since it was let in (an async job, run later); InsufficientQuota (402) if a budget
    cannot take the difference."""
    holds = admission.hold.holds
    if not holds:
        return admission
    needed = marked_up(cost_micro, admission.multiplier)
    extra_micro = needed - min(h.amount_micro for h in holds)
    extra_images = images - min(h.images for h in holds)
    if extra_micro <= 0 and extra_images <= 0:
        return admission
    hold = budgets.enlarge(admission.hold, amount_micro=extra_micro, images=extra_images)
    return replace(admission, hold=hold)


def dump(admission: Admission) -> dict[str, Any]:
    """An admission as JSON, to be settled by another process (an async job's worker)."""
    user = admission.user_images
    return {
        "holds": [
            [h.reservation_id, h.budget_id, h.amount_micro, h.images, h.period_start.isoformat()]
            for h in admission.hold.holds
        ],
        "headers": admission.headers,
        "user_images": [user.counter, user.images] if user is not None else None,
        "multiplier": str(admission.multiplier),
    }


def load(data: dict[str, Any]) -> Admission:
    """The admission `dump` wrote."""
    holds = tuple(
        budgets.Held(int(r), int(b), int(a), int(i), datetime.fromisoformat(start))
        for r, b, a, i, start in data.get("holds", [])
    )
    user = data.get("user_images")
    return Admission(
        hold=budgets.Hold(holds),
        headers=dict(data.get("headers") or {}),
        user_images=ratelimit.DailyHold(str(user[0]), int(user[1])) if user else None,
        multiplier=Decimal(str(data.get("multiplier", "1"))),
    )


def _limits_end_users(principal: KeyPrincipal) -> bool:
    return bool(principal.per_user_rpm or principal.per_user_limit_images)


def require_end_user(principal: KeyPrincipal, end_user: str) -> None:
    """A key that limits each end user serves only requests that say who that is (a
    passthrough call, whose body the gateway does not read, never does)."""
    if _limits_end_users(principal) and not end_user:
        raise InvalidRequest(
            "This API key limits each end user: send your end user's id as 'user'.",
            param="user",
            code="user_required",
        )


def settle(admission: Admission, *, images: int, cost_micro: int) -> Charge:
    """Charge what the call produced (0 and 0 release the hold), `cost_micro` at the
    provider's price marked up, never past a budget: the charge is what every budget in scope
    took, and what the usage record says. Never raises: a hold that cannot be settled now is
    released by the reaper, and the answer still goes out (its record then says what was
    produced)."""
    if not admission.hold.empty:
        metrics.hold_settled()  # settled now, or released by the reaper: no longer in flight
    provider_cost = max(cost_micro, 0)
    cost_micro = marked_up(provider_cost, admission.multiplier)
    try:
        cost_micro, images = budgets.settle(admission.hold, cost_micro=cost_micro, images=images)
    except Exception:
        logger.exception("could not settle a budget hold")
    ratelimit.settle_daily(admission.user_images, images=images)  # never raises
    return Charge(images=images, cost_micro=cost_micro, provider_cost_micro=provider_cost)
