"""What a key may call through passthrough: GET /v1/passthrough and GET /api/v1/passthrough.

The rules are those of a passthrough call (routing/selectors.py, routing/passthrough/
service.py), read for every credential at once: of the enabled credentials the workspace
can see, its own shadows the platform's of the same name, and a name is listed when the
credential that wins it is open for passthrough. What is listed is what a tenant needs to
make the call — prefix, paths, where its gateway key goes, which native routes are charged
and how, the operator's notes — and never the credential's secret, base URL or the values
of its extra headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from routing import selectors
from routing.models import Provider, ProviderCredential
from routing.passthrough.headers import CALLER_KEY_HEADERS
from routing.passthrough.paths import CALLER_KEY_PARAMS
from routing.providers.auth import auth_for
from routing.providers.registry import ADAPTERS
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey

# per_image: counted and charged per image as on /v1 (a model without a price is refused);
# free: the credential is marked free; refused: the gateway cannot count the route's images,
# so it answers 400 route_not_priced.
Charge = Literal["per_image", "free", "refused"]

ALIAS_LIMITED = (
    "This API key is limited to certain models (allowed_aliases), so it may not call "
    "providers raw: passthrough would bypass that limit."
)
NO_IMAGES_SCOPE = "This API key lacks the 'images' scope, which passthrough calls need."
TEAM_ARCHIVED = "This API key's team has been archived."


@dataclass(frozen=True)
class NativeImageRoute:
    """A native route that makes images, and how a call on it is charged."""

    method: str
    path: str  # readable: {a|b} one of, [x] optional, {name} a segment, * within one, ** any
    pattern: str  # the regular expression a path must match whole
    charge: Charge


@dataclass(frozen=True)
class GatewayKey:
    """Where the caller's gateway key may go on a passthrough call."""

    native: str  # where this provider's own clients put a key, if the gateway reads it there
    accepted: tuple[str, ...]


@dataclass(frozen=True)
class PassthroughEntry:
    name: str
    prefix: str
    provider: str
    owner: Literal["workspace", "platform"]
    all_paths: bool
    path_prefixes: tuple[str, ...]
    gateway_key: GatewayKey
    upstream_auth_header: str  # the gateway sends the provider's credential in it
    extra_headers: tuple[str, ...]  # names only: the gateway adds them, values stay hidden
    free: bool
    image_routes: tuple[NativeImageRoute, ...]
    notes: str


@dataclass(frozen=True)
class PassthroughListing:
    key: str | None
    reason: str | None  # why the list is empty for this key, if it is refused passthrough
    data: tuple[PassthroughEntry, ...]
    object: str = "list"


# --- where the gateway key goes ---------------------------------------------------------

_KEY_HEADER_ORDER = ("authorization", "api-key", "x-api-key", "x-goog-api-key")


def _key_location(header: str) -> str:
    return "Authorization: Bearer <key>" if header == "authorization" else f"{header}: <key>"


def _header_rank(header: str) -> tuple[int, str]:
    order = _KEY_HEADER_ORDER.index(header) if header in _KEY_HEADER_ORDER else 99
    return order, header


ACCEPTED_KEY_LOCATIONS = tuple(
    _key_location(h) for h in sorted(CALLER_KEY_HEADERS, key=_header_rank)
) + tuple(f"?{param}=<key>" for param in sorted(CALLER_KEY_PARAMS))


def gateway_key(provider: str) -> GatewayKey:
    """The provider's own header where the gateway reads a key there (Azure's api-key,
    Google's x-goog-api-key), else a Bearer token (Black Forest Labs' x-key is not read)."""
    native = auth_for(provider).header.lower()
    location = _key_location(native if native in CALLER_KEY_HEADERS else "authorization")
    return GatewayKey(native=location, accepted=ACCEPTED_KEY_LOCATIONS)


# --- native image routes, readable ------------------------------------------------------

_NAMED_SEGMENT = re.compile(r"\(\?P<(\w+)>\[\^[^\]]*\][+*]\)")
_SEGMENT_PART = re.compile(r"\[\^[^\]]*\][+*]")
_ANYTHING = re.compile(r"\.\*")
_OPTIONAL = re.compile(r"\(\?:([^()]*)\)\?")
_GROUP = re.compile(r"\(\?:([^()]*)\)")
_EXCEPT = re.compile(r"\(\?!([^()]*)\)")
_REGEX_LEFT = re.compile(r"[\\()?+^$]|\[\^")
_LITERAL_HEAD = re.compile(r"[^\\()\[\].?*+{}^$|]*")


def _group(match: re.Match[str]) -> str:
    inner = match.group(1)
    return f"{{{inner}}}" if "|" in inner else inner


def readable_path(pattern: str) -> str:
    """A route's pattern as a person reads it; the pattern itself where that fails."""
    text = _NAMED_SEGMENT.sub(r"{\1}", pattern)
    text = _SEGMENT_PART.sub("*", text)
    text = _ANYTHING.sub("**", text)
    previous = None
    while previous != text:  # innermost groups first
        previous = text
        text = _GROUP.sub(_group, _OPTIONAL.sub(r"[\1]", text))
    note = ""
    excluded = _EXCEPT.search(text)
    if excluded is not None:
        head = text[: excluded.start()]
        text = head + text[excluded.end() :]
        note = f" (not {head}{excluded.group(1)}**)"
    if _REGEX_LEFT.search(text):
        return pattern
    return text + note


def _may_reach(pattern: str, prefixes: tuple[str, ...]) -> bool:
    """Whether some path the route matches may lie within the allowed prefixes (kept when
    unsure: a route is never hidden from a caller who can reach it)."""
    head = _LITERAL_HEAD.match(pattern)
    literal = head.group() if head else ""
    for prefix in prefixes or ("/",):
        bare = prefix.rstrip("/")
        within = literal == bare or literal.startswith(bare + "/")
        if not bare or within or bare.startswith(literal):
            return True
    return False


def native_image_routes(
    provider: str, *, free: bool, path_prefixes: tuple[str, ...] = ()
) -> tuple[NativeImageRoute, ...]:
    """The provider's declared image routes within the prefixes, counted ones first."""
    adapter = ADAPTERS.get(provider)
    if adapter is None:
        return ()
    declared: list[tuple[str, Charge]] = [
        *((r.path.pattern, "per_image") for r in adapter.image_routes),
        *((p.pattern, "refused") for p in adapter.uncounted_image_paths),
    ]
    return tuple(
        NativeImageRoute("POST", readable_path(pattern), pattern, "free" if free else charge)
        for pattern, charge in declared
        if _may_reach(pattern, path_prefixes)
    )


# --- the listing ------------------------------------------------------------------------

_LISTED_FIELDS = (
    "name",
    "provider",
    "workspace_id",
    "extra_headers",
    "passthrough_enabled",
    "passthrough_path_prefixes",
    "passthrough_notes",
    "free",
)


def open_credentials(workspace_id: int) -> list[ProviderCredential]:
    """The credentials open for passthrough to the workspace, as a call finds them
    (routing/selectors.py), less the local renderer, which has no native API."""
    found = selectors.passthrough_credentials(workspace_id, fields=_LISTED_FIELDS)
    return [c for c in found if c.provider != Provider.LOCAL]


def _entry(credential: ProviderCredential) -> PassthroughEntry:
    prefixes = tuple(str(p) for p in credential.passthrough_path_prefixes or [])
    return PassthroughEntry(
        name=credential.name,
        prefix=f"/{credential.name}",
        provider=credential.provider,
        owner="workspace" if credential.workspace_id is not None else "platform",
        all_paths=not prefixes,
        path_prefixes=prefixes,
        gateway_key=gateway_key(credential.provider),
        upstream_auth_header=auth_for(credential.provider).header,
        extra_headers=tuple(sorted(str(name) for name in credential.extra_headers or {})),
        free=credential.free,
        image_routes=native_image_routes(
            credential.provider, free=credential.free, path_prefixes=prefixes
        ),
        notes=credential.passthrough_notes,
    )


def _listing(workspace_id: int, *, key: str | None, reason: str | None) -> PassthroughListing:
    if reason is not None:
        return PassthroughListing(key=key, reason=reason, data=())
    entries = tuple(_entry(c) for c in open_credentials(workspace_id))
    return PassthroughListing(key=key, reason=None, data=entries)


def listing_for_principal(principal: KeyPrincipal) -> PassthroughListing:
    """For the calling key (authenticated, with the images scope)."""
    reason = ALIAS_LIMITED if principal.allowed_aliases else None
    return _listing(principal.workspace_id, key=principal.public_id, reason=reason)


def key_refusal(key: ApiKey) -> str | None:
    """Why `key` may make no passthrough call at all, if it may not."""
    status = key.status()
    if status != "active":
        return f"This API key is {status}."
    if key.team.archived_at is not None:
        return TEAM_ARCHIVED
    if ApiKey.Scope.IMAGES not in key.scopes:
        return NO_IMAGES_SCOPE
    if key.allowed_aliases:
        return ALIAS_LIMITED
    return None


def listing_for_key(key: ApiKey) -> PassthroughListing:
    """For one key of the workspace, as a management key asks about it."""
    return _listing(key.workspace_id, key=key.public_id, reason=key_refusal(key))


def listing_for_workspace(workspace_id: int) -> PassthroughListing:
    """For any key of the workspace not limited to some models."""
    return _listing(workspace_id, key=None, reason=None)
