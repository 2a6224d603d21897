"""Writes for tenancy: workspaces, teams and keys. Each takes an actor and writes an audit row."""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from aperture.errors import Conflict
from aperture.webhooks import NO_SIGNING_KEY, url_problem
from tenants import key_auth
from tenants.audit import audit_record
from tenants.grants import Grant, check_grant, check_may_manage
from tenants.key_auth import KeyPrincipal
from tenants.keys import generate_secret
from tenants.models import ApiKey, Team, Workspace

VALID_SCOPES = frozenset(ApiKey.Scope.values)
MAX_ROTATION_GRACE_SECONDS = 24 * 3600
# What key_change may set; scopes and team are fixed for a key's life.
KEY_CHANGEABLE_FIELDS = frozenset(
    {
        "name",
        "allowed_aliases",
        "rpm_limit",
        "ipm_limit",
        "per_user_limit_images",
        "per_user_rpm",
        "expires_at",
        "webhook_url",
    }
)
# Those of them that are part of what a key holds (tenants/grants.py).
GRANT_FIELDS = KEY_CHANGEABLE_FIELDS - {"name", "webhook_url"}


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
def workspace_set_price_multiplier(
    *, actor: str, workspace: Workspace, multiplier: Decimal
) -> Workspace:
    """The workspace's markup on provider prices, from its next request on (its keys carry
    it, so their cached lookups are dropped)."""
    field = Workspace._meta.get_field("price_multiplier")
    multiplier = field.clean(multiplier, workspace)  # its range and its four places
    previous = Workspace.objects.values_list("price_multiplier", flat=True).get(pk=workspace.pk)
    workspace.price_multiplier = multiplier
    workspace.save(update_fields=["price_multiplier", "updated_at"])
    audit_record(
        actor=actor,
        event="workspace.price_multiplier_changed",
        target=workspace,
        workspace=workspace,
        data={"from": str(previous), "to": str(multiplier)},
    )
    forget_cached_keys(
        ApiKey.objects.filter(workspace=workspace).values_list("public_id", flat=True)
    )
    return workspace


@transaction.atomic
def team_rename(*, actor: str, team: Team, name: str) -> Team:
    team.name = name
    team.save(update_fields=["name", "updated_at"])
    audit_record(actor=actor, event="team.renamed", target=team, workspace=team.workspace)
    return team


@transaction.atomic
def team_create(*, actor: str, workspace: Workspace, slug: str, name: str) -> Team:
    if Team.objects.filter(workspace=workspace, slug=slug).exists():
        raise Conflict(f"The workspace already has a team '{slug}'.", param="slug")
    team = Team.objects.create(workspace=workspace, slug=slug, name=name)
    audit_record(actor=actor, event="team.created", target=team, workspace=workspace)
    return team


@transaction.atomic
def team_archive(*, actor: str, team: Team) -> Team:
    if team.archived_at is not None:
        return team
    team.archived_at = timezone.now()
    team.save(update_fields=["archived_at", "updated_at"])
    audit_record(actor=actor, event="team.archived", target=team, workspace=team.workspace)
    forget_cached_keys(team.api_keys.values_list("public_id", flat=True))
    return team


def clean_key_webhook_url(workspace: Workspace, url: str) -> str:
    """Where a key's finished async jobs go (docs/webhooks.md), or "" for nowhere: checked
    by the private-address guard (aperture/webhooks.py), and only once the workspace has a
    signing secret (a webhook is never sent unsigned)."""
    if not url:
        return ""
    if not workspace.webhook_secret_ciphertext:  # first: it needs no DNS lookup
        raise ValidationError({"webhook_url": NO_SIGNING_KEY})
    problem = url_problem(url)
    if problem is not None:
        raise ValidationError({"webhook_url": problem})
    return url


def _webhook_host(url: str) -> str:
    """What the audit trail keeps of a webhook URL: its host (a query may carry a token)."""
    return urlsplit(url).hostname or ""


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
    per_user_limit_images: int | None = None,
    per_user_rpm: int | None = None,
    webhook_url: str = "",
) -> CreatedKey:
    if webhook_url:
        webhook_url = clean_key_webhook_url(team.workspace, webhook_url)
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
        per_user_limit_images=per_user_limit_images,
        per_user_rpm=per_user_rpm,
        expires_at=expires_at,
        webhook_url=webhook_url,
        created_by=actor,
    )
    data: dict[str, Any] = {"name": name, "team": team.slug, "scopes": key.scopes}
    if webhook_url:
        data["webhook_host"] = _webhook_host(webhook_url)
    audit_record(actor=actor, event="key.created", target=key, workspace=team.workspace, data=data)
    forget_cached_keys([key.public_id])  # the id may be cached as unknown (tenants/key_auth.py)
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
    webhook_url: str | None = None,
) -> ApiKey:
    """Update the given fields; None leaves a field unchanged ("" clears the webhook)."""
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
    if webhook_url is not None:
        changes["webhook_url"] = clean_key_webhook_url(key.workspace, webhook_url)
    for field, value in changes.items():
        setattr(key, field, value)
    key.save()
    audit_record(
        actor=actor,
        event="key.updated",
        target=key,
        workspace=key.workspace,
        data=_update_data(changes),
    )
    forget_cached_keys([key.public_id])
    return key


@transaction.atomic
def key_change(*, actor: str, key: ApiKey, fields: dict[str, Any]) -> ApiKey:
    """Set exactly the given fields (None clears a limit or the expiry)."""
    unknown = set(fields) - KEY_CHANGEABLE_FIELDS
    if unknown:
        raise ValidationError(f"Cannot change {sorted(unknown)} on a key.")
    if key.revoked_at is not None:
        raise Conflict("This key is revoked; create a new one instead.", code="key_revoked")
    changes = dict(fields)
    if "allowed_aliases" in changes:
        changes["allowed_aliases"] = sorted(set(changes["allowed_aliases"]))
    if "webhook_url" in changes:
        changes["webhook_url"] = clean_key_webhook_url(key.workspace, changes["webhook_url"] or "")
    for field, value in changes.items():
        setattr(key, field, value)
    key.save(update_fields=[*sorted(changes), "updated_at"])
    audit_record(
        actor=actor,
        event="key.updated",
        target=key,
        workspace=key.workspace,
        data=_update_data(changes),
    )
    forget_cached_keys([key.public_id])
    return key


def _update_data(changes: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"fields": sorted(changes)}
    if "webhook_url" in changes:
        data["webhook_host"] = _webhook_host(changes["webhook_url"])
    return data


@transaction.atomic
def key_rotate(*, actor: str, key: ApiKey, grace_seconds: int) -> CreatedKey:
    """A new secret for the same key; the old one works `grace_seconds` more (0: stops now).

    Only the secret this rotation replaces gets a grace period: one replaced earlier stops.
    """
    if not 0 <= grace_seconds <= MAX_ROTATION_GRACE_SECONDS:
        raise ValidationError(
            {"grace_period_seconds": f"Must be from 0 to {MAX_ROTATION_GRACE_SECONDS}."}
        )
    if key.revoked_at is not None:
        raise Conflict("This key is revoked; create a new one instead.", code="key_revoked")
    now = timezone.now()
    new = generate_secret(public_id=key.public_id)
    key.previous_secret_hash = key.secret_hash if grace_seconds else ""
    key.previous_secret_expires_at = (
        now + timedelta(seconds=grace_seconds) if grace_seconds else None
    )
    key.secret_hash = new.secret_hash
    key.rotated_at = now
    key.save(
        update_fields=[
            "previous_secret_hash",
            "previous_secret_expires_at",
            "secret_hash",
            "rotated_at",
            "updated_at",
        ]
    )
    audit_record(
        actor=actor,
        event="key.rotated",
        target=key,
        workspace=key.workspace,
        data={"grace_seconds": grace_seconds},
    )
    forget_cached_keys([key.public_id])
    return CreatedKey(key=key, secret=new.secret)


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
        # A secret still in its rotation grace period goes with the key.
        key.previous_secret_hash, key.previous_secret_expires_at = "", None
        key.save(
            update_fields=[
                "revoked_at",
                "previous_secret_hash",
                "previous_secret_expires_at",
                "updated_at",
            ]
        )
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


# --- On behalf of a management key: the grant rules apply (tenants/grants.py) -------------


def actor_for(principal: KeyPrincipal) -> str:
    return f"key:{principal.public_id}"


def key_issue(
    *,
    grantor: KeyPrincipal,
    team: Team,
    name: str,
    scopes: Iterable[str],
    allowed_aliases: Iterable[str] = (),
    rpm_limit: int | None = None,
    ipm_limit: int | None = None,
    expires_at: datetime | None = None,
    per_user_limit_images: int | None = None,
    per_user_rpm: int | None = None,
    webhook_url: str = "",
) -> CreatedKey:
    """A key minted by another key: never holding more than the grantor does."""
    scopes, allowed_aliases = _clean_scopes(scopes), sorted(set(allowed_aliases))
    if team.archived_at is not None:
        raise Conflict(f"The team '{team.slug}' is archived.", param="team", code="team_archived")
    check_grant(
        grantor,
        Grant(
            scopes=tuple(scopes),
            allowed_aliases=tuple(allowed_aliases),
            rpm_limit=rpm_limit,
            ipm_limit=ipm_limit,
            expires_at=expires_at,
            workspace_id=team.workspace_id,
            team_id=team.pk,
            per_user_limit_images=per_user_limit_images,
            per_user_rpm=per_user_rpm,
        ),
    )
    return key_create(
        actor=actor_for(grantor),
        team=team,
        name=name,
        scopes=scopes,
        allowed_aliases=allowed_aliases,
        rpm_limit=rpm_limit,
        ipm_limit=ipm_limit,
        expires_at=expires_at,
        per_user_limit_images=per_user_limit_images,
        per_user_rpm=per_user_rpm,
        webhook_url=webhook_url,
    )


# Every action of one key on another goes through check_may_manage first: the key acted on
# must be within the actor's own grant (tenants/grants.py), whatever the action.


def key_edit(*, grantor: KeyPrincipal, key: ApiKey, fields: dict[str, Any]) -> ApiKey:
    """key_change by another key: the key must be one it may manage, and stay within grant."""
    check_may_manage(grantor, key)
    granted = {f: v for f, v in fields.items() if f in GRANT_FIELDS}
    if "allowed_aliases" in granted:
        granted["allowed_aliases"] = tuple(granted["allowed_aliases"])
    check_grant(grantor, replace(Grant.of(key), **granted))
    return key_change(actor=actor_for(grantor), key=key, fields=fields)


def key_rotate_by(*, grantor: KeyPrincipal, key: ApiKey, grace_seconds: int) -> CreatedKey:
    check_may_manage(grantor, key)
    return key_rotate(actor=actor_for(grantor), key=key, grace_seconds=grace_seconds)


def key_revoke_by(*, grantor: KeyPrincipal, key: ApiKey) -> ApiKey:
    check_may_manage(grantor, key)
    return key_revoke(actor=actor_for(grantor), key=key)


def team_archive_by(*, grantor: KeyPrincipal, team: Team) -> Team:
    """Archiving a team stops every key of it: each key still in use must be one the
    grantor may manage, as if it revoked them one by one."""
    if team.pk == grantor.team_id:
        raise Conflict(
            "This key belongs to that team; archiving it would lock this key out. "
            "Use a key of another team.",
            code="own_team",
        )
    now = timezone.now()
    in_use = team.api_keys.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    for key in in_use.order_by("id"):
        check_may_manage(grantor, key)
    return team_archive(actor=actor_for(grantor), team=team)
