"""Aliases: `GET /api/v1/aliases[/{id}]` (with capabilities); a workspace's own aliases are
created and deleted with `manage:workspace`."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aperture.api_fields import validated
from aperture.openapi import listed
from routing import health_report, selectors
from routing.api.serializers import AliasCreateIn, AliasOut
from routing.models import Deployment, ModelAlias
from routing.models_api import model_object
from routing.workspace_aliases import (
    DeploymentSpec,
    workspace_alias_create,
    workspace_alias_delete,
)
from tenants.permissions import ManageWorkspaceForWrites, request_principal
from tenants.selectors import workspace_of
from tenants.services import actor_for

TAGS = ["Aliases"]


def _usable(deployments: list[Deployment]) -> list[Deployment]:
    return [d for d in deployments if d.enabled and d.credential.enabled]


def _alias_out(
    alias: ModelAlias, deployments: list[Deployment], cooling: set[int] | None = None
) -> dict[str, Any]:
    """`cooling`: the aliases whose every circuit is open (read here if not given)."""
    usable = _usable(deployments)
    if cooling is None:
        cooling = health_report.all_open({alias.pk: usable})
    first = usable[0] if usable else None
    described = model_object(alias, first, all_open=alias.pk in cooling)["aperture"]
    own = alias.workspace_id is not None
    return dict(
        AliasOut(
            {
                "id": alias.public_id,
                "name": alias.name,
                "description": alias.description,
                "owner": "workspace" if own else "platform",
                "enabled": alias.enabled,
                "available": described["available"],
                "provider": described.get("provider"),
                "capabilities": described.get("capabilities"),
                "deployments": deployments if own else [],
                "created_at": alias.created_at,
            }
        ).data
    )


class AliasListView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(
        tags=TAGS,
        responses=listed("AliasList", AliasOut),
        operation_id="aliases_list",
        summary="Aliases this workspace can use, with what each can do",
    )
    def get(self, request: Request) -> Response:
        aliases = selectors.aliases_of_workspace(request_principal(request).workspace_id)
        deployments = selectors.deployments_of([a.pk for a in aliases])
        cooling = health_report.all_open(
            {a.pk: _usable(deployments.get(a.pk, [])) for a in aliases}
        )
        data = [_alias_out(a, deployments.get(a.pk, []), cooling) for a in aliases]
        return Response({"data": data})

    @extend_schema(
        tags=TAGS,
        request=AliasCreateIn,
        responses={201: AliasOut},
        summary="Create a workspace alias on the workspace's own credentials",
    )
    def post(self, request: Request) -> Response:
        principal = request_principal(request)
        f = validated(AliasCreateIn, request.data)
        alias = workspace_alias_create(
            actor=actor_for(principal),
            workspace=workspace_of(principal),
            name=f["name"],
            description=f["description"],
            deployments=[
                DeploymentSpec(
                    credential_id=d["credential"],
                    upstream_model=d["upstream_model"],
                    priority=d["priority"],
                    weight=d["weight"],
                    timeout_seconds=d["timeout_seconds"],
                )
                for d in f["deployments"]
            ],
        )
        deployments = selectors.deployments_of([alias.pk]).get(alias.pk, [])
        return Response(_alias_out(alias, deployments), status=201)


class AliasDetailView(APIView):
    permission_classes = [ManageWorkspaceForWrites]

    @extend_schema(tags=TAGS, responses=AliasOut, summary="Retrieve an alias")
    def get(self, request: Request, alias_id: str) -> Response:
        alias = selectors.alias_of_workspace(request_principal(request).workspace_id, alias_id)
        deployments = selectors.deployments_of([alias.pk]).get(alias.pk, [])
        return Response(_alias_out(alias, deployments))

    @extend_schema(tags=TAGS, responses={204: None}, summary="Delete a workspace alias")
    def delete(self, request: Request, alias_id: str) -> Response:
        principal = request_principal(request)
        alias = selectors.alias_of_workspace(principal.workspace_id, alias_id)
        workspace_alias_delete(actor=actor_for(principal), alias=alias)
        return Response(status=204)
