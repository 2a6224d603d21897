"""Aliases a workspace defines for itself, on its own credentials only."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from aperture.errors import Conflict, NotFound, PermissionError_
from routing import services
from routing.models import ModelAlias, ProviderCredential
from tenants.models import Workspace


@dataclass(frozen=True)
class DeploymentSpec:
    credential_id: str  # the credential's public id
    upstream_model: str
    priority: int = 0
    weight: int = 1
    timeout_seconds: int = 120


@transaction.atomic
def workspace_alias_create(
    *,
    actor: str,
    workspace: Workspace,
    name: str,
    description: str,
    deployments: list[DeploymentSpec],
) -> ModelAlias:
    if ModelAlias.objects.filter(workspace=workspace, name=name).exists():
        raise Conflict(f"The workspace already has an alias '{name}'.", param="name")
    credentials = {
        c.public_id: c
        for c in ProviderCredential.objects.filter(
            workspace=workspace, public_id__in=[d.credential_id for d in deployments]
        )
    }
    for position, spec in enumerate(deployments):
        if spec.credential_id not in credentials:
            raise NotFound(
                f"No credential '{spec.credential_id}' in this workspace: a workspace alias "
                "uses the workspace's own credentials (GET /api/v1/credentials).",
                param=f"deployments.{position}.credential",
            )
    alias = services.alias_create(
        actor=actor, workspace=workspace, name=name, description=description
    )
    for spec in deployments:
        services.deployment_create(
            actor=actor,
            alias=alias,
            credential=credentials[spec.credential_id],
            upstream_model=spec.upstream_model,
            priority=spec.priority,
            weight=spec.weight,
            timeout_seconds=spec.timeout_seconds,
        )
    return alias


def workspace_alias_delete(*, actor: str, alias: ModelAlias) -> None:
    if alias.workspace_id is None:
        raise PermissionError_(
            "Platform aliases are managed by the gateway's operators.", code="operator_only"
        )
    services.alias_delete(actor=actor, alias=alias)
