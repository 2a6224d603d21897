"""The isolation matrix: every management route and method, against every object id.

A key of another workspace gets 404 for each object of this one (and changes nothing); a
`manage:team` key gets 403 or 404 for other teams' objects; ids given in bodies and
filters are checked the same way.
"""

from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import reverse

from billing.models import Budget
from routing import services as routing_services
from routing.models import ModelAlias, Provider, ProviderCredential
from tenants import services
from tenants.models import ApiKey, AuditEvent, Team, Workspace
from tests.openapi_check import SchemaCheckedClient

ACTOR = "system:tests"


@dataclass
class Objects:
    team: Team
    key: ApiKey
    budget: Budget
    alias: ModelAlias
    credential: ProviderCredential


@pytest.fixture
def research(workspace: Workspace, other_team: Team) -> Objects:
    """Objects of acme's research team (and acme-wide ones), none of the design team's."""
    key = services.key_create(actor=ACTOR, team=other_team, name="research app").key
    budget = Budget.objects.create(
        workspace=workspace, scope="key", key=key, period="month", limit_micro=1_000_000
    )
    credential = routing_services.credential_create(
        actor=ACTOR,
        workspace=workspace,
        name="acme-openai",
        provider=Provider.OPENAI,
        secret="sk-acme-secret-1234",
    )
    alias = routing_services.alias_create(actor=ACTOR, name="acme-image", workspace=workspace)
    routing_services.deployment_create(
        actor=ACTOR, alias=alias, credential=credential, upstream_model="gpt-image-1"
    )
    return Objects(other_team, key, budget, alias, credential)


# (method, url name, the object kind in the path, body)
ROUTES: list[tuple[str, str, str, Any]] = [
    ("get", "api-team", "team", None),
    ("patch", "api-team", "team", {"name": "Taken"}),
    ("post", "api-team-archive", "team", None),
    ("get", "api-key", "key", None),
    ("patch", "api-key", "key", {"name": "taken"}),
    ("post", "api-key-rotate", "key", {"grace_period_seconds": 60}),
    ("post", "api-key-revoke", "key", None),
    ("get", "api-budget", "budget", None),
    ("patch", "api-budget", "budget", {"limit_usd": "0.5"}),
    ("delete", "api-budget", "budget", None),
    ("get", "api-alias", "alias", None),
    ("delete", "api-alias", "alias", None),
    ("get", "api-credential", "credential", None),
    ("delete", "api-credential", "credential", None),
    ("post", "api-credential-rotate", "credential", {"secret": "sk-stolen-0000"}),
    ("post", "api-credential-test", "credential", None),
]
# (method, path, body or query, the object kind whose id it names)
REFERENCES: list[tuple[str, str, dict[str, Any]]] = [
    ("get", "/api/v1/keys", {"team": "team"}),
    ("get", "/api/v1/usage", {"team": "team"}),
    ("get", "/api/v1/usage", {"key": "key"}),
    ("get", "/api/v1/usage/summary", {"key": "key"}),
    ("get", "/api/v1/usage/summary", {"team": "team"}),
    ("post", "/api/v1/keys", {"name": "x", "team": "team"}),
    ("post", "/api/v1/budgets", {"team": "team", "limit_usd": "1"}),
    ("post", "/api/v1/budgets", {"key": "key", "limit_usd": "1"}),
    (
        "post",
        "/api/v1/aliases",
        {"name": "x", "deployments": [{"credential": "credential", "upstream_model": "m"}]},
    ),
]


def _id(objects: Objects, kind: str) -> str:
    return getattr(objects, kind).public_id


def _fill(spec: dict[str, object], objects: Objects) -> dict[str, object]:
    """The body or query with each object kind ("team", "key", …) replaced by its id."""
    kinds = set(Objects.__annotations__)
    filled: dict[str, object] = {}
    for field, value in spec.items():
        if isinstance(value, list):
            filled[field] = [_fill(item, objects) for item in value]
        else:
            filled[field] = _id(objects, value) if value in kinds else value
    return filled


def _call(client: SchemaCheckedClient, method: str, path: str, body: Any) -> Any:
    if method == "get":
        return client.get(path, body or {})
    return getattr(client, method)(path, body, format="json")


def _state(workspace: Workspace) -> tuple[object, ...]:
    """Everything a refused call must leave as it was."""
    return (
        list(
            ApiKey.objects.filter(workspace=workspace)
            .values_list("public_id", "name", "secret_hash", "revoked_at")
            .order_by("pk")
        ),
        list(Team.objects.filter(workspace=workspace).values_list("name", "archived_at")),
        list(Budget.objects.filter(workspace=workspace).values_list("limit_micro")),
        ModelAlias.objects.filter(workspace=workspace).count(),
        list(
            ProviderCredential.objects.filter(workspace=workspace).values_list("secret_ciphertext")
        ),
        AuditEvent.objects.filter(workspace=workspace).count(),
    )


def test_a_key_of_another_workspace_gets_404_for_every_object_of_this_one(
    outsider_admin: SchemaCheckedClient, research: Objects, workspace: Workspace, team: Team
) -> None:
    before = _state(workspace)
    for method, name, kind, body in ROUTES:
        path = reverse(name, args=[_id(research, kind)])
        response = _call(outsider_admin, method, path, body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["error"]["type"] == "invalid_request_error"
    design = Objects(team, research.key, research.budget, research.alias, research.credential)
    for objects in (research, design):
        for method, path, spec in REFERENCES:
            body = _fill(spec, objects)
            response = _call(outsider_admin, method, path, body)
            assert response.status_code == 404, (method, path, body, response.content)
    assert _state(workspace) == before


def test_another_workspaces_lists_never_show_this_ones_objects(
    outsider_admin: SchemaCheckedClient, research: Objects
) -> None:
    ours = {
        research.team.public_id,
        research.key.public_id,
        research.budget.public_id,
        research.alias.public_id,
        research.credential.public_id,
    }
    for path in (
        "/api/v1/teams",
        "/api/v1/keys",
        "/api/v1/budgets",
        "/api/v1/aliases",
        "/api/v1/credentials",
        "/api/v1/audit-events",
        "/api/v1/usage",
        "/api/v1/usage/summary?group_by=key",
    ):
        response = outsider_admin.get(path)
        assert response.status_code == 200, path
        text = response.content.decode()
        assert not any(public_id in text for public_id in ours), path


def test_a_team_manager_gets_403_or_404_for_other_teams_objects(
    manager: SchemaCheckedClient, research: Objects, workspace: Workspace
) -> None:
    before = _state(workspace)
    team_owned = {"team", "key", "budget", "credential"}
    for method, name, kind, body in ROUTES:
        if kind not in team_owned:
            continue
        path = reverse(name, args=[_id(research, kind)])
        response = _call(manager, method, path, body)
        assert response.status_code in (403, 404), (method, path, response.content)
    for method, path, spec in REFERENCES:
        if "deployments" in spec:
            continue  # aliases are the workspace's, not a team's: covered by 403 below
        body = _fill(spec, research)
        response = _call(manager, method, path, body)
        assert response.status_code in (403, 404), (method, path, body, response.content)
    alias = manager.post(
        "/api/v1/aliases",
        {
            "name": "x",
            "deployments": [{"credential": research.credential.public_id, "upstream_model": "m"}],
        },
        format="json",
    )
    assert alias.status_code == 403
    assert _state(workspace) == before
