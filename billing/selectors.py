"""Reads of budgets for the management API: those in a key's scope, with their spend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from aperture.errors import NotFound
from billing.budgets import period_end, period_start
from billing.models import Budget, SpendAlert
from tenants.key_auth import KeyPrincipal
from tenants.selectors import team_scope


@dataclass(frozen=True)
class BudgetStatus:
    """A budget and where its current period stands (counters of a past period read 0)."""

    budget: Budget
    period_start: datetime
    resets_at: datetime | None
    spent_micro: int
    reserved_micro: int
    spent_images: int
    reserved_images: int

    @property
    def remaining_micro(self) -> int | None:
        if self.budget.limit_micro is None:
            return None
        return max(0, self.budget.limit_micro - self.spent_micro - self.reserved_micro)

    @property
    def remaining_images(self) -> int | None:
        if self.budget.limit_images is None:
            return None
        return max(0, self.budget.limit_images - self.spent_images - self.reserved_images)


def budget_status(budget: Budget, now: datetime | None = None) -> BudgetStatus:
    now = now or timezone.now()
    start = period_start(budget.period, now)
    current = budget.period_start == start
    return BudgetStatus(
        budget=budget,
        period_start=start,
        resets_at=period_end(budget.period, now),
        spent_micro=budget.used_micro if current else 0,
        reserved_micro=budget.reserved_micro if current else 0,
        spent_images=budget.used_images if current else 0,
        reserved_images=budget.reserved_images if current else 0,
    )


def budgets_visible(principal: KeyPrincipal) -> QuerySet[Budget]:
    """The workspace's budgets; for a manage:team key, those that bind its team: the
    workspace's own, its team's and its team's keys'."""
    budgets = Budget.objects.filter(workspace_id=principal.workspace_id).select_related(
        "team", "key"
    )
    only_team = team_scope(principal)
    if only_team is None:
        return budgets
    return budgets.filter(
        Q(scope=Budget.Scope.WORKSPACE)
        | Q(scope=Budget.Scope.TEAM, team_id=only_team)
        | Q(scope=Budget.Scope.KEY, key__team_id=only_team)
    )


def budget_get(principal: KeyPrincipal, public_id: str) -> Budget:
    budget = budgets_visible(principal).filter(public_id=public_id).first()
    if budget is None:
        raise NotFound(f"No budget '{public_id}' in this workspace.")
    return budget


def enclosing_budgets(budget_workspace_id: int, team_id: int | None) -> list[Budget]:
    """Budgets a team or key budget sits inside: the workspace's, and for a key its team's."""
    scope = Q(scope=Budget.Scope.WORKSPACE)
    if team_id is not None:
        scope |= Q(scope=Budget.Scope.TEAM, team_id=team_id)
    return list(Budget.objects.filter(scope, workspace_id=budget_workspace_id))


def alerts_visible(principal: KeyPrincipal, budget_id: str | None = None) -> QuerySet[SpendAlert]:
    """The alerts of the budgets the key sees (for a manage:team key, those binding its
    team), or of one of them: another workspace's budget is a 404."""
    alerts = SpendAlert.objects.filter(workspace_id=principal.workspace_id)
    if budget_id is not None:
        alerts = alerts.filter(budget=budget_get(principal, budget_id))
    else:
        alerts = alerts.filter(budget__in=budgets_visible(principal).values("pk"))
    return alerts.select_related("budget", "budget__team", "budget__key")
