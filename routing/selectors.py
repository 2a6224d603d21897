"""Reads for routing, always scoped by the caller's workspace."""

from django.db.models import Q, QuerySet

from aperture.errors import ModelNotFound, PermissionError_
from routing import route_cache
from routing.models import Deployment, ModelAlias
from tenants.key_auth import KeyPrincipal


def _candidate_aliases(workspace_id: int) -> QuerySet[ModelAlias]:
    return ModelAlias.objects.filter(
        Q(workspace_id=workspace_id) | Q(workspace__isnull=True), enabled=True
    )


def aliases_visible(principal: KeyPrincipal) -> list[ModelAlias]:
    """The aliases this key may call: workspace aliases shadow platform ones of the same name."""
    chosen: dict[str, ModelAlias] = {}
    for alias in _candidate_aliases(principal.workspace_id):
        if not principal.may_use_alias(alias.name):
            continue
        if alias.name not in chosen or alias.workspace_id is not None:
            chosen[alias.name] = alias
    return [chosen[name] for name in sorted(chosen)]


def _find_alias(workspace_id: int, name: str) -> ModelAlias | None:
    matches = list(_candidate_aliases(workspace_id).filter(name=name)[:2])
    if not matches:
        return None
    return next((a for a in matches if a.workspace_id is not None), matches[0])


def alias_resolve(principal: KeyPrincipal, name: str) -> ModelAlias:
    """The alias `name` as this key sees it: 404 if it does not exist, 403 if not allowed."""
    workspace_id = principal.workspace_id
    alias = route_cache.cached(
        ("alias", workspace_id, name), lambda: _find_alias(workspace_id, name)
    )
    if alias is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    if not principal.may_use_alias(alias.name):
        raise PermissionError_(
            f"This API key is not allowed to use the model '{name}'.",
            param="model",
            code="model_not_allowed",
        )
    return alias


def deployments_for(alias: ModelAlias) -> list[Deployment]:
    """Enabled deployments with enabled credentials, in fallback order."""
    return list(
        Deployment.objects.filter(alias=alias, enabled=True, credential__enabled=True)
        .select_related("credential")
        .order_by("priority", "id")
    )


def first_deployments(alias_ids: list[int]) -> dict[int, Deployment]:
    """Each alias's first enabled deployment, in one query (for /v1/models)."""
    first: dict[int, Deployment] = {}
    rows = (
        Deployment.objects.filter(alias_id__in=alias_ids, enabled=True, credential__enabled=True)
        .select_related("credential")
        .order_by("alias_id", "priority", "id")
    )
    for deployment in rows:
        first.setdefault(deployment.alias_id, deployment)
    return first
