"""Reads for routing, always scoped by the caller's workspace."""

from dataclasses import dataclass

from django.db.models import F, Q, QuerySet

from aperture import config_cache
from aperture.errors import ModelNotFound, NotFound, PermissionError_
from billing import pricing
from routing.models import Deployment, GuardrailPolicy, ModelAlias, ProviderCredential
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
    alias = config_cache.cached(
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


def usable_deployments(alias_ids: list[int]) -> dict[int, list[Deployment]]:
    """Each alias's enabled deployments on enabled credentials, in fallback order, in one
    query (for /v1/models: the first describes the alias, all of them its availability)."""
    found: dict[int, list[Deployment]] = {}
    rows = (
        Deployment.objects.filter(alias_id__in=alias_ids, enabled=True, credential__enabled=True)
        .select_related("credential")
        .order_by("alias_id", "priority", "id")
    )
    for deployment in rows:
        found.setdefault(deployment.alias_id, []).append(deployment)
    return found


@dataclass(frozen=True)
class PassthroughTarget:
    """A credential open for passthrough, as one caller's workspace sees it."""

    credential_id: int
    name: str
    provider: str
    base_url: str
    secret: str
    extra_headers: dict[str, str]
    path_prefixes: tuple[str, ...]
    free: bool = False  # an operator's choice: its models need no price
    # A workspace's own credential: its base URL is the tenant's, so every connection is
    # checked against private addresses (aperture/outbound.py), as for generation.
    guarded: bool = False


def passthrough_credentials(
    workspace_id: int, *, name: str | None = None, fields: tuple[str, ...] = ()
) -> list[ProviderCredential]:
    """The enabled credentials open for passthrough to a workspace, by name: its own shadows
    the platform's of the same name (even when its own is not open). One query; `fields`
    limits what is read (a listing need not decrypt anything)."""
    rows = ProviderCredential.objects.filter(
        Q(workspace_id=workspace_id) | Q(workspace__isnull=True), enabled=True
    )
    if name is not None:
        rows = rows.filter(name=name)
    if fields:
        rows = rows.only(*fields)
    chosen: dict[str, ProviderCredential] = {}
    for credential in rows:
        if credential.name not in chosen or credential.workspace_id is not None:
            chosen[credential.name] = credential
    return [chosen[n] for n in sorted(chosen) if chosen[n].passthrough_enabled]


def _find_passthrough(workspace_id: int, name: str) -> PassthroughTarget | None:
    """The workspace's own credential of that name, else the platform's one."""
    found = passthrough_credentials(workspace_id, name=name)
    if not found:
        return None
    credential = found[0]
    return PassthroughTarget(
        credential_id=credential.pk,
        name=credential.name,
        provider=credential.provider,
        base_url=credential.base_url,
        secret=credential.secret(),
        extra_headers={str(k): str(v) for k, v in (credential.extra_headers or {}).items()},
        path_prefixes=tuple(str(p) for p in credential.passthrough_path_prefixes or []),
        free=credential.free,
        guarded=credential.workspace_id is not None,
    )


def passthrough_target(principal: KeyPrincipal, name: str) -> PassthroughTarget:
    """The credential `name` open for passthrough to this key's workspace, else 404."""
    workspace_id = principal.workspace_id
    target = config_cache.cached(
        ("passthrough", workspace_id, name), lambda: _find_passthrough(workspace_id, name)
    )
    if target is None:
        raise NotFound(
            f"No provider '{name}' is open for passthrough to this workspace.",
            code="provider_not_found",
        )
    return target


def unknown_alias_names(workspace_id: int, names: list[str]) -> list[str]:
    """Those of `names` that are no alias this workspace can see (for a key's allowed list)."""
    known = set(
        ModelAlias.objects.filter(Q(workspace_id=workspace_id) | Q(workspace__isnull=True))
        .filter(name__in=names)
        .values_list("name", flat=True)
    )
    return sorted(set(names) - known)


def aliases_of_workspace(workspace_id: int) -> list[ModelAlias]:
    """Every alias a workspace has: its own (disabled too) and the platform's it does not
    shadow, by name."""
    chosen: dict[str, ModelAlias] = {}
    rows = ModelAlias.objects.filter(
        Q(workspace_id=workspace_id) | Q(workspace__isnull=True, enabled=True)
    )
    for alias in rows:
        if alias.name not in chosen or alias.workspace_id is not None:
            chosen[alias.name] = alias
    return [chosen[name] for name in sorted(chosen)]


def alias_of_workspace(workspace_id: int, public_id: str) -> ModelAlias:
    alias = next((a for a in aliases_of_workspace(workspace_id) if a.public_id == public_id), None)
    if alias is None:
        raise NotFound(f"No alias '{public_id}' in this workspace.")
    return alias


def deployments_of(alias_ids: list[int]) -> dict[int, list[Deployment]]:
    """Every deployment of these aliases with its credential, in fallback order (one query)."""
    found: dict[int, list[Deployment]] = {}
    rows = (
        Deployment.objects.filter(alias_id__in=alias_ids)
        .select_related("credential")
        .order_by("alias_id", "priority", "id")
    )
    for deployment in rows:
        found.setdefault(deployment.alias_id, []).append(deployment)
    return found


def credentials_of_workspace(workspace_id: int) -> QuerySet[ProviderCredential]:
    return ProviderCredential.objects.filter(workspace_id=workspace_id)


def credential_of_workspace(workspace_id: int, public_id: str) -> ProviderCredential:
    credential = credentials_of_workspace(workspace_id).filter(public_id=public_id).first()
    if credential is None:
        raise NotFound(f"No credential '{public_id}' in this workspace.")
    return credential


def unpriced_deployments() -> list[Deployment]:
    """Every deployment a request would reach that is refused as `model_not_priced`: enabled,
    on an enabled alias and credential, neither it nor its credential marked free, and no
    price for its provider and model (matched as the provider matches ids, by case).

    An operator-wide read for the admin and `manage.py apply`, not scoped to a workspace: one
    query for the deployments, and the prices per provider from the configuration cache."""
    rows = (
        Deployment.objects.filter(
            enabled=True,
            free=False,
            alias__enabled=True,
            credential__enabled=True,
            credential__free=False,
        )
        .select_related("alias__workspace", "credential__workspace")
        .order_by("alias__workspace__slug", "alias__name", "priority", "id")
    )
    return [d for d in rows if not pricing.has_price(d.credential.provider, d.upstream_model)]


def unpriced_description(deployment: Deployment) -> str:
    """One unpriced deployment as the admin and `manage.py apply` name it."""
    alias, credential = deployment.alias, deployment.credential
    scope = alias.workspace.slug if alias.workspace else "platform"
    return (
        f"alias {alias.name} ({scope}) → credential {credential.name} "
        f"({credential.provider}): model {deployment.upstream_model}"
    )


def guardrails_of_workspace(workspace_id: int) -> QuerySet[GuardrailPolicy]:
    """The platform's enabled policies (those applied to this workspace), then every one of
    the workspace's own, each by name."""
    return (
        GuardrailPolicy.objects.filter(
            Q(workspace_id=workspace_id) | Q(workspace__isnull=True, enabled=True)
        )
        .select_related("credential")
        .order_by(F("workspace_id").asc(nulls_first=True), "name")
    )


def guardrail_of_workspace(workspace_id: int, public_id: str) -> GuardrailPolicy:
    policy = guardrails_of_workspace(workspace_id).filter(public_id=public_id).first()
    if policy is None:
        raise NotFound(f"No guardrail '{public_id}' in this workspace.")
    return policy
