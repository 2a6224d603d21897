"""What a management key may grant: never more than it holds itself.

`manage:workspace` holds every scope in its workspace; `manage:team` holds `images` and
`manage:team` in its own team. Beyond scopes, a key's own limits bound what it grants: a
creator limited to some aliases, a rate, or an expiry cannot mint or widen a key past them.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

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
    """What a key would hold after a create or an update."""

    scopes: tuple[str, ...]
    allowed_aliases: tuple[str, ...]
    rpm_limit: int | None
    ipm_limit: int | None
    expires_at: datetime | None


def _refuse(message: str, param: str) -> PermissionError_:
    return PermissionError_(message, param=param, code="exceeds_own_grant")


def check_grant(grantor: KeyPrincipal, grant: Grant) -> None:
    """403 `exceeds_own_grant` if `grant` holds anything the grantor does not."""
    beyond = sorted(set(grant.scopes) - grantable_scopes(grantor))
    if beyond:
        raise _refuse(f"This key cannot grant the scopes {beyond}.", "scopes")
    if grantor.allowed_aliases:
        wider = not grant.allowed_aliases or not set(grant.allowed_aliases) <= set(
            grantor.allowed_aliases
        )
        if wider:
            raise _refuse(
                "This key is limited to the aliases "
                f"{sorted(grantor.allowed_aliases)}; a key it grants must be limited to "
                "some of them.",
                "allowed_aliases",
            )
    for name, own, granted in (
        ("rpm_limit", grantor.rpm_limit, grant.rpm_limit),
        ("ipm_limit", grantor.ipm_limit, grant.ipm_limit),
    ):
        if own is not None and (granted is None or granted > own):
            raise _refuse(
                f"This key's own {name} is {own}; a key it grants needs one of at most {own}.",
                name,
            )
    if grantor.expires_at is not None and (
        grant.expires_at is None or grant.expires_at > grantor.expires_at
    ):
        raise _refuse(
            "This key expires at "
            f"{grantor.expires_at.isoformat()}; a key it grants must expire no later.",
            "expires_at",
        )


def check_may_manage(grantor: KeyPrincipal, scopes: Iterable[str]) -> None:
    """403 if the key to be changed, rotated or revoked holds scopes the grantor could not
    grant (a team manager rotating a workspace key would receive its secret)."""
    beyond = sorted(set(scopes) - grantable_scopes(grantor))
    if beyond:
        raise PermissionError_(
            f"This key cannot manage a key with the scopes {beyond}.", code="exceeds_own_grant"
        )
