"""Writes for billing configuration: prices and budgets, each audited."""

from django.db import transaction

from billing.models import Budget, Price
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
) -> Price:
    price, created = Price.objects.update_or_create(
        provider=provider,
        model_pattern=model_pattern,
        size=size,
        quality=quality,
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
    """Create the budget of this target and period, or change its limits."""
    scope = "key" if key else "team" if team else "workspace"
    budget, created = Budget.objects.update_or_create(
        workspace=workspace,
        team=team,
        key=key,
        scope=scope,
        period=period,
        defaults={"limit_micro": limit_micro, "limit_images": limit_images},
    )
    audit_record(
        actor=actor,
        event="budget.created" if created else "budget.updated",
        target=budget,
        workspace=workspace,
        data={"period": period, "limit_micro": limit_micro, "limit_images": limit_images},
    )
    return budget
