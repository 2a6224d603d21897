"""Writes for routing: credentials (encrypted), aliases and deployments, each audited."""

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model

from aperture import crypto
from routing import health
from routing.models import Deployment, ModelAlias, Provider, ProviderCredential
from routing.providers.auth import auth_for
from tenants.audit import audit_record
from tenants.models import Workspace

# What credential_update may change (never the secret: see credential_rotate_secret).
CREDENTIAL_FIELDS = {
    "name",
    "provider",
    "base_url",
    "api_version",
    "extra_headers",
    "options",
    "passthrough_enabled",
    "passthrough_path_prefixes",
    "passthrough_notes",
    "free",
    "enabled",
}
# Top-level routes of the gateway itself: a credential of that name would shadow them.
RESERVED_CREDENTIAL_NAMES = frozenset(
    {"v1", "api", "admin", "healthz", "readyz", "metrics", "static", "media", "files", "docs"}
)


def check_credential_name(name: str) -> None:
    if name.lower() in RESERVED_CREDENTIAL_NAMES:
        raise ValidationError(
            {"name": f"'{name}' is a route of the gateway itself; choose another name."}
        )


def clean_passthrough_prefixes(prefixes: Any) -> list[str]:
    """Path prefixes a credential is open on: absolute native paths, e.g. /v1/images/."""
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise ValidationError(
            {"passthrough_path_prefixes": "A list of paths, e.g. ['/v1/images/']."}
        )
    for prefix in prefixes:
        if not prefix.startswith("/") or any(s in (".", "..") for s in prefix.split("/")):
            raise ValidationError(
                {"passthrough_path_prefixes": f"{prefix!r} must be an absolute path like /v1/."}
            )
    return list(prefixes)


def _assign(instance: Model, fields: dict[str, Any], allowed: set[str]) -> None:
    """Set `fields` on `instance`, refusing any field outside `allowed`."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError(
            f"Cannot update {sorted(unknown)} on a {instance._meta.verbose_name}."
        )
    for name, value in fields.items():
        setattr(instance, name, value)


def _check_provider(provider: str) -> None:
    if provider not in Provider.values:
        raise ValidationError({"provider": f"Unknown provider {provider!r}."})


@transaction.atomic
def credential_create(
    *,
    actor: str,
    name: str,
    provider: str,
    secret: str,
    base_url: str = "",
    workspace: Workspace | None = None,
    api_version: str = "",
    extra_headers: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
    passthrough_enabled: bool = False,
    passthrough_path_prefixes: list[str] | None = None,
    passthrough_notes: str = "",
    free: bool = False,
    enabled: bool = True,
) -> ProviderCredential:
    check_credential_name(name)
    _check_provider(provider)
    credential = ProviderCredential(
        workspace=workspace,
        name=name,
        provider=provider,
        base_url=(base_url or auth_for(provider).default_base_url).rstrip("/"),
        api_version=api_version,
        extra_headers=extra_headers or {},
        options=options or {},
        passthrough_enabled=passthrough_enabled,
        passthrough_path_prefixes=clean_passthrough_prefixes(passthrough_path_prefixes or []),
        passthrough_notes=passthrough_notes,
        free=free,
        enabled=enabled,
    )
    credential.set_secret(secret)
    credential.full_clean(exclude=["secret_ciphertext"])
    credential.save()
    audit_record(
        actor=actor,
        event="credential.created",
        target=credential,
        workspace=workspace,
        data={"name": name, "provider": provider},
    )
    return credential


@transaction.atomic
def credential_update(
    *, actor: str, credential: ProviderCredential, fields: dict[str, Any]
) -> ProviderCredential:
    """Update non-secret fields (name, base_url, api_version, passthrough, enabled, ...)."""
    if "name" in fields:
        check_credential_name(fields["name"])
    if "provider" in fields:
        _check_provider(fields["provider"])
    if "base_url" in fields:
        fields = {**fields, "base_url": fields["base_url"].rstrip("/")}
    if "passthrough_path_prefixes" in fields:
        prefixes = clean_passthrough_prefixes(fields["passthrough_path_prefixes"])
        fields = {**fields, "passthrough_path_prefixes": prefixes}
    _assign(credential, fields, CREDENTIAL_FIELDS)
    credential.save()
    audit_record(
        actor=actor,
        event="credential.updated",
        target=credential,
        workspace=credential.workspace,
        data={"fields": sorted(fields)},
    )
    return credential


@transaction.atomic
def credential_rotate_secret(
    *, actor: str, credential: ProviderCredential, secret: str
) -> ProviderCredential:
    credential.set_secret(secret)
    credential.save(update_fields=["secret_ciphertext", "secret_hint", "updated_at"])
    audit_record(
        actor=actor, event="credential.rotated", target=credential, workspace=credential.workspace
    )
    return credential


def credentials_reencrypt(*, actor: str) -> int:
    """Re-encrypt every stored secret with the first encryption key; returns how many."""
    count = 0
    for pk in ProviderCredential.objects.exclude(secret_ciphertext="").values_list("pk", flat=True):
        with transaction.atomic():
            credential = ProviderCredential.objects.select_for_update().get(pk=pk)
            credential.secret_ciphertext = crypto.reencrypt(credential.secret_ciphertext)
            credential.save(update_fields=["secret_ciphertext", "updated_at"])
            count += 1
    if count:
        audit_record(
            actor=actor,
            event="credential.reencrypted",
            target=("routing.providercredential", "*"),
            data={"count": count},
        )
    return count


@transaction.atomic
def alias_create(
    *,
    actor: str,
    name: str,
    workspace: Workspace | None = None,
    description: str = "",
    strategy: str = ModelAlias.Strategy.PRIORITY,
    max_attempts: int = 2,
    retry_after_timeout: bool = False,
) -> ModelAlias:
    alias = ModelAlias.objects.create(
        workspace=workspace,
        name=name,
        description=description,
        strategy=strategy,
        max_attempts=max_attempts,
        retry_after_timeout=retry_after_timeout,
    )
    audit_record(actor=actor, event="alias.created", target=alias, workspace=workspace)
    return alias


def check_deployment_scope(alias: ModelAlias, credential: ProviderCredential) -> None:
    """A platform alias uses platform credentials; a workspace alias its own or platform ones."""
    if credential.workspace_id is None:
        return
    if credential.workspace_id != alias.workspace_id:
        raise ValidationError(
            {"credential": "This credential belongs to another workspace than the alias."}
        )


@transaction.atomic
def deployment_create(
    *,
    actor: str,
    alias: ModelAlias,
    credential: ProviderCredential,
    upstream_model: str,
    priority: int = 0,
    weight: int = 1,
    timeout_seconds: int = 120,
    connect_timeout_seconds: float = 3.0,
    enabled: bool = True,
    free: bool = False,
    options: dict[str, Any] | None = None,
) -> Deployment:
    check_deployment_scope(alias, credential)
    deployment = Deployment.objects.create(
        alias=alias,
        credential=credential,
        upstream_model=upstream_model,
        priority=priority,
        weight=weight,
        timeout_seconds=timeout_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        enabled=enabled,
        free=free,
        options=options or {},
    )
    audit_record(
        actor=actor,
        event="deployment.created",
        target=deployment,
        workspace=alias.workspace,
        data={"alias": alias.name, "credential": credential.name, "model": upstream_model},
    )
    return deployment


@transaction.atomic
def credential_delete(*, actor: str, credential: ProviderCredential) -> None:
    audit_record(
        actor=actor,
        event="credential.deleted",
        target=credential,
        workspace=credential.workspace,
        data={"name": credential.name},
    )
    credential.delete()


@transaction.atomic
def alias_update(*, actor: str, alias: ModelAlias, fields: dict[str, Any]) -> ModelAlias:
    _assign(
        alias,
        fields,
        {"description", "enabled", "strategy", "max_attempts", "retry_after_timeout"},
    )
    alias.save()
    audit_record(
        actor=actor,
        event="alias.updated",
        target=alias,
        workspace=alias.workspace,
        data={"fields": sorted(fields)},
    )
    return alias


@transaction.atomic
def alias_delete(*, actor: str, alias: ModelAlias) -> None:
    audit_record(
        actor=actor,
        event="alias.deleted",
        target=alias,
        workspace=alias.workspace,
        data={"name": alias.name},
    )
    alias.delete()


@transaction.atomic
def deployment_update(*, actor: str, deployment: Deployment, fields: dict[str, Any]) -> Deployment:
    _assign(
        deployment,
        fields,
        {
            "priority",
            "weight",
            "timeout_seconds",
            "connect_timeout_seconds",
            "enabled",
            "options",
            "free",
        },
    )
    deployment.save()
    audit_record(
        actor=actor,
        event="deployment.updated",
        target=deployment,
        workspace=deployment.alias.workspace,
        data={"fields": sorted(fields)},
    )
    return deployment


@transaction.atomic
def deployment_delete(*, actor: str, deployment: Deployment) -> None:
    audit_record(
        actor=actor,
        event="deployment.deleted",
        target=deployment,
        workspace=deployment.alias.workspace,
        data={"model": deployment.upstream_model},
    )
    deployment.delete()


# An operator's force-open lasts at most this long: longer, disable the deployment instead.
FORCE_OPEN_MAX_SECONDS = 24 * 3600


def deployment_force_open(*, actor: str, deployment: Deployment, seconds: float) -> float:
    """Take a deployment out of rotation for `seconds`: its circuit opens, and requests skip
    it unless every deployment of its alias is open. Returns when it reopens (a timestamp)."""
    if not 0 < seconds <= FORCE_OPEN_MAX_SECONDS:
        raise ValidationError(
            f"A deployment is forced open for up to {FORCE_OPEN_MAX_SECONDS // 3600} hours; "
            "to take it out for longer, disable it."
        )
    # Audited first: a refused write changes nothing. Health itself never raises; without
    # Redis it holds the state in this process only, which the audit row says.
    audit_record(
        actor=actor,
        event="deployment.forced_open",
        target=deployment,
        workspace=deployment.alias.workspace,
        data={"seconds": seconds, "health": health.mode()},
    )
    health.force_open(deployment.pk, seconds)
    return health.states([deployment.pk])[deployment.pk].open_until


def deployment_force_closed(*, actor: str, deployment: Deployment) -> None:
    """Put a deployment back into rotation now: its circuit closes, its failures are
    forgotten."""
    audit_record(
        actor=actor,
        event="deployment.forced_closed",
        target=deployment,
        workspace=deployment.alias.workspace,
        data={"health": health.mode()},
    )
    health.closed(deployment.pk)
