"""An outsider (a key of another workspace) never sees a foreign object."""

from rest_framework.test import APIClient

from routing import services
from routing.models import ModelAlias, ProviderCredential
from tenants.models import Workspace

ACTOR = "system:tests"


def test_an_outsider_does_not_see_another_workspaces_alias(
    client: APIClient,
    outsider: APIClient,
    workspace: Workspace,
    local_credential: ProviderCredential,
    platform_alias: ModelAlias,
) -> None:
    private = services.alias_create(actor=ACTOR, name="acme-private", workspace=workspace)
    services.deployment_create(
        actor=ACTOR, alias=private, credential=local_credential, upstream_model="local-image"
    )
    mine = [m["id"] for m in client.get("/v1/models").json()["data"]]
    theirs = [m["id"] for m in outsider.get("/v1/models").json()["data"]]
    assert mine == ["acme-private", "demo-image"]
    assert theirs == ["demo-image"]
    response = outsider.get("/v1/models/acme-private")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models/acme-private").status_code == 200


def test_a_workspace_alias_shadows_the_platform_alias_of_the_same_name(
    client: APIClient, outsider: APIClient, workspace: Workspace, platform_alias: ModelAlias
) -> None:
    services.alias_create(actor=ACTOR, name="demo-image", workspace=workspace)
    mine = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["owned_by"]) for m in mine] == [("demo-image", "workspace")]
    theirs = outsider.get("/v1/models").json()["data"]
    assert [(m["id"], m["owned_by"]) for m in theirs] == [("demo-image", "aperture")]
