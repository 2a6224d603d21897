"""Which alias names a workspace has, for checking a key's allowed list.

Aliases belong to `routing/`, a layer above this one, so tenants cannot ask it directly:
routing registers its lookup here when its app is ready (`RoutingConfig.ready`).
"""

from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

# (workspace id, names) -> those of the names that are no alias the workspace can see.
UnknownAliasNames = Callable[[int, list[str]], list[str]]

_lookup: UnknownAliasNames | None = None


def register(lookup: UnknownAliasNames) -> None:
    """Install the lookup; registering again replaces it (one owner of aliases)."""
    global _lookup
    _lookup = lookup


def unknown_alias_names(workspace_id: int, names: list[str]) -> list[str]:
    if _lookup is None:
        raise ImproperlyConfigured("No alias lookup registered: is 'routing' in INSTALLED_APPS?")
    return _lookup(workspace_id, names)
