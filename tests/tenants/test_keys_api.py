"""The key routes: create (secret once), list, retrieve, update, rotate, revoke."""

import logging
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import ApiKey, AuditEvent, Team
from tenants.services import CreatedKey
from tests.openapi_check import SchemaCheckedClient
from tests.support import client_for


def _create(client: APIClient, **body: object) -> dict:
    response = client.post("/api/v1/keys", {"name": "teammate", **body}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_created_keys_secret_is_in_that_response_only_and_in_no_log_line(
    admin: SchemaCheckedClient, team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = _create(admin, scopes=["images"], rpm_limit=30)
    secret = created["secret"]
    assert secret.startswith(f"apk_{created['id']}_")
    assert created["prefix"] == f"apk_{created['id']}"
    assert created["team"] == {"id": team.public_id, "slug": "design"}
    assert created["scopes"] == ["images"]
    assert created["rpm_limit"] == 30
    assert created["status"] == "active"
    assert created["created_by"].startswith("key:")
    later = [
        admin.get("/api/v1/keys"),
        admin.get(f"/api/v1/keys/{created['id']}"),
        admin.get("/api/v1/audit-events"),
        admin.patch(f"/api/v1/keys/{created['id']}", {"name": "renamed"}, format="json"),
    ]
    for response in later:
        assert response.status_code == 200
        assert secret not in response.content.decode()
        assert secret.split("_")[2] not in response.content.decode()
    assert secret not in caplog.text
    assert not AuditEvent.objects.filter(data__icontains=secret.split("_")[2]).exists()
    row = ApiKey.objects.get(public_id=created["id"])
    assert secret not in (row.secret_hash, row.name, row.created_by)
    # The secret works for the inference API.
    assert client_for(secret).get("/v1/models").status_code == 200


def test_a_key_is_listed_and_retrieved_without_its_secret(
    admin: SchemaCheckedClient, api_key: CreatedKey
) -> None:
    listed = admin.get("/api/v1/keys").json()
    assert {k["id"] for k in listed["results"]} >= {api_key.key.public_id}
    assert all("secret" not in k for k in listed["results"])
    detail = admin.get(f"/api/v1/keys/{api_key.key.public_id}").json()
    assert detail["name"] == "app key"
    assert detail["last_used_at"] is None
    assert "secret" not in detail


def test_keys_are_filtered_by_status_team_and_scope(
    admin: SchemaCheckedClient, api_key: CreatedKey, other_team: Team
) -> None:
    research = _create(admin, team=other_team.public_id)
    revoked = _create(admin)
    assert admin.post(f"/api/v1/keys/{revoked['id']}/revoke").status_code == 200

    def ids(query: str) -> set[str]:
        response = admin.get(f"/api/v1/keys?{query}")
        assert response.status_code == 200, response.json()
        return {k["id"] for k in response.json()["results"]}

    assert ids(f"team={other_team.public_id}") == {research["id"]}
    assert revoked["id"] in ids("status=revoked")
    assert revoked["id"] not in ids("status=active")
    assert api_key.key.public_id in ids("status=active")
    assert ids("scope=manage:workspace") == {
        k.public_id for k in ApiKey.objects.all() if "manage:workspace" in k.scopes
    }
    assert admin.get("/api/v1/keys?status=bogus").status_code == 400


def test_a_forged_cursor_and_a_body_that_is_no_object_are_400s(
    admin: SchemaCheckedClient,
) -> None:
    forged = admin.get("/api/v1/keys?cursor=%E2%9C%97")
    assert forged.status_code == 400
    assert forged.json()["error"]["param"] == "cursor"
    for body in ("[1, 2]", '"a key"', "null"):
        response = admin.post("/api/v1/keys", body, content_type="application/json")
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_keys_are_paginated_with_a_cursor(admin: SchemaCheckedClient) -> None:
    made = {_create(admin, name=f"k{i}")["id"] for i in range(5)}
    seen: list[str] = []
    url = "/api/v1/keys?limit=2"
    while url:
        page = admin.get(url).json()
        assert len(page["results"]) <= 2
        seen += [k["id"] for k in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen))
    assert made <= set(seen)


def test_a_key_update_changes_exactly_the_given_fields_and_null_clears(
    admin: SchemaCheckedClient,
) -> None:
    created = _create(admin, rpm_limit=10, ipm_limit=5)
    response = admin.patch(
        f"/api/v1/keys/{created['id']}",
        {"rpm_limit": None, "allowed_aliases": [], "name": "ci"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["rpm_limit"], body["ipm_limit"]) == ("ci", None, 5)
    event = AuditEvent.objects.filter(event="key.updated", target_id=created["id"]).get()
    assert event.data == {"fields": ["allowed_aliases", "name", "rpm_limit"]}
    assert event.actor.startswith("key:")


def test_bad_key_input_is_a_400_naming_the_field_and_changes_nothing(
    admin: SchemaCheckedClient,
) -> None:
    before = ApiKey.objects.count()
    cases = [
        ({"name": ""}, "name"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "rpm_limit": 0}, "rpm_limit"),
        ({"name": "x", "rpm_limit": "many"}, "rpm_limit"),
        ({"name": "x", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "allowed_aliases": ["no-such-alias"]}, "allowed_aliases"),
        ({"name": "x", "colour": "blue"}, "colour"),
    ]
    for body, param in cases:
        response = admin.post("/api/v1/keys", body, format="json")
        assert response.status_code == 400, (body, response.json())
        assert response.json()["error"]["param"] == param, (body, response.json())
    malformed = admin.post("/api/v1/keys", "{not json", content_type="application/json")
    assert malformed.status_code == 400
    assert ApiKey.objects.count() == before


def test_a_revoked_key_is_refused_on_the_next_request(admin: SchemaCheckedClient) -> None:
    created = _create(admin)
    teammate = client_for(created["secret"])
    assert teammate.get("/v1/models").status_code == 200  # cached now
    revoked = admin.post(f"/api/v1/keys/{created['id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    response = teammate.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked."
    assert AuditEvent.objects.filter(event="key.revoked", target_id=created["id"]).count() == 1
    again = admin.patch(f"/api/v1/keys/{created['id']}", {"name": "x"}, format="json")
    assert again.status_code == 409


def test_rotation_keeps_the_old_secret_for_the_grace_period_then_stops_it(
    admin: SchemaCheckedClient,
) -> None:
    created = _create(admin)
    old = client_for(created["secret"])
    with time_machine.travel(timezone.now(), tick=False) as clock:
        response = admin.post(
            f"/api/v1/keys/{created['id']}/rotate", {"grace_period_seconds": 3600}, format="json"
        )
        assert response.status_code == 200, response.json()
        rotated = response.json()
        assert rotated["id"] == created["id"]
        assert rotated["secret"] != created["secret"]
        assert rotated["secret"].startswith(f"apk_{created['id']}_")
        new = client_for(rotated["secret"])
        assert old.get("/v1/models").status_code == 200
        assert new.get("/v1/models").status_code == 200
        clock.shift(timedelta(seconds=3599))
        assert old.get("/v1/models").status_code == 200
        clock.shift(timedelta(seconds=1))
        assert old.get("/v1/models").status_code == 401
        assert new.get("/v1/models").status_code == 200
    event = AuditEvent.objects.get(event="key.rotated", target_id=created["id"])
    assert event.data == {"grace_seconds": 3600}
    assert rotated["secret"] not in admin.get(f"/api/v1/keys/{created['id']}").content.decode()


def test_rotation_without_grace_stops_the_old_secret_at_once(admin: SchemaCheckedClient) -> None:
    created = _create(admin)
    old = client_for(created["secret"])
    assert old.get("/v1/models").status_code == 200
    rotated = admin.post(f"/api/v1/keys/{created['id']}/rotate", {}, format="json").json()
    assert old.get("/v1/models").status_code == 401
    assert client_for(rotated["secret"]).get("/v1/models").status_code == 200


@pytest.mark.parametrize("grace", [-1, 86401, "soon"])
def test_a_grace_period_outside_0_to_24_hours_is_refused(
    admin: SchemaCheckedClient, grace: object
) -> None:
    created = _create(admin)
    response = admin.post(
        f"/api/v1/keys/{created['id']}/rotate", {"grace_period_seconds": grace}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "grace_period_seconds"
    assert client_for(created["secret"]).get("/v1/models").status_code == 200


def test_revoking_a_key_in_its_grace_period_stops_both_secrets(
    admin: SchemaCheckedClient,
) -> None:
    created = _create(admin)
    rotated = admin.post(
        f"/api/v1/keys/{created['id']}/rotate", {"grace_period_seconds": 600}, format="json"
    ).json()
    admin.post(f"/api/v1/keys/{created['id']}/revoke")
    assert client_for(created["secret"]).get("/v1/models").status_code == 401
    assert client_for(rotated["secret"]).get("/v1/models").status_code == 401


def test_an_images_only_key_gets_403_on_the_management_api(client: APIClient) -> None:
    for path in ("/api/v1/keys", "/api/v1/workspace", "/api/v1/usage", "/api/v1/budgets"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "missing_scope"


def test_the_management_api_without_a_key_is_a_401(db: None) -> None:
    response = APIClient().get("/api/v1/keys")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_listing_keys_takes_a_fixed_number_of_queries(
    admin: SchemaCheckedClient,
    django_assert_max_num_queries,
    team: Team,
) -> None:
    for i in range(10):
        _create(admin, name=f"k{i}")
    with django_assert_max_num_queries(4):
        assert len(admin.get("/api/v1/keys").json()["results"]) == 11
