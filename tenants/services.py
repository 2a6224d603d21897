"""Writes for tenancy: workspaces, teams and keys. Each takes an actor and writes an audit row."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants import key_auth
from tenants.audit import audit_record
from tenants.keys import generate_secret
from tenants.models import ApiKey, Team, Workspace

VALID_SCOPES = frozenset(ApiKey.Scope.values)


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown to the creator once, never stored


@transaction.atomic
def workspace_create(*, actor: str, slug: str, name: str) -> Workspace:
    workspace = Workspace.objects.create(slug=slug, name=name)
    audit_record(actor=actor, event="workspace.created", target=workspace, workspace=workspace)
    return workspace


@transaction.atomic
def workspace_set_status(*, actor: str, workspace: Workspace, status: str) -> Workspace:
    if status not in Workspace.Status.values:
        raise ValidationError(f"Unknown workspace status {status!r}.")
    previous = workspace.status
    workspace.status = status
    workspace.save(update_fields=["status", "updated_at"])
    audit_record(
        actor=actor,
        event="workspace.suspended"
        if status == Workspace.Status.SUSPENDED
        else "workspace.activated",
        target=workspace,
        workspace=workspace,
        data={"from": previous, "to": status},
    )
    forget_cached_keys(
        ApiKey.objects.filter(workspace=workspace).values_list("public_id", flat=True)
    )
    return workspace


@transaction.atomic
def workspace_rename(*, actor: str, workspace: Workspace, name: str) -> Workspace:
    workspace.name = name
    workspace.save(update_fields=["name", "updated_at"])
    audit_record(actor=actor, event="workspace.renamed", target=workspace, workspace=workspace)
    return workspace


@transaction.atomic
def team_rename(*, actor: str, team: Team, name: str) -> Team:
    team.name = name
    team.save(update_fields=["name", "updated_at"])
    audit_record(actor=actor, event="team.renamed", target=team, workspace=team.workspace)
    return team


@transaction.atomic
def team_create(*, actor: str, workspace: Workspace, slug: str, name: str) -> Team:
    team = Team.objects.create(workspace=workspace, slug=slug, name=name)
    audit_record(actor=actor, event="team.created", target=team, workspace=workspace)
    return team


@transaction.atomic
def team_archive(*, actor: str, team: Team) -> Team:
    team.archived_at = timezone.now()
    team.save(update_fields=["archived_at", "updated_at"])
    audit_record(actor=actor, event="team.archived", target=team, workspace=team.workspace)
    forget_cached_keys(team.api_keys.values_list("public_id", flat=True))
    return team


def _clean_scopes(scopes: Iterable[str]) -> list[str]:
    cleaned = sorted(set(scopes))
    unknown = [s for s in cleaned if s not in VALID_SCOPES]
    if unknown or not cleaned:
        raise ValidationError(
            f"Scopes must be a non-empty subset of {sorted(VALID_SCOPES)}; got {list(scopes)!r}."
        )
    return cleaned


@transaction.atomic
def key_create(
    *,
    actor: str,
    team: Team,
    name: str,
    scopes: Iterable[str] = (ApiKey.Scope.IMAGES,),
    allowed_aliases: Iterable[str] = (),
    rpm_limit: int | None = None,
    ipm_limit: int | None = None,
    expires_at: datetime | None = None,
) -> CreatedKey:
    new = generate_secret()
    key = ApiKey.objects.create(
        public_id=new.public_id,
        secret_hash=new.secret_hash,
        workspace=team.workspace,
        team=team,
        name=name,
        scopes=_clean_scopes(scopes),
        allowed_aliases=sorted(set(allowed_aliases)),
        rpm_limit=rpm_limit,
        ipm_limit=ipm_limit,
        expires_at=expires_at,
        created_by=actor,
    )
    audit_record(
        actor=actor,
        event="key.created",
        target=key,
        workspace=team.workspace,
        data={"name": name, "team": team.slug, "scopes": key.scopes},
    )
    return CreatedKey(key=key, secret=new.secret)


@transaction.atomic
def key_update(
    *,
    actor: str,
    key: ApiKey,
    name: str | None = None,
    scopes: Iterable[str] | None = None,
    allowed_aliases: Iterable[str] | None = None,
    rpm_limit: int | None = None,
    ipm_limit: int | None = None,
    expires_at: datetime | None = None,
) -> ApiKey:
    """Update the given fields; None leaves a field unchanged."""
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    if scopes is not None:
        changes["scopes"] = _clean_scopes(scopes)
    if allowed_aliases is not None:
        changes["allowed_aliases"] = sorted(set(allowed_aliases))
    if rpm_limit is not None:
        changes["rpm_limit"] = rpm_limit
    if ipm_limit is not None:
        changes["ipm_limit"] = ipm_limit
    if expires_at is not None:
        changes["expires_at"] = expires_at
    for field, value in changes.items():
        setattr(key, field, value)
    key.save()
    audit_record(
        actor=actor,
        event="key.updated",
        target=key,
        workspace=key.workspace,
        data={"fields": sorted(changes)},
    )
    forget_cached_keys([key.public_id])
    return key


@transaction.atomic
def key_set_rate_limits(
    *, actor: str, key: ApiKey, rpm_limit: int | None, ipm_limit: int | None
) -> ApiKey:
    """Set both limits (None removes one)."""
    key.rpm_limit, key.ipm_limit = rpm_limit, ipm_limit
    key.save(update_fields=["rpm_limit", "ipm_limit", "updated_at"])
    audit_record(
        actor=actor,
        event="key.rate_limits_set",
        target=key,
        workspace=key.workspace,
        data={"rpm": rpm_limit, "ipm": ipm_limit},
    )
    forget_cached_keys([key.public_id])
    return key


@transaction.atomic
def key_revoke(*, actor: str, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at", "updated_at"])
        audit_record(actor=actor, event="key.revoked", target=key, workspace=key.workspace)
    forget_cached_keys([key.public_id])
    return key


def forget_cached_keys(public_ids: Iterable[str]) -> None:
    """Drop cached auth entries now and again once the change is committed.

    The second drop covers a request that re-cached the old row between the two.
    """
    ids = list(public_ids)
    if ids:
        key_auth.forget(ids)
        transaction.on_commit(lambda: key_auth.forget(ids))
