"""DRF permissions by key scope."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from aperture.errors import PermissionError_
from tenants.key_auth import KeyPrincipal


def request_principal(request: Request) -> KeyPrincipal:
    """The authenticated key of a view guarded by one of the scope permissions below."""
    principal = request.user
    if not isinstance(principal, KeyPrincipal):
        raise PermissionError_("This route needs an API key.")
    return principal


class _ScopeRequired(BasePermission):
    scope: str = ""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, KeyPrincipal):
            return False  # DRF answers 401: no key was presented
        if not principal.has_scope(self.scope):
            raise PermissionError_(
                f"This API key lacks the '{self.scope}' scope.", code="missing_scope"
            )
        return True


class ImagesScope(_ScopeRequired):
    scope = "images"


class ManageTeamScope(_ScopeRequired):
    scope = "manage:team"


class ManageWorkspaceScope(_ScopeRequired):
    scope = "manage:workspace"


class ManageScope(BasePermission):
    """Either management scope; what the key then sees is narrowed by tenants/selectors.py."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, KeyPrincipal):
            return False
        if not (principal.has_scope("manage:team") or principal.has_scope("manage:workspace")):
            raise PermissionError_(
                "This API key lacks a management scope ('manage:team' or 'manage:workspace').",
                code="missing_scope",
            )
        return True


class ManageWorkspaceForWrites(ManageScope):
    """Reads with either management scope; writes only with `manage:workspace`."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not super().has_permission(request, view):
            return False
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        if not request_principal(request).has_scope("manage:workspace"):
            raise PermissionError_(
                "This API key lacks the 'manage:workspace' scope.", code="missing_scope"
            )
        return True
