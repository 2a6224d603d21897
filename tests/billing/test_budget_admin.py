"""Operators change budgets in the admin without a 500 and without touching the counters."""

from datetime import timedelta

from django.test import Client
from django.utils import timezone

from billing.models import Budget, BudgetLease
from tenants.models import AuditEvent, Workspace
from tests.billing.conftest import budget


def _form(b: Budget, **changes: object) -> dict[str, object]:
    data = {
        "workspace": b.workspace_id,
        "team": "",
        "key": "",
        "scope": b.scope,
        "period": b.period,
        "limit_micro": b.limit_micro or "",
        "limit_images": b.limit_images or "",
    }
    return {**data, **changes}


def _spent(b: Budget, micro: int) -> None:
    Budget.objects.filter(pk=b.pk).update(
        used_micro=micro, reserved_micro=5_000, period_start=b.period_start
    )


def test_an_operator_cannot_lower_a_limit_below_this_periods_spend(
    admin_client: Client, workspace: Workspace
) -> None:
    b = budget(workspace=workspace, period="lifetime", limit_micro=50_000)
    _spent(b, 30_000)
    url = f"/admin/billing/budget/{b.pk}/change/"
    response = admin_client.post(url, _form(b, limit_micro=20_000))
    assert response.status_code == 200  # the form again, with the reason
    assert "already spent or holds more than that limit" in response.content.decode()
    b.refresh_from_db()
    assert (b.limit_micro, b.used_micro, b.reserved_micro) == (50_000, 30_000, 5_000)


def test_an_operators_limit_change_keeps_the_counters_and_is_audited(
    admin_client: Client, workspace: Workspace
) -> None:
    b = budget(workspace=workspace, period="lifetime", limit_micro=50_000)
    _spent(b, 30_000)
    response = admin_client.post(
        f"/admin/billing/budget/{b.pk}/change/", _form(b, limit_micro=40_000)
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    b.refresh_from_db()
    assert (b.limit_micro, b.used_micro, b.reserved_micro) == (40_000, 30_000, 5_000)
    event = AuditEvent.objects.filter(event="budget.updated", target_id=b.public_id).get()
    assert event.actor.startswith("operator:")


def test_a_second_budget_for_one_target_and_period_is_a_form_error_in_the_admin(
    admin_client: Client, workspace: Workspace
) -> None:
    b = budget(workspace=workspace, period="month", limit_micro=50_000)
    response = admin_client.post("/admin/billing/budget/add/", _form(b, limit_micro=10))
    assert response.status_code == 200  # the form again, with the reason
    assert "This workspace already has a budget for this period." in response.content.decode()
    assert list(Budget.objects.values_list("pk", flat=True)) == [b.pk]


def test_an_operator_sees_which_gateway_processes_hold_slices_of_a_budget(
    admin_client: Client, workspace: Workspace
) -> None:
    b = budget(workspace=workspace, period="lifetime", limit_micro=50_000_000)
    BudgetLease.objects.create(
        budget=b,
        holder="web-3:4242:ab12",
        period_start=b.period_start,
        amount_micro=6_000_000,
        images=64,
        expires_at=timezone.now() + timedelta(seconds=30),
    )
    page = admin_client.get(f"/admin/billing/budget/{b.pk}/change/").content.decode()
    assert "Held as slices" in page
    assert "web-3:4242:ab12: $6, 64 images, admitting, until" in page
