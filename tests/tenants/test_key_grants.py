"""A key never grants more than it holds: scopes, teams, aliases, rate limits, expiry."""

from datetime import timedelta

import pytest
from django.utils import timezone

from aperture.errors import PermissionError_
from routing.models import ModelAlias
from tenants import services
from tenants.grants import Grant, check_grant
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey, Team
from tenants.services import CreatedKey
from tests.openapi_check import SchemaCheckedClient, checked_client_for

ACTOR = "system:tests"


def _principal(**fields: object) -> KeyPrincipal:
    base: dict[str, object] = {
        "key_id": 1,
        "public_id": "p",
        "team_id": 1,
        "workspace_id": 1,
        "scopes": ("manage:team",),
        "allowed_aliases": (),
        "rpm_limit": None,
        "ipm_limit": None,
    }
    return KeyPrincipal(**{**base, **fields})  # type: ignore[arg-type]


def _grant(**fields: object) -> Grant:
    base: dict[str, object] = {
        "scopes": ("images",),
        "allowed_aliases": (),
        "rpm_limit": None,
        "ipm_limit": None,
        "expires_at": None,
    }
    return Grant(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("grantor", "grant", "param"),
    [
        ({}, {"scopes": ("manage:workspace",)}, "scopes"),
        ({"allowed_aliases": ("a",)}, {}, "allowed_aliases"),
        ({"allowed_aliases": ("a",)}, {"allowed_aliases": ("a", "b")}, "allowed_aliases"),
        ({"rpm_limit": 60}, {}, "rpm_limit"),
        ({"rpm_limit": 60}, {"rpm_limit": 61}, "rpm_limit"),
        ({"ipm_limit": 5}, {"ipm_limit": 6}, "ipm_limit"),
        ({"expires_at": timezone.now() + timedelta(days=1)}, {}, "expires_at"),
    ],
)
def test_a_grant_beyond_the_grantor_is_refused_naming_what(
    grantor: dict[str, object], grant: dict[str, object], param: str
) -> None:
    with pytest.raises(PermissionError_) as refused:
        check_grant(_principal(**grantor), _grant(**grant))
    assert refused.value.param == param
    assert refused.value.code == "exceeds_own_grant"


def test_a_grant_within_the_grantor_passes() -> None:
    soon = timezone.now() + timedelta(days=1)
    grantor = _principal(allowed_aliases=("a", "b"), rpm_limit=60, ipm_limit=5, expires_at=soon)
    check_grant(
        grantor,
        _grant(
            scopes=("images", "manage:team"),
            allowed_aliases=("a",),
            rpm_limit=60,
            ipm_limit=1,
            expires_at=soon,
        ),
    )
    check_grant(_principal(scopes=("manage:workspace",)), _grant(scopes=tuple(ApiKey.Scope.values)))


def _limited_manager(team: Team, **fields: object) -> SchemaCheckedClient:
    created = services.key_create(
        actor=ACTOR,
        team=team,
        name="lead",
        scopes=["manage:team"],
        **fields,  # type: ignore[arg-type]
    )
    return checked_client_for(created.secret)


def test_a_team_manager_mints_images_keys_for_its_own_team_only(
    manager: SchemaCheckedClient, team: Team, other_team: Team
) -> None:
    ok = manager.post("/api/v1/keys", {"name": "teammate"}, format="json")
    assert ok.status_code == 201
    assert ok.json()["team"]["id"] == team.public_id
    workspace_key = manager.post(
        "/api/v1/keys", {"name": "x", "scopes": ["manage:workspace"]}, format="json"
    )
    assert workspace_key.status_code == 403
    assert workspace_key.json()["error"]["code"] == "exceeds_own_grant"
    foreign = manager.post(
        "/api/v1/keys", {"name": "x", "team": other_team.public_id}, format="json"
    )
    assert foreign.status_code == 404
    assert ApiKey.objects.filter(team=other_team).count() == 0
    assert [k.scopes for k in ApiKey.objects.filter(name="x")] == []


def test_a_rate_limited_manager_cannot_mint_or_widen_past_its_own_limits(
    team: Team,
) -> None:
    lead = _limited_manager(team, rpm_limit=60)
    for body in ({"name": "x"}, {"name": "x", "rpm_limit": 61}):
        refused = lead.post("/api/v1/keys", body, format="json")
        assert refused.status_code == 403, body
        assert refused.json()["error"]["param"] == "rpm_limit"
    made = lead.post("/api/v1/keys", {"name": "ok", "rpm_limit": 60}, format="json")
    assert made.status_code == 201
    widened = lead.patch(f"/api/v1/keys/{made.json()['id']}", {"rpm_limit": None}, format="json")
    assert widened.status_code == 403
    assert ApiKey.objects.get(public_id=made.json()["id"]).rpm_limit == 60


def test_an_alias_limited_manager_only_grants_those_aliases(
    team: Team, platform_alias: ModelAlias
) -> None:
    lead = _limited_manager(team, allowed_aliases=["demo-image"])
    assert lead.post("/api/v1/keys", {"name": "x"}, format="json").status_code == 403
    ok = lead.post("/api/v1/keys", {"name": "x", "allowed_aliases": ["demo-image"]}, format="json")
    assert ok.status_code == 201


def test_a_team_manager_cannot_rotate_revoke_or_change_a_workspace_key_in_its_team(
    manager: SchemaCheckedClient, admin_key: CreatedKey
) -> None:
    key_id = admin_key.key.public_id
    for response in (
        manager.post(f"/api/v1/keys/{key_id}/rotate", {"grace_period_seconds": 60}, format="json"),
        manager.post(f"/api/v1/keys/{key_id}/revoke"),
        manager.patch(f"/api/v1/keys/{key_id}", {"name": "mine now"}, format="json"),
    ):
        assert response.status_code == 403
        assert "secret" not in response.json()
    admin_key.key.refresh_from_db()
    assert admin_key.key.revoked_at is None
    assert admin_key.key.name == "workspace admin"


def test_a_workspace_admin_mints_any_scope_in_any_team(
    admin: SchemaCheckedClient, other_team: Team
) -> None:
    response = admin.post(
        "/api/v1/keys",
        {
            "name": "research admin",
            "team": other_team.public_id,
            "scopes": ["images", "manage:team", "manage:workspace"],
        },
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["scopes"] == ["images", "manage:team", "manage:workspace"]
