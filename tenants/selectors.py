"""Reads for the management API, always scoped by the caller's key.

A `manage:workspace` key sees its whole workspace; a `manage:team` key only its own team.
Anything outside that scope does not exist for the caller: a 404, never a 403 that would
confirm the id.
"""

from datetime import datetime

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from aperture.errors import NotFound
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey, AuditEvent, Team, Workspace


def team_scope(principal: KeyPrincipal) -> int | None:
    """The one team a key is limited to, or None for a key that manages the workspace."""
    if principal.has_scope(ApiKey.Scope.MANAGE_WORKSPACE):
        return None
    return principal.team_id


def workspace_of(principal: KeyPrincipal) -> Workspace:
    return Workspace.objects.get(pk=principal.workspace_id)


def teams_visible(principal: KeyPrincipal) -> QuerySet[Team]:
    teams = Team.objects.filter(workspace_id=principal.workspace_id)
    only_team = team_scope(principal)
    return teams if only_team is None else teams.filter(pk=only_team)


def team_get(principal: KeyPrincipal, public_id: str, *, param: str | None = None) -> Team:
    team = teams_visible(principal).select_related("workspace").filter(public_id=public_id).first()
    if team is None:
        raise NotFound(f"No team '{public_id}' in this workspace.", param=param)
    return team


def own_team(principal: KeyPrincipal) -> Team:
    return Team.objects.select_related("workspace").get(pk=principal.team_id)


def keys_visible(principal: KeyPrincipal) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(workspace_id=principal.workspace_id)
    only_team = team_scope(principal)
    return keys if only_team is None else keys.filter(team_id=only_team)


def key_get(principal: KeyPrincipal, public_id: str, *, param: str | None = None) -> ApiKey:
    key = (
        keys_visible(principal)
        .select_related("team", "workspace")
        .filter(public_id=public_id)
        .first()
    )
    if key is None:
        raise NotFound(f"No key '{public_id}' in this workspace.", param=param)
    return key


def keys_with_scope(keys: QuerySet[ApiKey], scope: str) -> QuerySet[ApiKey]:
    if connection.features.supports_json_field_contains:
        return keys.filter(scopes__contains=[scope])
    # SQLite (the embedded default) has no JSON containment; a workspace's keys are few.
    return keys.filter(pk__in=[k.pk for k in keys.only("pk", "scopes") if scope in k.scopes])


def keys_filtered(
    principal: KeyPrincipal,
    *,
    team_id: str | None = None,
    scope: str | None = None,
    status: str | None = None,
) -> QuerySet[ApiKey]:
    """The keys the caller sees, of one team (404 if not visible), holding a scope, and in a
    status: active, revoked or expired."""
    keys = keys_visible(principal)
    if team_id is not None:
        keys = keys.filter(team=team_get(principal, team_id, param="team"))
    if scope is not None:
        keys = keys_with_scope(keys, scope)
    now = timezone.now()
    not_revoked = Q(revoked_at__isnull=True) | Q(revoked_at__gt=now)
    if status == "revoked":
        keys = keys.filter(revoked_at__lte=now)
    elif status == "expired":
        keys = keys.filter(not_revoked, expires_at__lte=now)
    elif status == "active":
        keys = keys.filter(not_revoked).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    return keys


def audit_events(
    principal: KeyPrincipal,
    *,
    event: str | None = None,
    actor: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """The workspace's audit rows, by event, actor or target, in [since, until)."""
    events = AuditEvent.objects.filter(workspace_id=principal.workspace_id)
    exact = {"event": event, "actor": actor, "target_id": target_id}
    events = events.filter(**{field: value for field, value in exact.items() if value is not None})
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events
