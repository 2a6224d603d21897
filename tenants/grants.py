"""What a management key may grant or act on: never more than it holds itself.

`manage:workspace` holds every scope in its workspace; `manage:team` holds `images` and
`manage:team` in its own team. Beyond scopes, a key's own limits bound what it grants and
which keys it may rotate, revoke or change: a key limited to some aliases, a rate (its own or
per end user), or an expiry cannot mint, widen or take over a key past them. `check_grant` is
that one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from aperture.errors import PermissionError_
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey

WORKSPACE_SCOPES = frozenset(ApiKey.Scope.values)
TEAM_SCOPES = frozenset({ApiKey.Scope.IMAGES, ApiKey.Scope.MANAGE_TEAM})


def grantable_scopes(grantor: KeyPrincipal) -> frozenset[str]:
    if grantor.has_scope(ApiKey.Scope.MANAGE_WORKSPACE):
        return WORKSPACE_SCOPES
    if grantor.has_scope(ApiKey.Scope.MANAGE_TEAM):
        return TEAM_SCOPES
    return frozenset()


@dataclass(frozen=True)
class Grant:
    """What a key holds, or would hold after a create or an update."""

    scopes: tuple[str, ...]
    allowed_aliases: tuple[str, ...]
    rpm_limit: int | None
    ipm_limit: int | None
    expires_at: datetime | None
    workspace_id: int
    team_id: int
    per_user_limit_images: int | None = None
    per_user_rpm: int | None = None

    @classmethod
    def of(cls, key: ApiKey) -> Grant:
        return cls(
            scopes=tuple(key.scopes),
            allowed_aliases=tuple(key.allowed_aliases),
            rpm_limit=key.rpm_limit,
            ipm_limit=key.ipm_limit,
            expires_at=key.expires_at,
            workspace_id=key.workspace_id,
            team_id=key.team_id,
            per_user_limit_images=key.per_user_limit_images,
            per_user_rpm=key.per_user_rpm,
        )


Action = Literal["grant", "manage"]


def _refuse(message: str, param: str) -> PermissionError_:
    return PermissionError_(message, param=param, code="exceeds_own_grant")


def check_grant(grantor: KeyPrincipal, grant: Grant, *, action: Action = "grant") -> None:
    """403 `exceeds_own_grant` if `grant` holds anything the grantor does not: a key it
    would mint or change to (`grant`), or a key it would rotate, revoke or change (`manage`)."""
    subject = "a key it grants" if action == "grant" else "a key it manages"
    beyond = sorted(set(grant.scopes) - grantable_scopes(grantor))
    if beyond:
        what = "grant the scopes" if action == "grant" else "manage a key with the scopes"
        raise _refuse(f"This key cannot {what} {beyond}.", "scopes")
    own_team_only = not grantor.has_scope(ApiKey.Scope.MANAGE_WORKSPACE)
    if grant.workspace_id != grantor.workspace_id or (
        own_team_only and grant.team_id != grantor.team_id
    ):
        verb = "grants" if action == "grant" else "manages"
        raise _refuse(
            f"This key {verb} keys of its own {'team' if own_team_only else 'workspace'} only.",
            "team",
        )
    if grantor.allowed_aliases:
        wider = not grant.allowed_aliases or not set(grant.allowed_aliases) <= set(
            grantor.allowed_aliases
        )
        if wider:
            raise _refuse(
                "This key is limited to the aliases "
                f"{sorted(grantor.allowed_aliases)}; {subject} must be limited to "
                "some of them.",
                "allowed_aliases",
            )
    for name, own, granted in (
        ("rpm_limit", grantor.rpm_limit, grant.rpm_limit),
        ("ipm_limit", grantor.ipm_limit, grant.ipm_limit),
        ("per_user_limit_images", grantor.per_user_limit_images, grant.per_user_limit_images),
        ("per_user_rpm", grantor.per_user_rpm, grant.per_user_rpm),
    ):
        if own is not None and (granted is None or granted > own):
            raise _refuse(
                f"This key's own {name} is {own}; {subject} needs one of at most {own}.", name
            )
    if grantor.expires_at is not None and (
        grant.expires_at is None or grant.expires_at > grantor.expires_at
    ):
        raise _refuse(
            f"This key expires at {grantor.expires_at.isoformat()}; {subject} must expire "
            "no later.",
            "expires_at",
        )


def check_may_manage(grantor: KeyPrincipal, key: ApiKey) -> None:
    """403 unless `key` is within the grantor's own grant: rotating it would hand over its
    secret, revoking or changing it would act on a key the grantor could not have minted."""
    check_grant(grantor, Grant.of(key), action="manage")
