"""Exact budgets under concurrency: hold before the upstream call, settle after.

Each budget in scope (workspace, team, key) holds the request's estimated maximum, all or
none. A busy budget holds it in this process's slice of the budget, in memory
(billing/leases.py, docs/budget-slices.md); otherwise (the last part of a budget, an async
job's hold) with one conditional UPDATE on the budget's row — admitted only if used +
reserved + estimate stays within the limit — and a hold row, in one short transaction with
no network wait. A new period resets the counters in that same UPDATE. Settlement turns the
hold into the actual cost; a failed call releases it. CheckConstraints back every write.
The settling statements return each budget's new counters, from which its spend alerts are
checked without another query (billing/alerts.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from aperture import config_cache
from aperture.errors import InsufficientQuota
from billing import alerts, leases
from billing.models import LIFETIME_START, Budget, Reservation
from tenants.key_auth import KeyPrincipal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetRef:
    id: int
    scope: str
    period: str
    limit_micro: int | None = None
    limit_images: int | None = None

    @property
    def limits(self) -> leases.Limits:
        return self.limit_micro, self.limit_images


@dataclass(frozen=True)
class Held:
    reservation_id: int
    budget_id: int
    amount_micro: int
    images: int
    period_start: datetime
    lease_id: int = 0  # held in this process's slice of the budget (billing/leases.py)

    @property
    def taken(self) -> leases.Taken:
        return leases.Taken(self.lease_id, self.amount_micro, self.images)


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
            .values_list("id", "scope", "period", "limit_micro", "limit_images")
        )
        return [BudgetRef(*row) for row in rows]

    return config_cache.cached(("budgets", principal.key_id), load)


def _refusal(ref: BudgetRef, now: datetime) -> InsufficientQuota:
    end = period_end(ref.period, now)
    when = f"it resets at {end.isoformat().replace('+00:00', 'Z')}" if end else "it does not reset"
    return InsufficientQuota(
        f"This request would exceed the {ref.scope}'s {ref.period} budget; {when}.",
        code="insufficient_quota",
    )


# Hand-written SQL: these run several times per request, and the ORM spends more time
# compiling the equivalent CASE expressions than the database spends running them.
_ADMIT = """
UPDATE billing_budget SET
    used_micro = CASE WHEN period_start = %(start)s THEN used_micro ELSE 0 END,
    reserved_micro =
        CASE WHEN period_start = %(start)s THEN reserved_micro ELSE 0 END + %(amount)s,
    used_images = CASE WHEN period_start = %(start)s THEN used_images ELSE 0 END,
    reserved_images =
        CASE WHEN period_start = %(start)s THEN reserved_images ELSE 0 END + %(images)s,
    period_start = %(start)s
WHERE id = %(id)s
  AND period_start <= %(start)s
  AND (limit_micro IS NULL OR limit_micro >= %(amount)s
       + CASE WHEN period_start = %(start)s THEN used_micro + reserved_micro ELSE 0 END)
  AND (limit_images IS NULL OR limit_images >= %(images)s
       + CASE WHEN period_start = %(start)s THEN used_images + reserved_images ELSE 0 END)
"""

_HOLD = """
INSERT INTO billing_reservation
    (budget_id, request_id, amount_micro, images, period_start, created_at, held_until)
VALUES (%(budget)s, %(request)s, %(amount)s, %(images)s, %(start)s, %(now)s, %(until)s)
RETURNING id
"""

# Release the hold (if still held) and add what was spent, never beyond the limit.
_SETTLE = """
UPDATE billing_budget SET
    reserved_micro = reserved_micro - %(freed)s,
    reserved_images = reserved_images - %(freed_images)s,
    used_micro = used_micro + CASE
        WHEN limit_micro IS NULL
          OR %(cost)s <= limit_micro - used_micro - reserved_micro + %(freed)s THEN %(cost)s
        ELSE limit_micro - used_micro - reserved_micro + %(freed)s END,
    used_images = used_images + CASE
        WHEN limit_images IS NULL
          OR %(images)s <= limit_images - used_images - reserved_images + %(freed_images)s
        THEN %(images)s
        ELSE limit_images - used_images - reserved_images + %(freed_images)s END
WHERE id = %(id)s AND period_start = %(start)s
RETURNING id, public_id, workspace_id, used_micro, used_images, limit_micro, limit_images,
    alert_thresholds
"""


def _db_datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _admit(ref: BudgetRef, start: datetime, amount: int, images: int) -> int:
    """One conditional UPDATE: roll the period over if needed and hold amount and images."""
    with connection.cursor() as cursor:
        cursor.execute(
            _ADMIT,
            {"id": ref.id, "start": _db_datetime(start), "amount": amount, "images": images},
        )
        return int(cursor.rowcount)


class _Refused(Exception):
    def __init__(self, ref: BudgetRef) -> None:
        self.ref = ref


def reserve(
    *,
    principal: KeyPrincipal,
    request_id: str,
    amount_micro: int,
    images: int,
    held_until: datetime | None = None,
) -> Hold:
    """Hold the estimate on every budget in scope, or raise InsufficientQuota (402). A
    request's hold is taken from this process's slice of each budget where it has one
    (billing/leases.py), else held on the budget's row and reaped after
    RESERVATION_TTL_SECONDS; one `held_until` a moment (an async job's, settled by another
    process) is always held on the row, and reaped after that moment.

    A budget that refuses while slices of it are out is reclaimed from their holders: the
    request waits up to BUDGET_RECLAIM_WAIT_SECONDS for room before it is refused."""
    refs = budgets_in_scope(principal)
    if not refs:
        return Hold(())
    sliced = held_until is None and settings.BUDGET_LEASES
    now = timezone.now()
    try:
        return _reserve(refs, now, request_id, amount_micro, images, held_until, sliced)
    except _Refused as refused:
        if leases.reclaim(refused.ref.id):  # other processes' slices of it are out
            leases.wait_until_returned(refused.ref.id)
    now = timezone.now()  # one last try, with whatever came back
    try:
        return _reserve(refs, now, request_id, amount_micro, images, held_until, sliced)
    except _Refused as refused:
        raise _refusal(refused.ref, now) from None


def _reserve(
    refs: list[BudgetRef],
    now: datetime,
    request_id: str,
    amount_micro: int,
    images: int,
    held_until: datetime | None,
    sliced: bool,
) -> Hold:
    """One try of `reserve`: raises _Refused, having held nothing."""
    taken: list[Held] = []
    on_rows: list[tuple[BudgetRef, datetime]] = []
    try:
        for ref in refs:
            start = period_start(ref.period, now)
            piece = _from_slice(ref, start, amount_micro, images) if sliced else None
            if piece is None:
                on_rows.append((ref, start))
            else:
                taken.append(Held(0, ref.id, amount_micro, images, start, piece.lease_id))
        held = _hold_on_rows(on_rows, now, request_id, amount_micro, images, held_until)
    except BaseException:
        leases.give_back([h.taken for h in taken])
        raise
    return Hold(tuple(sorted(taken + held, key=lambda h: h.budget_id)))


def _from_slice(ref: BudgetRef, start: datetime, amount: int, images: int) -> leases.Taken | None:
    return leases.take(ref.id, start, ref.limits, amount, images) or leases.acquire(
        ref.id,
        start,
        ref.limits,
        amount,
        images,
        grant=lambda micro, count: bool(_admit(ref, start, micro, count)),
    )


def _hold_on_rows(
    on_rows: list[tuple[BudgetRef, datetime]],
    now: datetime,
    request_id: str,
    amount_micro: int,
    images: int,
    held_until: datetime | None,
) -> list[Held]:
    """The request's hold on each budget's row, all or none (raises _Refused)."""
    if not on_rows:
        return []
    holds = []
    with transaction.atomic():
        for ref, start in on_rows:
            if not _admit(ref, start, amount_micro, images):
                raise _Refused(ref)
        with connection.cursor() as cursor:
            for ref, start in on_rows:
                cursor.execute(
                    _HOLD,
                    {
                        "budget": ref.id,
                        "request": request_id,
                        "amount": amount_micro,
                        "images": images,
                        "start": _db_datetime(start),
                        "now": _db_datetime(now),
                        "until": _db_datetime(held_until) if held_until else None,
                    },
                )
                holds.append(Held(cursor.fetchone()[0], ref.id, amount_micro, images, start))
    return holds


def _delete_reservations(ids: list[int]) -> dict[int, tuple[int, int]]:
    """Delete these reservations; those that were still there (the reaper may have won),
    with what each held as it stood (a job's hold may have grown since it was taken)."""
    if not ids:
        return {}
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM billing_reservation WHERE id IN ({placeholders}) "  # noqa: S608
            "RETURNING id, amount_micro, images",
            ids,
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _apply(held: Held, *, released: bool, cost_micro: int, images: int) -> alerts.Spend | None:
    """Release the hold (if still held) and add what was really spent, within the limit;
    the budget as it then stands (None if a new period began meanwhile)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _SETTLE,
            {
                "id": held.budget_id,
                "start": _db_datetime(held.period_start),
                "freed": held.amount_micro if released else 0,
                "freed_images": held.images if released else 0,
                "cost": cost_micro,
                "images": images,
            },
        )
        row = cursor.fetchone()
    return alerts.Spend.from_row(held.period_start, row) if row else None


def settle(hold: Hold, *, cost_micro: int, images: int) -> tuple[int, int]:
    """Turn the hold into the actual spend (0 and 0 release it). Returns what was charged:
    the spend, or, where it is above a hold, as much of it as every budget can still take,
    so that each budget in scope and the usage record get the same figure."""
    if hold.empty:
        return cost_micro, images
    sliced = [h for h in hold.holds if h.lease_id]
    on_rows = Hold(tuple(h for h in hold.holds if not h.lease_id))
    claim = None
    if sliced:  # taken in the slices at once, capped: their free room is this request's
        claim = leases.claim([h.taken for h in sliced], cost_micro, images)
        cost_micro, images = claim.micro, claim.images
    written = leases.Written()
    try:
        if not on_rows.empty:
            cost_micro, images = _settle_rows(on_rows, cost_micro, images)
    finally:
        if claim is not None:
            written = leases.apply(claim, cost_micro, images)
    spends: list[alerts.Spend | None] = list(written.spends)  # the rows' fire as they settle
    for held in sliced:
        if held.lease_id not in written.found:  # reaped meanwhile: on the row, within its room
            with transaction.atomic():
                cost_micro, images = _within_room(Hold((held,)), set(), cost_micro, images)
                spends.append(_apply(held, released=False, cost_micro=cost_micro, images=images))
    if spends:  # spend alerts: arithmetic on the rows, a query only to fire
        alerts.fire_reached([s for s in spends if s is not None])
    return cost_micro, images


def _settle_rows(hold: Hold, cost_micro: int, images: int) -> tuple[int, int]:
    """Settle the holds on budgets' rows, and fire the alerts their spend reached: the charge."""
    with transaction.atomic():
        rows = _delete_reservations([h.reservation_id for h in hold.holds])
        hold = Hold(  # as each reservation stood when deleted
            tuple(
                replace(h, amount_micro=rows[h.reservation_id][0], images=rows[h.reservation_id][1])
                if h.reservation_id in rows
                else h
                for h in hold.holds
            )
        )
        still_held = set(rows)
        if not all(
            h.reservation_id in still_held and cost_micro <= h.amount_micro and images <= h.images
            for h in hold.holds
        ):
            cost_micro, images = _within_room(hold, still_held, cost_micro, images)
        spends = [
            _apply(
                held,
                released=held.reservation_id in still_held,
                cost_micro=cost_micro,
                images=images,
            )
            for held in hold.holds
        ]
        if cost_micro or images:  # while the rows are locked: the alert records the spend
            alerts.fire_reached([s for s in spends if s is not None])  # that crossed it
    return cost_micro, images


def _within_room(hold: Hold, still_held: set[int], cost_micro: int, images: int) -> tuple[int, int]:
    """The spend capped at what every budget can still take (its rows locked until commit).
    Reached only when a call produced more than was held, or the reaper took its hold."""
    logger.warning(
        "a request spent %s µUSD / %s images, beyond its hold of %s / %s",
        cost_micro,
        images,
        min(h.amount_micro for h in hold.holds),
        min(h.images for h in hold.holds),
    )
    rows = Budget.objects.select_for_update().in_bulk([h.budget_id for h in hold.holds])
    for held in hold.holds:
        row = rows.get(held.budget_id)
        if row is None or row.period_start != held.period_start:
            continue  # a new period began: this call is not charged to it
        released = held.reservation_id in still_held
        if row.limit_micro is not None:
            freed = held.amount_micro if released else 0
            room = row.limit_micro - row.used_micro - row.reserved_micro + freed
            cost_micro = min(cost_micro, max(room, 0))
        if row.limit_images is not None:
            freed = held.images if released else 0
            room = row.limit_images - row.used_images - row.reserved_images + freed
            images = min(images, max(room, 0))
    return cost_micro, images


_ENLARGE = """
UPDATE billing_budget SET
    reserved_micro = reserved_micro + %(amount)s,
    reserved_images = reserved_images + %(images)s
WHERE id = %(id)s AND period_start = %(start)s
    AND (limit_micro IS NULL OR used_micro + reserved_micro + %(amount)s <= limit_micro)
    AND (limit_images IS NULL OR used_images + reserved_images + %(images)s <= limit_images)
"""


def enlarge(hold: Hold, *, amount_micro: int, images: int) -> Hold:
    """Hold `amount_micro` and `images` more on every budget of a hold (an async job whose
    worst case rose since it was let in: a new price, another deployment), or raise
    InsufficientQuota (402) and change nothing. The hold must still be there."""
    if hold.empty or (amount_micro <= 0 and images <= 0):
        return hold
    amount_micro, images = max(amount_micro, 0), max(images, 0)
    grown = []
    with transaction.atomic(), connection.cursor() as cursor:
        for held in hold.holds:
            cursor.execute(
                _ENLARGE,
                {
                    "id": held.budget_id,
                    "start": _db_datetime(held.period_start),
                    "amount": amount_micro,
                    "images": images,
                },
            )
            kept = Reservation.objects.filter(pk=held.reservation_id).update(
                amount_micro=F("amount_micro") + amount_micro, images=F("images") + images
            )
            if not cursor.rowcount or not kept:
                raise InsufficientQuota(
                    "The job's budget cannot cover its cost as it stands now (its price or "
                    "deployment changed since it was submitted)."
                )
            grown.append(
                Held(
                    held.reservation_id,
                    held.budget_id,
                    held.amount_micro + amount_micro,
                    held.images + images,
                    held.period_start,
                )
            )
    return Hold(tuple(grown))


def keep(hold: Hold, *, until: datetime) -> None:
    """Keep a hold from the reaper until `until` (a running job's, as its worker beats)."""
    if not hold.empty:
        Reservation.objects.filter(pk__in=[h.reservation_id for h in hold.holds]).update(
            held_until=until
        )


def release(hold: Hold) -> None:
    settle(hold, cost_micro=0, images=0)


def reap_orphaned_reservations(*, older_than: timedelta) -> int:
    """Release holds left by crashed workers; returns how many were released."""
    now = timezone.now()
    cutoff = now - older_than
    orphaned = Q(held_until__isnull=True, created_at__lt=cutoff) | Q(held_until__lt=now)
    released = 0
    while True:
        batch = list(Reservation.objects.filter(orphaned).order_by("id")[:500])
        if not batch:
            return released
        with transaction.atomic():
            still_held = _delete_reservations([r.pk for r in batch])
            for r in batch:
                if r.pk in still_held:
                    amount, images = still_held[r.pk]
                    held = Held(r.pk, r.budget_id, amount, images, r.period_start)
                    _apply(held, released=True, cost_micro=0, images=0)
                    released += 1
