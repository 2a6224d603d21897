"""A workspace's markup: charged = provider cost x its price multiplier, budgets count the
charged cost, the tenant never sees the provider's cost, the operator sees both."""

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from billing.admission import marked_up
from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants import services
from tenants.key_auth import authenticate_secret
from tenants.models import AuditEvent, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO, budget
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient

URL = "/v1/images/generations"


def _post(client: APIClient, n: int = 1):
    body = {"model": "priced", "prompt": "a lighthouse", "n": n, "size": "1024x1024"}
    return client.post(URL, json.dumps(body), content_type="application/json")


def _markup(workspace: Workspace, multiplier: str) -> None:
    services.workspace_set_price_multiplier(
        actor=ACTOR, workspace=workspace, multiplier=Decimal(multiplier)
    )


@pytest.mark.parametrize(
    ("provider_micro", "multiplier", "charged"),
    [
        (20_000, "1.25", 25_000),
        (10_000, "1.0001", 10_001),
        (3, "0.3333", 1),  # 0.9999 µUSD: rounded up, never lost to the operator
        (1, "1.5", 2),
        (7, "1", 7),
        (0, "2", 0),
    ],
)
def test_the_charge_is_the_provider_cost_times_the_multiplier_rounded_up(
    provider_micro: int, multiplier: str, charged: int
) -> None:
    assert marked_up(provider_micro, Decimal(multiplier)) == charged


def test_a_request_is_charged_the_marked_up_cost_and_its_record_keeps_both(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _markup(workspace, "1.25")
    response = _post(client, n=2)
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get()
    assert (record.provider_cost_micro, record.cost_micro) == (2 * PRICE_MICRO, 25_000)
    assert response.json()["usage"]["cost"] == "0.025000"
    assert response["x-aperture-cost-usd"] == "0.025000"
    assert record.price_snapshot["multiplier"] == "1.2500"
    assert record.price_snapshot["unit_micro"] == PRICE_MICRO  # the provider's price, as it was


def test_budgets_count_the_charged_cost(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _markup(workspace, "1.25")
    cap = budget(workspace=workspace, period="lifetime", limit_micro=24_999)
    # 2 images: $0.02 at the provider's price would fit; marked up, $0.025 does not.
    refused = _post(client, n=2)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert fake_upstream.requests == []
    cap.limit_micro = 25_000
    cap.save()
    assert _post(client, n=2).status_code == 200  # exactly the limit, held and spent
    cap.refresh_from_db()
    assert (cap.used_micro, cap.reserved_micro) == (25_000, 0)
    assert _post(client, n=1).status_code == 402  # exhausted by the marked-up cost
    assert len(fake_upstream.requests) == 1


def test_the_multiplier_rides_the_cached_key_and_a_change_reaches_the_next_request(
    client: APIClient,
    api_key: CreatedKey,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    django_assert_num_queries,
) -> None:
    assert authenticate_secret(api_key.secret).price_multiplier == 1
    with django_assert_num_queries(0):  # cached: the hot path reads no workspace row
        assert authenticate_secret(api_key.secret).price_multiplier == 1
    _markup(workspace, "2")
    assert authenticate_secret(api_key.secret).price_multiplier == Decimal("2")
    assert _post(client).json()["usage"]["cost"] == "0.020000"
    event = AuditEvent.objects.get(event="workspace.price_multiplier_changed")
    assert event.data == {"from": "1.0000", "to": "2"}


def test_the_tenants_usage_api_shows_the_charged_cost_never_the_providers(
    client: APIClient,
    admin: SchemaCheckedClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    _markup(workspace, "1.25")
    assert _post(client, n=2).status_code == 200
    provider_figures = {2 * PRICE_MICRO, "0.020000", "20000", PRICE_MICRO, "10000"}

    (row,) = admin.get("/api/v1/usage").json()["results"]
    assert (row["cost_micro"], row["cost_usd"]) == (25_000, "0.025000")
    assert not {"provider_cost_micro", "price_snapshot", "upstream_cost_micro"} & set(row)
    assert not provider_figures & {v for v in row.values() if isinstance(v, int | str)}

    summary = admin.get("/api/v1/usage/summary?group_by=key").json()
    assert summary["total"]["cost_micro"] == 25_000
    assert "provider" not in json.dumps(summary["data"]) + json.dumps(summary["total"])

    exported = admin.get("/api/v1/usage?format=csv")
    text = b"".join(exported.streaming_content).decode()  # type: ignore[attr-defined]
    (record,) = list(csv.DictReader(io.StringIO(text)))
    assert (record["cost_micro"], record["cost_usd"]) == ("25000", "0.025000")
    assert not [name for name in record if "provider_cost" in name or "snapshot" in name]
    assert not provider_figures & set(record.values())


def test_operators_see_both_costs_and_change_the_multiplier_in_the_admin(
    admin_client: Client,
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    _markup(workspace, "1.25")
    assert _post(client, n=2).status_code == 200
    page = admin_client.get(reverse("admin:billing_usagerecord_changelist")).content.decode()
    assert '<td class="field-cost">$0.025</td>' in page
    assert '<td class="field-provider_cost">$0.02</td>' in page
    record = UsageRecord.objects.get()
    detail = admin_client.get(reverse("admin:billing_usagerecord_change", args=[record.pk]))
    assert "Provider cost micro" in detail.content.decode()

    url = reverse("admin:tenants_workspace_change", args=[workspace.pk])
    form = admin_client.get(url).context["adminform"].form
    assert form.initial["price_multiplier"] == Decimal("1.25")
    data = {
        **{name: value for name, value in form.initial.items() if value is not None},
        "price_multiplier": "1.5",
        "teams-TOTAL_FORMS": "0",
        "teams-INITIAL_FORMS": "0",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    workspace.refresh_from_db()
    assert workspace.price_multiplier == Decimal("1.5")
    changed = AuditEvent.objects.filter(event="workspace.price_multiplier_changed")
    assert [e.data for e in changed.order_by("id")][-1] == {"from": "1.2500", "to": "1.5"}
    assert _post(client).json()["usage"]["cost"] == "0.015000"  # the very next request


def test_apply_sets_a_workspaces_multiplier_and_refuses_a_bad_one(
    tmp_path: Path, workspace: Workspace
) -> None:
    path = tmp_path / "gateway.yaml"

    def apply(multiplier: str) -> str:
        path.write_text(
            f"workspaces:\n  - slug: acme\n    name: Acme\n    price_multiplier: {multiplier}\n"
        )
        out = io.StringIO()
        call_command("apply", str(path), stdout=out, stderr=io.StringIO())
        return out.getvalue()

    assert "price_multiplier 1.25" in apply("1.25")
    workspace.refresh_from_db()
    assert workspace.price_multiplier == Decimal("1.25")
    assert "price_multiplier" not in apply("1.25")  # a second run changes nothing
    for bad in ("0", "101", "1.00001", "lots"):
        with pytest.raises(Exception, match="price_multiplier"):
            apply(bad)
    workspace.refresh_from_db()
    assert workspace.price_multiplier == Decimal("1.25")
