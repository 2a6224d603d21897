"""Turning a presented secret into the caller's identity: key → team → workspace.

The lookup is cached in the shared cache (Redis in production) for a minute; every service
that changes a key, its team or its workspace drops the entry on commit, so a revoked key
is refused on the very next request on every process. An unknown id is cached as unknown,
and refused with the same work as a wrong secret. The cache may be down: then every
request reads the database.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from aperture import config_cache, safe_cache
from aperture.errors import AuthenticationError, PermissionError_
from tenants.keys import parse_public_id, secret_matches
from tenants.models import ApiKey, Workspace

CACHE_SECONDS = 60
LAST_USED_EVERY_SECONDS = 60


@dataclass(frozen=True)
class KeyPrincipal:
    """The authenticated caller, as DRF's request.user and request.auth."""

    key_id: int
    public_id: str
    team_id: int
    workspace_id: int
    scopes: tuple[str, ...]
    allowed_aliases: tuple[str, ...]
    rpm_limit: int | None
    ipm_limit: int | None
    expires_at: datetime | None = None
    # Limits per end user (the request's `user`); with either set, `user` is required.
    per_user_limit_images: int | None = None  # images per UTC day
    per_user_rpm: int | None = None
    # The workspace's markup on provider prices (billing/admission.py): carried here so the
    # hot path charges it without a query.
    price_multiplier: Decimal = Decimal(1)

    is_authenticated = True
    is_anonymous = False

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def may_use_alias(self, alias_name: str) -> bool:
        return not self.allowed_aliases or alias_name in self.allowed_aliases


def _cache_key(public_id: str) -> str:
    return f"apikey:v3:{public_id}"  # v3: the entry carries the workspace's price multiplier


def _load(public_id: str) -> dict[str, Any] | None:
    key = (
        ApiKey.objects.select_related("team", "workspace")
        .filter(public_id=public_id)
        .only(
            "id",
            "public_id",
            "secret_hash",
            "previous_secret_hash",
            "previous_secret_expires_at",
            "team_id",
            "workspace_id",
            "scopes",
            "allowed_aliases",
            "rpm_limit",
            "ipm_limit",
            "per_user_limit_images",
            "per_user_rpm",
            "expires_at",
            "revoked_at",
            "team__archived_at",
            "workspace__status",
            "workspace__price_multiplier",
        )
        .first()
    )
    if key is None:
        return None
    return {
        "id": key.pk,
        "public_id": key.public_id,
        "secret_hash": key.secret_hash,
        "previous_secret_hash": key.previous_secret_hash,
        "previous_secret_expires_at": key.previous_secret_expires_at,
        "team_id": key.team_id,
        "workspace_id": key.workspace_id,
        "scopes": tuple(key.scopes),
        "allowed_aliases": tuple(key.allowed_aliases),
        "rpm_limit": key.rpm_limit,
        "ipm_limit": key.ipm_limit,
        "per_user_limit_images": key.per_user_limit_images,
        "per_user_rpm": key.per_user_rpm,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "team_archived": key.team.archived_at is not None,
        "workspace_active": key.workspace.status == Workspace.Status.ACTIVE,
        "price_multiplier": key.workspace.price_multiplier,
    }


# An id no key has is cached too, as this: a guessed id costs no database read after its
# first, exactly like a known id. key_create drops the entry of the id it mints.
_UNKNOWN: dict[str, Any] = {"unknown": True}
# Compared against when the id is unknown, so that refusing it costs the same HMAC and
# constant-time comparison as a known id with a wrong secret. No secret hashes to it.
_NO_SUCH_HASH = "0" * 64


def _lookup(public_id: str) -> dict[str, Any] | None:
    cache_key = _cache_key(public_id)
    # One round trip for the key and the routing generation the request reads next.
    found = safe_cache.get_many([cache_key, config_cache.GENERATION_KEY])
    config_cache.remember_generation(found.get(config_cache.GENERATION_KEY))
    entry: dict[str, Any] | None = found.get(cache_key)
    if entry is None:
        entry = _load(public_id) or _UNKNOWN
        safe_cache.set(cache_key, entry, CACHE_SECONDS)
    return None if entry.get("unknown") else entry


def forget(public_ids: list[str]) -> None:
    safe_cache.delete_many([_cache_key(p) for p in public_ids])


def _refused(now: datetime, entry: dict[str, Any]) -> str | None:
    revoked_at = entry["revoked_at"]
    if revoked_at is not None and revoked_at <= now:
        return "This API key has been revoked."
    expires_at = entry["expires_at"]
    if expires_at is not None and expires_at <= now:
        return "This API key has expired."
    if entry["team_archived"]:
        return "This API key's team has been archived."
    return None


def _secret_accepted(secret: str, entry: dict[str, Any], now: datetime) -> bool:
    """The current secret, or the one a rotation replaced while its grace period lasts."""
    if secret_matches(secret, entry["secret_hash"]):
        return True
    previous, until = entry["previous_secret_hash"], entry["previous_secret_expires_at"]
    return bool(previous) and until is not None and now < until and secret_matches(secret, previous)


def authenticate_secret(secret: str) -> KeyPrincipal:
    """The principal for a presented secret; AuthenticationError (401) or PermissionError_ (403)."""
    public_id = parse_public_id(secret)
    if public_id is None:
        raise AuthenticationError("Malformed API key. Keys look like apk_<id>_<secret>.")
    entry = _lookup(public_id)
    now = timezone.now()
    if entry is None:
        secret_matches(secret, _NO_SUCH_HASH)  # the work of a wrong secret: timing tells nothing
        raise AuthenticationError("Incorrect API key provided.")
    if not _secret_accepted(secret, entry, now):
        raise AuthenticationError("Incorrect API key provided.")
    principal = _principal(entry, now)
    _touch_last_used(entry["id"], now)
    return principal


def principal_of(public_id: str) -> KeyPrincipal:
    """The principal of a key as it stands now, without its secret: for work a key asked for
    earlier (an async job) that must stop if the key was revoked or its workspace suspended
    meanwhile. AuthenticationError (401) or PermissionError_ (403)."""
    entry = _lookup(public_id)
    if entry is None:
        raise AuthenticationError("This API key no longer exists.")
    return _principal(entry, timezone.now())


def _principal(entry: dict[str, Any], now: datetime) -> KeyPrincipal:
    reason = _refused(now, entry)
    if reason:
        raise AuthenticationError(reason)
    if not entry["workspace_active"]:
        raise PermissionError_("This API key's workspace is suspended.", code="workspace_suspended")
    return KeyPrincipal(
        key_id=entry["id"],
        public_id=entry["public_id"],
        team_id=entry["team_id"],
        workspace_id=entry["workspace_id"],
        scopes=entry["scopes"],
        allowed_aliases=entry["allowed_aliases"],
        rpm_limit=entry["rpm_limit"],
        ipm_limit=entry["ipm_limit"],
        expires_at=entry["expires_at"],
        # .get: an entry cached by a process from before these limits has neither.
        per_user_limit_images=entry.get("per_user_limit_images"),
        per_user_rpm=entry.get("per_user_rpm"),
        price_multiplier=entry["price_multiplier"],
    )


# When this process last asked the shared cache about a key: saves a round trip per request.
_touched_here: dict[int, float] = {}


def _touch_last_used(key_id: int, now: datetime) -> None:
    """At most one UPDATE per key per minute, however many requests and processes."""
    moment = now.timestamp()
    # A clock that went back (or a test's travel) must not silence the key for the gap.
    if 0 <= moment - _touched_here.get(key_id, float("-inf")) < LAST_USED_EVERY_SECONDS:
        return
    if len(_touched_here) > 100_000:
        _touched_here.clear()
    _touched_here[key_id] = moment
    if safe_cache.add(f"apikey-used:{key_id}", 1, LAST_USED_EVERY_SECONDS):
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)
