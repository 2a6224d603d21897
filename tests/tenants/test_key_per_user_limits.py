"""A key's per-end-user limits through the keys API: set on create, changed and cleared by
PATCH, in force from the next request, and never wider than the granting key's own."""

import json

from django.test import Client

from tenants import services
from tenants.models import ApiKey, Team
from tests.openapi_check import SchemaCheckedClient, checked_client_for
from tests.support import client_for


def test_per_user_limits_are_set_changed_and_cleared_through_the_api(
    admin: SchemaCheckedClient, team: Team, platform_alias: object
) -> None:
    created = admin.post(
        "/api/v1/keys",
        {"name": "app", "per_user_limit_images": 50, "per_user_rpm": 6},
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["per_user_limit_images"], body["per_user_rpm"]) == (50, 6)
    generation = json.dumps({"model": "demo-image", "prompt": "a fox", "size": "64x64"})
    app = client_for(body["secret"])
    refused = app.post("/v1/images/generations", generation, content_type="application/json")
    assert refused.json()["error"]["code"] == "user_required"

    url = f"/api/v1/keys/{body['id']}"
    changed = admin.patch(url, {"per_user_rpm": 1}, format="json").json()
    assert (changed["per_user_limit_images"], changed["per_user_rpm"]) == (50, 1)
    with_user = json.dumps({**json.loads(generation), "user": "u1"})
    first = app.post("/v1/images/generations", with_user, content_type="application/json")
    assert first.status_code == 200
    second = app.post("/v1/images/generations", with_user, content_type="application/json")
    assert second.json()["error"]["code"] == "user_rate_limit_exceeded"

    cleared = admin.patch(
        url, {"per_user_limit_images": None, "per_user_rpm": None}, format="json"
    ).json()
    assert (cleared["per_user_limit_images"], cleared["per_user_rpm"]) == (None, None)
    served = app.post("/v1/images/generations", generation, content_type="application/json")
    assert served.status_code == 200, "no limit per end user: `user` is optional again"
    key = ApiKey.objects.get(public_id=body["id"])
    assert (key.per_user_limit_images, key.per_user_rpm) == (None, None)


def test_a_key_limited_per_end_user_cannot_grant_or_widen_past_its_own_limit(
    team: Team,
) -> None:
    lead = services.key_create(
        actor="t", team=team, name="lead", scopes=["manage:team"], per_user_rpm=5
    )
    manager = checked_client_for(lead.secret)
    for wider in ({}, {"per_user_rpm": 6}):
        refused = manager.post("/api/v1/keys", {"name": "app", **wider}, format="json")
        assert refused.status_code == 403
        assert refused.json()["error"]["param"] == "per_user_rpm"
        assert refused.json()["error"]["code"] == "exceeds_own_grant"
    minted = manager.post("/api/v1/keys", {"name": "app", "per_user_rpm": 5}, format="json")
    assert minted.status_code == 201
    widened = manager.patch(
        f"/api/v1/keys/{minted.json()['id']}", {"per_user_rpm": None}, format="json"
    )
    assert widened.status_code == 403
    assert widened.json()["error"]["param"] == "per_user_rpm"


def test_the_key_admin_sets_per_user_limits(admin_client: Client, team: Team) -> None:
    response = admin_client.post(
        "/admin/tenants/apikey/add/",
        {
            "team": team.pk,
            "name": "from the admin",
            "scopes": ["images"],
            "allowed_aliases": "",
            "per_user_limit_images": "40",
            "per_user_rpm": "3",
        },
    )
    assert response.status_code == 200, response.content  # the page showing the secret once
    key = ApiKey.objects.get(name="from the admin")
    assert (key.per_user_limit_images, key.per_user_rpm) == (40, 3)
    change = f"/admin/tenants/apikey/{key.pk}/change/"
    changed = admin_client.post(
        change,
        {
            "name": "from the admin",
            "scopes": ["images"],
            "allowed_aliases": "",
            "per_user_limit_images": "",
            "per_user_rpm": "4",
        },
    )
    assert changed.status_code == 302
    key.refresh_from_db()
    assert (key.per_user_limit_images, key.per_user_rpm) == (None, 4)
