"""Reservations and settlement on the budget rows, without HTTP."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from aperture.errors import InsufficientQuota
from billing import budgets, leases
from billing.models import Budget, Reservation
from tenants.key_auth import authenticate_secret
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import budget


def _principal(api_key: CreatedKey):
    return authenticate_secret(api_key.secret)


def test_reserve_then_settle_charges_the_actual_cost(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=100_000)
    hold = budgets.reserve(
        principal=_principal(api_key), request_id="r1", amount_micro=30_000, images=1
    )
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro, row.reserved_images) == (0, 30_000, 1)
    assert Reservation.objects.count() == 1
    budgets.settle(hold, cost_micro=25_000, images=1)
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro, row.used_images, row.reserved_images) == (
        25_000,
        0,
        1,
        0,
    )
    assert not Reservation.objects.exists()


def test_a_failed_call_releases_its_hold(api_key: CreatedKey, workspace: Workspace) -> None:
    row = budget(workspace=workspace, period="day", limit_images=3)
    hold = budgets.reserve(principal=_principal(api_key), request_id="r", amount_micro=0, images=2)
    budgets.release(hold)
    row.refresh_from_db()
    assert (row.used_images, row.reserved_images) == (0, 0)


def test_402_names_the_scope_and_when_it_resets_and_holds_nothing(
    api_key: CreatedKey, workspace: Workspace, team: Team
) -> None:
    roomy = budget(workspace=workspace, period="lifetime", limit_micro=10**9)
    tight = budget(workspace=workspace, team=team, period="day", limit_micro=5_000)
    with pytest.raises(InsufficientQuota) as refused:
        budgets.reserve(principal=_principal(api_key), request_id="r", amount_micro=6_000, images=1)
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert refused.value.message == (
        f"This request would exceed the team's day budget; it resets at {tomorrow}T00:00:00Z."
    )
    leases.return_all()  # this process's idle slices: what it holds for no request
    for row in (roomy, tight):
        row.refresh_from_db()
        assert row.reserved_micro == 0  # the roomy budget's hold was rolled back too
    assert not Reservation.objects.exists()


def test_the_tightest_of_nested_budgets_wins(
    api_key: CreatedKey, workspace: Workspace, team: Team
) -> None:
    budget(workspace=workspace, period="month", limit_images=10)
    budget(workspace=workspace, team=team, period="month", limit_images=3)
    budget(workspace=workspace, key=api_key.key, period="month", limit_images=5)
    principal = _principal(api_key)
    for _ in range(3):
        budgets.reserve(principal=principal, request_id="r", amount_micro=0, images=1)
    with pytest.raises(InsufficientQuota, match="team's month budget"):
        budgets.reserve(principal=principal, request_id="r", amount_micro=0, images=1)


def test_a_new_period_starts_from_zero_without_a_job(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="day", limit_images=1)
    yesterday = budgets.period_start("day", timezone.now()) - timedelta(days=1)
    Budget.objects.filter(pk=row.pk).update(period_start=yesterday, used_images=1)
    budgets.reserve(principal=_principal(api_key), request_id="r", amount_micro=0, images=1)
    row.refresh_from_db()
    assert (row.used_images, row.reserved_images) == (0, 1)
    assert row.period_start == budgets.period_start("day", timezone.now())


def test_the_database_refuses_overspend_even_from_code_that_forgets(workspace: Workspace) -> None:
    row = budget(workspace=workspace, period="lifetime", limit_micro=100)
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.filter(pk=row.pk).update(used_micro=F("used_micro") + 101)
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.filter(pk=row.pk).update(reserved_micro=60, used_micro=41)
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(workspace=workspace, scope="workspace", period="day")  # no limit


@pytest.mark.parametrize("scope", ["workspace", "team", "key"])
def test_the_database_refuses_a_second_budget_for_one_target_and_period(
    workspace: Workspace, api_key: CreatedKey, scope: str
) -> None:
    team = api_key.key.team
    targets: dict[str, dict[str, object]] = {
        "workspace": {},
        "team": {"team": team},
        "key": {"key": api_key.key},
    }
    target = targets[scope]
    budget(workspace=workspace, period="month", limit_micro=100, **target)
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(
            workspace=workspace, scope=scope, period="month", limit_micro=5, **target
        )
    # Another period of the same target, and the same period of every other target, are fine.
    budget(workspace=workspace, period="day", limit_micro=100, **target)
    for other in (targets[s] for s in ("workspace", "team") if s != scope):
        budget(workspace=workspace, period="month", limit_micro=100, **other)
    assert Budget.objects.filter(scope=scope, period="month").count() == 1


def test_a_settlement_above_the_estimate_is_capped_at_the_limit(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="lifetime", limit_micro=10_000)
    hold = budgets.reserve(
        principal=_principal(api_key), request_id="r", amount_micro=8_000, images=1
    )
    budgets.settle(hold, cost_micro=12_000, images=1)
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (10_000, 0)


def test_the_reaper_releases_orphaned_holds_and_a_late_settle_still_charges(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=100_000)
    principal = _principal(api_key)
    orphan = budgets.reserve(
        principal=principal, request_id="crashed", amount_micro=40_000, images=1
    )
    fresh = budgets.reserve(principal=principal, request_id="live", amount_micro=10_000, images=1)
    Reservation.objects.filter(request_id="crashed").update(
        created_at=timezone.now() - timedelta(hours=1)
    )
    assert budgets.reap_orphaned_reservations(older_than=timedelta(minutes=16)) == 1
    row.refresh_from_db()
    assert row.reserved_micro == 10_000
    assert list(Reservation.objects.values_list("request_id", flat=True)) == ["live"]
    budgets.settle(orphan, cost_micro=5_000, images=1)  # the worker was only slow
    budgets.settle(fresh, cost_micro=10_000, images=1)
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (15_000, 0)


def test_a_spend_beyond_the_hold_is_charged_as_far_as_every_budget_can_take_it(
    api_key: CreatedKey, workspace: Workspace, team: Team
) -> None:
    roomy = budget(workspace=workspace, period="month", limit_micro=100_000)
    tight = budget(workspace=workspace, team=team, period="month", limit_micro=50_000)
    hold = budgets.reserve(
        principal=_principal(api_key), request_id="r", amount_micro=30_000, images=1
    )
    charged = budgets.settle(hold, cost_micro=80_000, images=2)
    # The tight budget had 50,000 in all: both are charged that, and the record says so.
    assert charged == (50_000, 2)
    for row in (roomy, tight):
        row.refresh_from_db()
        assert (row.used_micro, row.reserved_micro, row.used_images, row.reserved_images) == (
            50_000,
            0,
            2,
            0,
        )


def test_a_spend_within_the_hold_is_charged_as_it_is(
    api_key: CreatedKey, workspace: Workspace
) -> None:
    budget(workspace=workspace, period="month", limit_micro=100_000)
    hold = budgets.reserve(
        principal=_principal(api_key), request_id="r", amount_micro=30_000, images=1
    )
    assert budgets.settle(hold, cost_micro=25_000, images=1) == (25_000, 1)
