"""A key never grants more than it holds: scopes, teams, aliases, rate limits, expiry."""

from datetime import timedelta

import pytest
from django.utils import timezone

from aperture.errors import PermissionError_
from routing.models import ModelAlias
from tenants import key_auth, services
from tenants.grants import Grant, check_grant
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey, AuditEvent, Team
from tenants.services import CreatedKey
from tests.openapi_check import SchemaCheckedClient, checked_client_for
from tests.support import client_for

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
        "workspace_id": 1,
        "team_id": 1,
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
        ({}, {"team_id": 2}, "team"),
        ({"scopes": ("manage:workspace",)}, {"workspace_id": 2}, "team"),
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
    check_grant(
        _principal(scopes=("manage:workspace",)),
        _grant(scopes=tuple(ApiKey.Scope.values), team_id=2),
    )


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


# --- Rotate, revoke and change obey the same rule: only keys within the actor's own grant --

# Each kind of restriction a management key may carry: the field it answers with when the
# key acts on a key without it, and the restriction itself (also what the "narrow" action
# sets on the target, which would bring it within the grant).
SOON = timedelta(hours=2)
RESTRICTIONS: dict[str, tuple[str, dict[str, object]]] = {
    "aliases": ("allowed_aliases", {"allowed_aliases": ["demo-image"]}),
    "rpm": ("rpm_limit", {"rpm_limit": 5}),
    "ipm": ("ipm_limit", {"ipm_limit": 5}),
    "expiry": ("expires_at", {}),
}
ACTIONS = ("rotate", "revoke", "rename", "narrow")


def _restricted(team: Team, scope: str, restriction: str) -> CreatedKey:
    _, fields = RESTRICTIONS[restriction]
    if restriction == "expiry":
        fields = {"expires_at": timezone.now() + SOON}
    return services.key_create(
        actor=ACTOR,
        team=team,
        name="limited lead",
        scopes=[scope],
        **fields,  # type: ignore[arg-type]
    )


def _act(client: SchemaCheckedClient, action: str, key_id: str, narrowing: dict[str, object]):
    url = f"/api/v1/keys/{key_id}"
    if action == "rotate":
        return client.post(f"{url}/rotate", {"grace_period_seconds": 86400}, format="json")
    if action == "revoke":
        return client.post(f"{url}/revoke")
    if action == "rename":
        return client.patch(url, {"name": "mine now"}, format="json")
    return client.patch(url, narrowing, format="json")


def _expected_message(param: str, grantor: ApiKey) -> str:
    if param == "allowed_aliases":
        return (
            "This key is limited to the aliases ['demo-image']; a key it manages must be "
            "limited to some of them."
        )
    if param in ("rpm_limit", "ipm_limit"):
        return f"This key's own {param} is 5; a key it manages needs one of at most 5."
    assert grantor.expires_at is not None
    return (
        f"This key expires at {grantor.expires_at.isoformat()}; a key it manages must expire "
        "no later."
    )


def _unchanged(target: CreatedKey) -> None:
    row = ApiKey.objects.get(pk=target.key.pk)
    assert (row.secret_hash, row.previous_secret_hash, row.revoked_at, row.name) == (
        target.key.secret_hash,
        "",
        None,
        target.key.name,
    )
    assert (row.allowed_aliases, row.rpm_limit, row.ipm_limit, row.expires_at) == (
        [],
        None,
        None,
        None,
    )
    assert not AuditEvent.objects.filter(
        target_id=target.key.public_id, actor__startswith="key:"
    ).exists()
    assert key_auth.authenticate_secret(target.secret).key_id == target.key.pk


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("restriction", list(RESTRICTIONS))
@pytest.mark.parametrize(
    ("scope", "target_scopes"),
    [("manage:team", ["images"]), ("manage:workspace", ["manage:workspace"])],
    ids=["team-key", "workspace-key"],
)
def test_a_restricted_key_cannot_act_on_an_unrestricted_key_of_its_team(
    team: Team,
    platform_alias: ModelAlias,
    scope: str,
    target_scopes: list[str],
    restriction: str,
    action: str,
) -> None:
    grantor = _restricted(team, scope, restriction)
    target = services.key_create(actor=ACTOR, team=team, name="unrestricted", scopes=target_scopes)
    param, narrowing = RESTRICTIONS[restriction]
    if restriction == "expiry":
        narrowing = {"expires_at": (timezone.now() + timedelta(hours=1)).isoformat()}
    response = _act(checked_client_for(grantor.secret), action, target.key.public_id, narrowing)
    assert response.status_code == 403, response.json()
    assert response.json() == {
        "error": {
            "message": _expected_message(param, ApiKey.objects.get(pk=grantor.key.pk)),
            "type": "permission_error",
            "param": param,
            "code": "exceeds_own_grant",
        }
    }
    _unchanged(target)


@pytest.mark.parametrize("action", ACTIONS)
def test_a_team_manager_cannot_act_on_a_key_with_scopes_it_could_not_grant(
    manager: SchemaCheckedClient, team: Team, action: str
) -> None:
    target = services.key_create(
        actor=ACTOR, team=team, name="unrestricted", scopes=["images", "manage:workspace"]
    )
    response = _act(manager, action, target.key.public_id, {"rpm_limit": 5})
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "This key cannot manage a key with the scopes ['manage:workspace'].",
            "type": "permission_error",
            "param": "scopes",
            "code": "exceeds_own_grant",
        }
    }
    _unchanged(target)


@pytest.mark.parametrize("action", ACTIONS)
def test_a_team_manager_does_not_see_a_key_of_another_team(
    manager: SchemaCheckedClient, other_team: Team, action: str
) -> None:
    target = services.key_create(actor=ACTOR, team=other_team, name="theirs")
    response = _act(manager, action, target.key.public_id, {"rpm_limit": 5})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    _unchanged(target)


@pytest.mark.parametrize(
    ("scope", "target_scopes"),
    [("manage:team", ["images"]), ("manage:workspace", ["manage:workspace"])],
    ids=["team-key", "workspace-key"],
)
def test_a_restricted_key_rotates_revokes_and_changes_keys_within_its_grant(
    team: Team, platform_alias: ModelAlias, scope: str, target_scopes: list[str]
) -> None:
    expires_at = timezone.now() + SOON
    limits: dict[str, object] = {
        "allowed_aliases": ["demo-image"],
        "rpm_limit": 5,
        "ipm_limit": 5,
        "expires_at": expires_at,
    }
    grantor = services.key_create(
        actor=ACTOR,
        team=team,
        name="limited lead",
        scopes=[scope],
        **limits,  # type: ignore[arg-type]
    )
    lead = checked_client_for(grantor.secret)
    target = services.key_create(
        actor=ACTOR,
        team=team,
        name="within",
        scopes=target_scopes,
        **{**limits, "rpm_limit": 2},  # type: ignore[arg-type]
    )
    key_url = f"/api/v1/keys/{target.key.public_id}"
    rotated = lead.post(f"{key_url}/rotate", {"grace_period_seconds": 60}, format="json")
    assert rotated.status_code == 200, rotated.json()
    assert rotated.json()["secret"].startswith(f"apk_{target.key.public_id}_")
    changed = lead.patch(key_url, {"rpm_limit": 5, "name": "renamed"}, format="json")
    assert changed.status_code == 200, changed.json()
    assert (changed.json()["name"], changed.json()["rpm_limit"]) == ("renamed", 5)
    revoked = lead.post(f"{key_url}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert list(
        AuditEvent.objects.filter(target_id=target.key.public_id)
        .order_by("id")
        .values_list("event", "actor")
    ) == [
        ("key.created", ACTOR),
        ("key.rotated", f"key:{grantor.key.public_id}"),
        ("key.updated", f"key:{grantor.key.public_id}"),
        ("key.revoked", f"key:{grantor.key.public_id}"),
    ]


def test_a_restricted_workspace_key_cannot_archive_a_team_holding_a_wider_key(
    team: Team, other_team: Team
) -> None:
    grantor = _restricted(team, "manage:workspace", "rpm")
    wider = services.key_create(actor=ACTOR, team=other_team, name="unrestricted")
    response = checked_client_for(grantor.secret).post(
        f"/api/v1/teams/{other_team.public_id}/archive"
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "This key's own rpm_limit is 5; a key it manages needs one of at most 5.",
            "type": "permission_error",
            "param": "rpm_limit",
            "code": "exceeds_own_grant",
        }
    }
    other_team.refresh_from_db()
    assert other_team.archived_at is None
    assert client_for(wider.secret).get("/v1/models").status_code == 200
