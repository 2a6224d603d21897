"""Writes for billing configuration: prices and budgets, each audited."""

from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from aperture import config_cache
from aperture.errors import Conflict, InvalidRequest
from billing import alerts, leases
from billing.budgets import period_start
from billing.models import Budget, Price
from billing.selectors import enclosing_budgets
from tenants.audit import audit_record
from tenants.models import ApiKey, Team, Workspace


@transaction.atomic
def price_set(
    *,
    actor: str,
    provider: str,
    model_pattern: str,
    size: str,
    quality: str,
    amounts: dict[str, int | None],
    tier: str = "",
) -> Price:
    price, created = Price.objects.update_or_create(
        provider=provider,
        model_pattern=model_pattern,
        size=size,
        quality=quality,
        tier=tier,
        defaults=amounts,
    )
    audit_record(
        actor=actor,
        event="price.created" if created else "price.updated",
        target=price,
        data={"provider": provider, "model": model_pattern, **amounts},
    )
    return price


@transaction.atomic
def budget_set(
    *,
    actor: str,
    workspace: Workspace,
    team: Team | None,
    key: ApiKey | None,
    period: str,
    limit_micro: int | None,
    limit_images: int | None,
) -> Budget:
    """Create the budget of this target and period, or change its limits (through the
    conditional UPDATE: never below what the current period has spent and holds)."""
    existing = _budgets_of(workspace=workspace, team=team, key=key, period=period).first()
    if existing is not None:
        return budget_change_limits(
            actor=actor,
            budget=existing,
            fields={"limit_micro": limit_micro, "limit_images": limit_images},
            within_enclosing=False,
        )
    return _budget_insert(
        actor=actor,
        workspace=workspace,
        team=team,
        key=key,
        period=period,
        limit_micro=limit_micro,
        limit_images=limit_images,
    )


def _budgets_of(
    *, workspace: Workspace, team: Team | None, key: ApiKey | None, period: str
) -> QuerySet[Budget]:
    """The budget of this target and period, as the unique indexes
    (`budget_one_per_*_period`) know it: a key's whatever its team field says."""
    if key is not None:
        return Budget.objects.filter(workspace=workspace, scope="key", key=key, period=period)
    if team is not None:
        return Budget.objects.filter(workspace=workspace, scope="team", team=team, period=period)
    return Budget.objects.filter(workspace=workspace, scope="workspace", period=period)


def _budget_insert(
    *,
    actor: str,
    workspace: Workspace,
    team: Team | None,
    key: ApiKey | None,
    period: str,
    limit_micro: int | None,
    limit_images: int | None,
) -> Budget:
    budget = Budget.objects.create(
        workspace=workspace,
        team=team,
        key=key,
        scope="key" if key else "team" if team else "workspace",
        period=period,
        limit_micro=limit_micro,
        limit_images=limit_images,
    )
    audit_record(
        actor=actor,
        event="budget.created",
        target=budget,
        workspace=workspace,
        data={"period": period, "limit_micro": limit_micro, "limit_images": limit_images},
    )
    return budget


# --- Team and key budgets set by a tenant (workspace budgets are the operators') ----------


def _fmt_limit(micro: int | None, images: int | None) -> str:
    parts = [f"${Decimal(micro) / 1_000_000:.2f}"] if micro is not None else []
    parts += [f"{images} images"] if images is not None else []
    return " and ".join(parts)


def check_within_enclosing(
    *,
    workspace_id: int,
    team_id: int | None,
    limit_micro: int | None,
    limit_images: int | None,
    exclude_id: int | None = None,
) -> None:
    """400 if a limit is above one of a budget that encloses it (the workspace's; for a key,
    also its team's): a tenant cannot grant more than the operator allowed."""
    for outer in enclosing_budgets(workspace_id, team_id):
        if outer.pk == exclude_id:
            continue
        above_money = (
            limit_micro is not None
            and outer.limit_micro is not None
            and limit_micro > outer.limit_micro
        )
        above_images = (
            limit_images is not None
            and outer.limit_images is not None
            and limit_images > outer.limit_images
        )
        if above_money or above_images:
            raise InvalidRequest(
                f"This limit is above the {outer.scope}'s {outer.period} budget of "
                f"{_fmt_limit(outer.limit_micro, outer.limit_images)}.",
                param="limit_usd" if above_money else "limit_images",
                code="exceeds_enclosing_budget",
            )


def _needs_a_limit(limit_micro: int | None, limit_images: int | None) -> None:
    if limit_micro is None and limit_images is None:
        raise InvalidRequest(
            "A budget needs a limit: limit_usd, limit_images or both.", param="limit_usd"
        )


@transaction.atomic
def budget_create(
    *,
    actor: str,
    workspace: Workspace,
    team: Team | None,
    key: ApiKey | None,
    period: str,
    limit_micro: int | None,
    limit_images: int | None,
) -> Budget:
    """A new team or key budget, refused if that target already has one for the period.

    The check reads first for a clear answer; the database's unique index
    (`budget_one_per_*_period`) settles two creations at once: the second is the same 409.
    """
    _needs_a_limit(limit_micro, limit_images)
    team = None if key else team
    existing = _budgets_of(workspace=workspace, team=team, key=key, period=period)

    def already_exists() -> Conflict:
        return Conflict(
            f"This {('key' if key else 'team')} already has a {period} budget "
            f"({existing.values_list('public_id', flat=True).first()}); change that one.",
            code="budget_exists",
        )

    if existing.exists():
        raise already_exists()
    check_within_enclosing(
        workspace_id=workspace.pk,
        team_id=key.team_id if key else None,
        limit_micro=limit_micro,
        limit_images=limit_images,
    )
    try:
        with transaction.atomic():  # a savepoint: the refused INSERT leaves the rest usable
            return _budget_insert(
                actor=actor,
                workspace=workspace,
                team=team,
                key=key,
                period=period,
                limit_micro=limit_micro,
                limit_images=limit_images,
            )
    except IntegrityError:
        if existing.exists():  # created meanwhile by a concurrent request
            raise already_exists() from None
        raise


def budget_change_limits(
    *,
    actor: str,
    budget: Budget,
    fields: dict[str, int | None],
    within_enclosing: bool = True,
) -> Budget:
    """Set `limit_micro` and/or `limit_images` (None removes that limit); a tenant's change
    stays `within_enclosing` budgets, an operator's need not.

    Gateway processes first give back their slices of the budget (billing/leases.py) so
    that only what requests in flight hold counts against the new limit; a caller inside a
    transaction does that before opening it (`budget_reclaim`), since it waits on
    other processes and they on the budget's row.
    """
    if not connection.in_atomic_block:
        budget_reclaim(budget_id=budget.pk)
    return _change_limits(
        actor=actor, budget=budget, fields=fields, within_enclosing=within_enclosing
    )


def budget_reclaim(*, budget_id: int) -> None:
    """Before a change of the budget's limits, outside any transaction: every gateway
    process gives back its slices of it (billing/leases.py), so that only what requests in
    flight hold counts against the new limit."""
    leases.reclaim_and_wait(budget_id)


@transaction.atomic
def _change_limits(
    *,
    actor: str,
    budget: Budget,
    fields: dict[str, int | None],
    within_enclosing: bool,
) -> Budget:
    """`budget_change_limits` once slices are back.

    One conditional UPDATE: it also starts a new period if the stored one is over, and
    changes nothing if the current period has already spent or holds more than the new
    limit (409), so it can never race a request into overspending. The alert thresholds that
    spend now stands at under the new limits fire at once (a full budget charges no request
    that would fire them); a raised limit does not fire again those fired this period.
    """
    limit_micro = fields.get("limit_micro", budget.limit_micro)
    limit_images = fields.get("limit_images", budget.limit_images)
    _needs_a_limit(limit_micro, limit_images)
    if within_enclosing and budget.scope != Budget.Scope.WORKSPACE:
        check_within_enclosing(
            workspace_id=budget.workspace_id,
            team_id=budget.key.team_id if budget.key is not None else None,
            limit_micro=limit_micro,
            limit_images=limit_images,
            exclude_id=budget.pk,
        )
    start = period_start(budget.period, timezone.now())
    current = Q(period_start=start)
    fits = Q(period_start__lte=start)
    if limit_micro is not None:
        fits &= ~current | Q(used_micro__lte=limit_micro - F("reserved_micro"))
    if limit_images is not None:
        fits &= ~current | Q(used_images__lte=limit_images - F("reserved_images"))

    def this_period(column: str) -> Case:
        return Case(When(current, then=F(column)), default=Value(0))

    changed = (
        Budget.objects.filter(pk=budget.pk)
        .filter(fits)
        .update(
            limit_micro=limit_micro,
            limit_images=limit_images,
            used_micro=this_period("used_micro"),
            reserved_micro=this_period("reserved_micro"),
            used_images=this_period("used_images"),
            reserved_images=this_period("reserved_images"),
            period_start=start,
            updated_at=timezone.now(),
        )
    )
    config_cache.invalidate()  # every process's cached limits, and the slices taken under them
    budget.refresh_from_db()
    if not changed:
        raise Conflict(
            "This period has already spent or holds more than that limit "
            f"({_fmt_limit(budget.used_micro + budget.reserved_micro, None) or '0'} and "
            f"{budget.used_images + budget.reserved_images} images).",
            code="limit_below_spend",
        )
    alerts.fire_standing(budget, start)
    audit_record(
        actor=actor,
        event="budget.updated",
        target=budget,
        workspace=budget.workspace,
        data={"limit_micro": limit_micro, "limit_images": limit_images},
    )
    return budget


@transaction.atomic
def budget_delete(*, actor: str, budget: Budget) -> None:
    audit_record(
        actor=actor,
        event="budget.deleted",
        target=budget,
        workspace=budget.workspace,
        data={"scope": budget.scope, "period": budget.period},
    )
    budget.delete()
