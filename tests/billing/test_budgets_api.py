"""Budgets through the management API: set, change, delete, never above the workspace's."""

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from rest_framework.test import APIClient

from billing.models import Budget
from routing.models import ModelAlias
from tenants.models import AuditEvent, Team, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO, budget
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient
from tests.support import client_for, wait_for


def _generate(client: APIClient) -> int:
    body = {"model": "priced", "prompt": "x", "size": "1024x1024"}
    return client.post(
        "/v1/images/generations", json.dumps(body), content_type="application/json"
    ).status_code


def test_a_key_budget_set_through_the_api_caps_the_key_with_402(
    admin: SchemaCheckedClient,
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    response = admin.post(
        "/api/v1/budgets",
        {"key": api_key.key.public_id, "period": "day", "limit_usd": "0.02"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    created = response.json()
    assert (created["scope"], created["key"], created["team"]) == (
        "key",
        api_key.key.public_id,
        None,
    )
    assert (created["limit_micro"], created["limit_usd"], created["limit_images"]) == (
        20_000,
        "0.020000",
        None,
    )
    key_client = client_for(api_key.secret)
    assert [_generate(key_client) for _ in range(3)] == [200, 200, 402]
    after = admin.get(f"/api/v1/budgets/{created['id']}").json()
    assert (after["spent_micro"], after["remaining_micro"]) == (2 * PRICE_MICRO, 0)
    assert len(fake_upstream.requests) == 2
    event = AuditEvent.objects.get(event="budget.created", target_id=created["id"])
    assert event.actor.startswith("key:")


def test_a_budget_above_the_workspaces_or_the_teams_is_refused(
    admin: SchemaCheckedClient, workspace: Workspace, team: Team, api_key: CreatedKey
) -> None:
    budget(workspace=workspace, period="month", limit_micro=5_000_000, limit_images=100)
    budget(workspace=workspace, team=team, period="month", limit_micro=1_000_000)
    for body, param in (
        ({"team": team.public_id, "period": "day", "limit_usd": "5.01"}, "limit_usd"),
        ({"team": team.public_id, "period": "day", "limit_images": 101}, "limit_images"),
        ({"key": api_key.key.public_id, "limit_usd": "1.000001", "period": "day"}, "limit_usd"),
    ):
        response = admin.post("/api/v1/budgets", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "exceeds_enclosing_budget"
        assert response.json()["error"]["param"] == param
    assert Budget.objects.count() == 2
    ok = admin.post(
        "/api/v1/budgets", {"key": api_key.key.public_id, "limit_usd": "1"}, format="json"
    )
    assert ok.status_code == 201
    raised = admin.patch(f"/api/v1/budgets/{ok.json()['id']}", {"limit_usd": "2"}, format="json")
    assert raised.status_code == 400
    assert Budget.objects.get(public_id=ok.json()["id"]).limit_micro == 1_000_000


def test_the_workspace_budget_is_the_operators(
    admin: SchemaCheckedClient, workspace: Workspace
) -> None:
    theirs = budget(workspace=workspace, period="month", limit_micro=5_000_000)
    assert admin.post("/api/v1/budgets", {"limit_usd": "9"}, format="json").status_code == 400
    for response in (
        admin.patch(f"/api/v1/budgets/{theirs.public_id}", {"limit_usd": "9"}, format="json"),
        admin.delete(f"/api/v1/budgets/{theirs.public_id}"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "operator_only"
    theirs.refresh_from_db()
    assert theirs.limit_micro == 5_000_000
    assert admin.get(f"/api/v1/budgets/{theirs.public_id}").json()["limit_usd"] == "5.000000"


def test_a_second_budget_for_the_same_target_and_period_is_a_409(
    admin: SchemaCheckedClient, team: Team
) -> None:
    body = {"team": team.public_id, "period": "month", "limit_images": 10}
    assert admin.post("/api/v1/budgets", body, format="json").status_code == 201
    again = admin.post("/api/v1/budgets", body, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "budget_exists"
    assert (
        admin.post("/api/v1/budgets", {**body, "period": "day"}, format="json").status_code == 201
    )


def test_a_limit_cannot_go_below_what_this_period_spent_but_may_after_it(
    admin: SchemaCheckedClient,
    workspace: Workspace,
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    with time_machine.travel(datetime(2026, 11, 20, tzinfo=UTC), tick=False) as clock:
        monthly = budget(workspace=workspace, key=api_key.key, period="month", limit_micro=50_000)
        assert [_generate(client_for(api_key.secret)) for _ in range(3)] == [200, 200, 200]
        below = admin.patch(
            f"/api/v1/budgets/{monthly.public_id}", {"limit_usd": "0.02"}, format="json"
        )
        assert below.status_code == 409
        assert below.json()["error"]["code"] == "limit_below_spend"
        monthly.refresh_from_db()
        assert (monthly.limit_micro, monthly.used_micro) == (50_000, 30_000)
        exact = admin.patch(
            f"/api/v1/budgets/{monthly.public_id}", {"limit_usd": "0.03"}, format="json"
        )
        assert exact.status_code == 200
        assert exact.json()["remaining_micro"] == 0
        assert _generate(client_for(api_key.secret)) == 402
        clock.move_to(datetime(2026, 12, 2, tzinfo=UTC))
        next_month = admin.patch(
            f"/api/v1/budgets/{monthly.public_id}", {"limit_usd": "0.01"}, format="json"
        )
        assert next_month.status_code == 200, next_month.json()
        assert (next_month.json()["spent_micro"], next_month.json()["remaining_micro"]) == (
            0,
            10_000,
        )
        assert _generate(client_for(api_key.secret)) == 200


def test_removing_the_last_limit_is_refused_and_deleting_works(
    admin: SchemaCheckedClient, team: Team
) -> None:
    created = admin.post(
        "/api/v1/budgets", {"team": team.public_id, "limit_usd": "1"}, format="json"
    ).json()
    no_limit = admin.patch(f"/api/v1/budgets/{created['id']}", {"limit_usd": None}, format="json")
    assert no_limit.status_code == 400
    swapped = admin.patch(
        f"/api/v1/budgets/{created['id']}",
        {"limit_usd": None, "limit_images": 5},
        format="json",
    )
    assert (swapped.json()["limit_micro"], swapped.json()["limit_images"]) == (None, 5)
    assert admin.delete(f"/api/v1/budgets/{created['id']}").status_code == 204
    assert not Budget.objects.exists()
    assert admin.get(f"/api/v1/budgets/{created['id']}").status_code == 404
    events = list(
        AuditEvent.objects.filter(event__startswith="budget.")
        .order_by("created_at", "id")
        .values_list("event", flat=True)
    )
    assert events == ["budget.created", "budget.updated", "budget.deleted"]


def test_a_team_manager_reads_the_budgets_that_bind_its_team_but_sets_none(
    manager: SchemaCheckedClient, workspace: Workspace, team: Team, other_team: Team
) -> None:
    ours = budget(workspace=workspace, team=team, period="month", limit_micro=1)
    theirs = budget(workspace=workspace, team=other_team, period="month", limit_micro=1)
    whole = budget(workspace=workspace, period="month", limit_micro=10)
    listed = {b["id"] for b in manager.get("/api/v1/budgets").json()["data"]}
    assert listed == {ours.public_id, whole.public_id}
    assert manager.get(f"/api/v1/budgets/{theirs.public_id}").status_code == 404
    refused = manager.post(
        "/api/v1/budgets", {"team": team.public_id, "limit_usd": "1"}, format="json"
    )
    assert refused.status_code == 403


def _waiting_on_a_lock() -> bool:
    """Whether a session of this test's database waits for a lock another one holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction's first view
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
            "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_of_one_budget_create_one_and_answer_the_other_409(
    admin: SchemaCheckedClient, team: Team
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("two sessions writing at once need PostgreSQL")
    body = {"team": team.public_id, "period": "month", "limit_images": 10}
    second: dict[str, Any] = {}

    def post_second() -> None:
        try:
            response = admin.post("/api/v1/budgets", body, format="json")
            second.update(status=response.status_code, body=response.json())
        finally:
            connection.close()

    # The first POST's INSERT is in, not yet committed: the second finds no budget, inserts
    # too and waits on the first; once the first commits, the database refuses the second.
    with transaction.atomic():
        first = admin.post("/api/v1/budgets", body, format="json")
        assert first.status_code == 201, first.json()
        racer = threading.Thread(target=post_second)
        racer.start()
        wait_for(
            lambda: _waiting_on_a_lock() or not racer.is_alive(),
            what="the second POST to wait on the first's insert",
        )
    racer.join(timeout=30)
    assert second == {
        "status": 409,
        "body": {
            "error": {
                "message": f"This team already has a month budget ({first.json()['id']}); "
                "change that one.",
                "type": "invalid_request_error",
                "param": None,
                "code": "budget_exists",
            }
        },
    }
    assert list(Budget.objects.filter(team=team).values_list("public_id", flat=True)) == [
        first.json()["id"]
    ]
    assert AuditEvent.objects.filter(event="budget.created").count() == 1
