"""Budgets: `/api/v1/budgets[/{id}]`. Everyone with a management scope reads those in
scope; `manage:workspace` sets team and key budgets, never above the workspace's, and the
spend alerts of any budget, the workspace's included (its limits are the operators')."""

from typing import Any

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import micro_from_usd, validated
from aperture.errors import PermissionError_
from aperture.openapi import listed
from billing import alerts, services
from billing import selectors as billing_selectors
from billing.api.serializers import BudgetCreateIn, BudgetOut, BudgetUpdateIn
from billing.models import Budget
from tenants import selectors
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey
from tenants.permissions import ManageWorkspaceForWrites, request_principal
from tenants.services import actor_for

TAGS = ["Budgets"]


def _out(budget: Budget, principal: KeyPrincipal) -> dict[str, object]:
    """The budget; its alert settings whole only for a key that may change them."""
    context = {"alert_settings": principal.has_scope(ApiKey.Scope.MANAGE_WORKSPACE)}
    return dict(BudgetOut(billing_selectors.budget_status(budget), context=context).data)


class BudgetListView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        responses=listed("BudgetList", BudgetOut),
        operation_id="budgets_list",
        summary="Budgets in scope, with this period's spend and what remains",
    )
    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        budgets = billing_selectors.budgets_visible(principal).order_by("id")
        return Response({"data": [_out(b, principal) for b in budgets]})

    @extend_schema(
        tags=TAGS,
        request=BudgetCreateIn,
        responses={201: BudgetOut},
        summary="Set a team's or a key's budget (manage:workspace)",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        f = validated(BudgetCreateIn, request.data)
        team = selectors.team_get(principal, f["team"], param="team") if "team" in f else None
        key = selectors.key_get(principal, f["key"], param="key") if "key" in f else None
        actor = actor_for(principal)
        with transaction.atomic():  # refused alert settings leave no budget behind
            budget = services.budget_create(
                actor=actor,
                workspace=selectors.workspace_of(principal),
                team=team,
                key=key,
                period=f["period"],
                limit_micro=micro_from_usd(f["limit_usd"]),
                limit_images=f["limit_images"],
            )
            if _alert_settings(f):
                budget = alerts.budget_set_alerts(
                    actor=actor, budget=budget, fields=_alert_settings(f)
                )
        return Response(_out(budget, principal), status=201)


class BudgetDetailView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(tags=TAGS, responses=BudgetOut, summary="Retrieve a budget")
    def get(self, request: Request, budget_id: str) -> Response:
        principal = request_principal(request)
        return Response(_out(billing_selectors.budget_get(principal, budget_id), principal))

    @extend_schema(
        tags=TAGS,
        request=BudgetUpdateIn,
        responses=BudgetOut,
        summary="Change a team's or key's limits (null removes one), or any budget's alerts",
    )
    def patch(self, request: Request, budget_id: str) -> Response:
        principal = request_principal(request)
        data = validated(BudgetUpdateIn, request.data)
        limits: dict[str, int | None] = {}
        if "limit_usd" in data:
            limits["limit_micro"] = micro_from_usd(data["limit_usd"])
        if "limit_images" in data:
            limits["limit_images"] = data["limit_images"]
        if limits:
            budget = _tenant_budget(principal, budget_id)
        else:
            budget = billing_selectors.budget_get(principal, budget_id)
        actor = actor_for(principal)
        if limits:  # the budget's slices back first: that waits on other processes
            services.budget_reclaim(budget_id=budget.pk)
        with transaction.atomic():  # both or neither
            if limits:
                budget = services.budget_change_limits(actor=actor, budget=budget, fields=limits)
            if _alert_settings(data):
                budget = alerts.budget_set_alerts(
                    actor=actor, budget=budget, fields=_alert_settings(data)
                )
        return Response(_out(budget, principal))

    @extend_schema(tags=TAGS, responses={204: None}, summary="Delete a team's or key's budget")
    def delete(self, request: Request, budget_id: str) -> Response:
        principal = request_principal(request)
        services.budget_delete(
            actor=actor_for(principal), budget=_tenant_budget(principal, budget_id)
        )
        return Response(status=204)


def _alert_settings(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in alerts.ALERT_FIELDS if name in data}


def _tenant_budget(principal: KeyPrincipal, budget_id: str) -> Budget:
    budget = billing_selectors.budget_get(principal, budget_id)
    if budget.scope == "workspace":
        raise PermissionError_(
            "The workspace's own budget is set by the gateway's operators.",
            code="operator_only",
        )
    return budget
