"""Exact budgets under concurrency: reserve before the upstream call, settle after.

Each budget in scope (workspace, team, key) takes the request's estimated maximum with one
conditional UPDATE — admitted only if used + reserved + estimate stays within the limit —
inside one short transaction with no network wait, so a refusal on any budget undoes the
others. A new period resets the counters in that same UPDATE. Settlement turns the hold
into the actual cost; a failed call releases it. CheckConstraints back every write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Least
from django.utils import timezone

from aperture.errors import InsufficientQuota
from billing.models import LIFETIME_START, Budget, Reservation
from routing import route_cache
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetRef:
    id: int
    scope: str
    period: str


@dataclass(frozen=True)
class Held:
    reservation_id: int
    budget_id: int
    amount_micro: int
    images: int
    period_start: datetime


@dataclass(frozen=True)
class Hold:
    holds: tuple[Held, ...]

    @property
    def empty(self) -> bool:
        return not self.holds


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if period == Budget.Period.DAY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.MONTH:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return LIFETIME_START


def period_end(period: str, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if period == Budget.Period.DAY:
        return start + timedelta(days=1)
    if period == Budget.Period.MONTH:
        return (start + timedelta(days=32)).replace(day=1)
    return None


def budgets_in_scope(principal: KeyPrincipal) -> list[BudgetRef]:
    """The budgets a request of this key counts against, in a fixed (deadlock-free) order."""

    def load() -> list[BudgetRef]:
        rows = (
            Budget.objects.filter(workspace_id=principal.workspace_id)
            .filter(
                Q(scope=Budget.Scope.WORKSPACE)
                | Q(scope=Budget.Scope.TEAM, team_id=principal.team_id)
                | Q(scope=Budget.Scope.KEY, key_id=principal.key_id)
            )
            .order_by("id")
            .values_list("id", "scope", "period")
        )
        return [BudgetRef(*row) for row in rows]

    return route_cache.cached(("budgets", principal.key_id), load)


def _refusal(ref: BudgetRef, now: datetime) -> InsufficientQuota:
    end = period_end(ref.period, now)
    when = f"it resets at {end.isoformat().replace('+00:00', 'Z')}" if end else "it does not reset"
    return InsufficientQuota(
        f"This request would exceed the {ref.scope}'s {ref.period} budget; {when}.",
        code="insufficient_quota",
    )


def _admit(ref: BudgetRef, start: datetime, amount: int, images: int) -> int:
    """One conditional UPDATE: roll the period over if needed and hold amount and images."""
    current = Q(period_start=start)
    used = Case(When(current, then=F("used_micro")), default=Value(0))
    reserved = Case(When(current, then=F("reserved_micro")), default=Value(0))
    used_images = Case(When(current, then=F("used_images")), default=Value(0))
    reserved_images = Case(When(current, then=F("reserved_images")), default=Value(0))
    return (
        Budget.objects.filter(pk=ref.id, period_start__lte=start)
        .filter(Q(limit_micro__isnull=True) | Q(limit_micro__gte=used + reserved + amount))
        .filter(
            Q(limit_images__isnull=True)
            | Q(limit_images__gte=used_images + reserved_images + images)
        )
        .update(
            used_micro=used,
            reserved_micro=reserved + amount,
            used_images=used_images,
            reserved_images=reserved_images + images,
            period_start=start,
        )
    )


def reserve(*, principal: KeyPrincipal, request_id: str, amount_micro: int, images: int) -> Hold:
    """Hold the estimate on every budget in scope, or raise InsufficientQuota (402)."""
    refs = budgets_in_scope(principal)
    if not refs:
        return Hold(())
    now = timezone.now()
    with transaction.atomic():
        starts = []
        for ref in refs:
            start = period_start(ref.period, now)
            if not _admit(ref, start, amount_micro, images):
                raise _refusal(ref, now)
            starts.append(start)
        reservations = Reservation.objects.bulk_create(
            Reservation(
                budget_id=ref.id,
                request_id=request_id,
                amount_micro=amount_micro,
                images=images,
                period_start=start,
                created_at=now,
            )
            for ref, start in zip(refs, starts, strict=True)
        )
    return Hold(
        tuple(Held(r.pk, r.budget_id, amount_micro, images, r.period_start) for r in reservations)
    )


def _delete_reservations(ids: list[int]) -> set[int]:
    """Delete these reservations; the ids that were still there (the reaper may have won)."""
    if not ids:
        return set()
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM billing_reservation WHERE id IN ({placeholders}) RETURNING id",  # noqa: S608
            ids,
        )
        return {row[0] for row in cursor.fetchall()}


def _apply(held: Held, *, released: bool, cost_micro: int, images: int) -> None:
    """Release the hold (if still held) and add what was really spent, within the limit."""
    freed_micro = held.amount_micro if released else 0
    freed_images = held.images if released else 0
    headroom = F("limit_micro") - F("used_micro") - F("reserved_micro") + freed_micro
    image_headroom = F("limit_images") - F("used_images") - F("reserved_images") + freed_images
    Budget.objects.filter(pk=held.budget_id, period_start=held.period_start).update(
        reserved_micro=F("reserved_micro") - freed_micro,
        reserved_images=F("reserved_images") - freed_images,
        used_micro=F("used_micro")
        + Case(
            When(limit_micro__isnull=True, then=Value(cost_micro)),
            default=Least(Value(cost_micro), headroom),
        ),
        used_images=F("used_images")
        + Case(
            When(limit_images__isnull=True, then=Value(images)),
            default=Least(Value(images), image_headroom),
        ),
    )


def settle(hold: Hold, *, cost_micro: int, images: int) -> None:
    """Turn the hold into the actual spend (0 and 0 release it)."""
    if hold.empty:
        return
    for held in hold.holds:
        if cost_micro > held.amount_micro or images > held.images:
            logger.warning(
                "request cost %s µUSD / %s images above its estimate %s / %s; capped at the limit",
                cost_micro,
                images,
                held.amount_micro,
                held.images,
            )
    with transaction.atomic():
        still_held = _delete_reservations([h.reservation_id for h in hold.holds])
        for held in hold.holds:
            _apply(
                held,
                released=held.reservation_id in still_held,
                cost_micro=cost_micro,
                images=images,
            )


def release(hold: Hold) -> None:
    settle(hold, cost_micro=0, images=0)


def reap_orphaned_reservations(*, older_than: timedelta) -> int:
    """Release holds left by crashed workers; returns how many were released."""
    cutoff = timezone.now() - older_than
    released = 0
    while True:
        batch = list(Reservation.objects.filter(created_at__lt=cutoff).order_by("id")[:500])
        if not batch:
            return released
        with transaction.atomic():
            still_held = _delete_reservations([r.pk for r in batch])
            for r in batch:
                if r.pk in still_held:
                    held = Held(r.pk, r.budget_id, r.amount_micro, r.images, r.period_start)
                    _apply(held, released=True, cost_micro=0, images=0)
                    released += 1
