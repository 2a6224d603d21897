"""The workspace and team routes."""

from rest_framework.test import APIClient

from tenants.models import AuditEvent, Team, Workspace
from tenants.services import CreatedKey
from tests.openapi_check import SchemaCheckedClient
from tests.support import client_for


def test_the_workspace_is_read_by_either_management_scope(
    admin: SchemaCheckedClient, manager: SchemaCheckedClient, workspace: Workspace
) -> None:
    expected = {
        "id": workspace.public_id,
        "slug": "acme",
        "name": "Acme",
        "status": "active",
        "created_at": workspace.created_at.isoformat().replace("+00:00", "Z"),
    }
    assert admin.get("/api/v1/workspace").json() == expected
    assert manager.get("/api/v1/workspace").json() == expected


def test_teams_are_created_renamed_and_archived_with_audit_rows(
    admin: SchemaCheckedClient, workspace: Workspace
) -> None:
    created = admin.post("/api/v1/teams", {"slug": "mobile", "name": "Mobile"}, format="json")
    assert created.status_code == 201, created.json()
    team_id = created.json()["id"]
    assert created.json()["archived_at"] is None
    renamed = admin.patch(f"/api/v1/teams/{team_id}", {"name": "Mobile apps"}, format="json")
    assert renamed.json()["name"] == "Mobile apps"
    key = admin.post("/api/v1/keys", {"name": "m", "team": team_id}, format="json").json()
    assert client_for(key["secret"]).get("/v1/models").status_code == 200
    archived = admin.post(f"/api/v1/teams/{team_id}/archive")
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    refused = client_for(key["secret"]).get("/v1/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "This API key's team has been archived."
    events = list(
        AuditEvent.objects.filter(target_id=team_id)
        .order_by("created_at", "id")
        .values_list("event", flat=True)
    )
    assert events == ["team.created", "team.renamed", "team.archived"]
    no_more_keys = admin.post("/api/v1/keys", {"name": "late", "team": team_id}, format="json")
    assert no_more_keys.status_code == 409


def test_a_duplicate_team_slug_is_a_409_and_a_bad_slug_a_400(admin: SchemaCheckedClient) -> None:
    assert (
        admin.post("/api/v1/teams", {"slug": "design", "name": "Again"}, format="json").json()[
            "error"
        ]["code"]
        == "conflict"
    )
    bad = admin.post("/api/v1/teams", {"slug": "not a slug", "name": "x"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "slug"
    assert Team.objects.filter(workspace__slug="acme").count() == 1


def test_a_key_cannot_archive_its_own_team(admin: SchemaCheckedClient, team: Team) -> None:
    response = admin.post(f"/api/v1/teams/{team.public_id}/archive")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "own_team"
    team.refresh_from_db()
    assert team.archived_at is None


def test_a_team_manager_sees_only_its_team_and_cannot_change_teams(
    manager: SchemaCheckedClient, team: Team, other_team: Team
) -> None:
    listed = manager.get("/api/v1/teams").json()["results"]
    assert [t["id"] for t in listed] == [team.public_id]
    assert manager.get(f"/api/v1/teams/{other_team.public_id}").status_code == 404
    for response in (
        manager.post("/api/v1/teams", {"slug": "x", "name": "x"}, format="json"),
        manager.patch(f"/api/v1/teams/{team.public_id}", {"name": "x"}, format="json"),
        manager.post(f"/api/v1/teams/{other_team.public_id}/archive"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "missing_scope"


def test_an_images_key_cannot_read_teams(client: APIClient, api_key: CreatedKey) -> None:
    assert client.get("/api/v1/teams").status_code == 403
