"""Usage by end user and by metadata: `/api/v1/usage` and its summary filter and group by
`user` and by a metadata key, in JSON and in CSV, within the caller's workspace only."""

import csv
import io
import json

import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient

ALICE, BOB = "alice@example.com", "bob@example.com"


def _generate(client: APIClient, n: int, **attribution: object) -> None:
    body = {"model": "priced", "prompt": "a lighthouse", "n": n, "size": "1024x1024"}
    response = client.post(
        "/v1/images/generations",
        json.dumps({**body, **attribution}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content


@pytest.fixture
def traffic(
    client: APIClient, outsider: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    """acme: alice 2 images (avatar, pro) and 1 (banner), bob 1 (avatar), 1 with neither;
    globex (the outsider's workspace): alice, 4 images (avatar)."""
    _generate(client, 2, user=ALICE, metadata={"feature": "avatar", "plan": "pro"})
    _generate(client, 1, user=ALICE, metadata={"feature": "banner"})
    _generate(client, 1, user=BOB, metadata={"feature": "avatar"})
    _generate(client, 1)
    _generate(outsider, 4, user=ALICE, metadata={"feature": "avatar"})
    assert UsageRecord.objects.count() == 5


def _row(group: str, requests: int, images: int) -> dict[str, object]:
    cost = images * PRICE_MICRO
    return {
        "group": group,
        "label": group,
        "requests": requests,
        "images": images,
        "errors": 0,
        "cost_micro": cost,
        "cost_usd": f"{cost / 1_000_000:.6f}",
    }


def _csv(response: object) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")  # type: ignore[index]
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(
    ("group_by", "rows"),
    [
        ("user", [_row("", 1, 1), _row(ALICE, 2, 3), _row(BOB, 1, 1)]),
        ("metadata.feature", [_row("", 1, 1), _row("avatar", 2, 3), _row("banner", 1, 1)]),
        ("metadata.plan", [_row("", 3, 3), _row("pro", 1, 2)]),
    ],
)
def test_the_summary_groups_by_end_user_and_by_a_metadata_key_in_json_and_csv(
    admin: SchemaCheckedClient, traffic: None, group_by: str, rows: list[dict[str, object]]
) -> None:
    body = admin.get(f"/api/v1/usage/summary?group_by={group_by}").json()
    assert (body["group_by"], body["data"]) == (group_by, rows)
    assert body["total"]["requests"] == 4 and body["total"]["images"] == 5
    exported = _csv(admin.get(f"/api/v1/usage/summary?group_by={group_by}&format=csv"))
    assert exported == [{k: str(v) for k, v in row.items()} for row in rows]


def test_the_summary_filters_by_user_and_metadata_before_grouping(
    admin: SchemaCheckedClient, traffic: None
) -> None:
    by_user = admin.get("/api/v1/usage/summary?group_by=user&metadata.feature=avatar")
    assert by_user.json()["data"] == [_row(ALICE, 1, 2), _row(BOB, 1, 1)]
    by_feature = admin.get(f"/api/v1/usage/summary?group_by=metadata.feature&user={ALICE}")
    assert by_feature.json()["data"] == [_row("avatar", 1, 2), _row("banner", 1, 1)]


def test_records_carry_and_filter_by_user_and_metadata_in_json_and_csv(
    admin: SchemaCheckedClient, traffic: None
) -> None:
    def listed(query: str) -> list[tuple[str, dict[str, str], int]]:
        response = admin.get(f"/api/v1/usage?{query}")
        assert response.status_code == 200, response.json()
        found = [(r["user"], r["metadata"], r["images"]) for r in response.json()["results"]]
        return sorted(found, key=lambda r: (r[0], -r[2]))

    assert listed(f"user={ALICE}") == [
        (ALICE, {"feature": "avatar", "plan": "pro"}, 2),
        (ALICE, {"feature": "banner"}, 1),
    ]
    assert listed("metadata.feature=avatar") == [
        (ALICE, {"feature": "avatar", "plan": "pro"}, 2),
        (BOB, {"feature": "avatar"}, 1),
    ]
    assert listed(f"metadata.feature=avatar&metadata.plan=pro&user={ALICE}") == [
        (ALICE, {"feature": "avatar", "plan": "pro"}, 2)
    ]
    assert listed("metadata.feature=avatar&user=nobody") == []
    assert listed("metadata.missing=") == []
    exported = _csv(admin.get("/api/v1/usage?format=csv&metadata.feature=avatar"))
    assert sorted((r["user"], r["metadata"], r["images"]) for r in exported) == [
        (ALICE, '{"feature":"avatar","plan":"pro"}', "2"),
        (BOB, '{"feature":"avatar"}', "1"),
    ]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("metadata.bad%20key=x", "metadata.bad key"),
        ("metadata.=x", "metadata."),
        (f"metadata.feature={'x' * 513}", "metadata.feature"),
        ("metadata.feature=a%00b", "metadata.feature"),
        (f"user={'u' * 257}", "user"),
        ("group_by=metadata.", "group_by"),
        ("group_by=metadata.bad%20key", "group_by"),
        ("group_by=users", "group_by"),
    ],
)
def test_bad_attribution_filters_are_a_400_naming_the_parameter(
    admin: SchemaCheckedClient, db: None, query: str, param: str
) -> None:
    for path in ("/api/v1/usage/summary", "/api/v1/usage"):
        if path == "/api/v1/usage" and query.startswith("group_by"):
            continue
        response = admin.get(f"{path}?{query}")
        assert response.status_code == 400, response.content
        assert response.json()["error"]["param"] == param


def test_an_outsider_sees_only_its_own_end_users_and_gets_a_404_for_a_foreign_key(
    outsider_admin: SchemaCheckedClient,
    admin: SchemaCheckedClient,
    api_key: CreatedKey,
    traffic: None,
) -> None:
    """outsider_admin is initech's: neither acme's records nor globex's are its own."""
    assert outsider_admin.get("/api/v1/usage/summary?group_by=user").json()["data"] == []
    assert outsider_admin.get(f"/api/v1/usage?user={ALICE}").json()["results"] == []
    foreign = outsider_admin.get(f"/api/v1/usage?key={api_key.key.public_id}&user={ALICE}")
    assert foreign.status_code == 404
    # acme's own view of alice leaves out globex's alice, who is another end user
    rows = admin.get(f"/api/v1/usage/summary?group_by=user&user={ALICE}").json()["data"]
    assert rows == [_row(ALICE, 2, 3)]
