"""The shared cache, used so that its loss degrades serving but never stops it."""

import logging
import time
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)
_last_warning = [float("-inf")]


def _warn(operation: str, exc: Exception) -> None:
    """One line at most every 10 s: an outage must not flood the log."""
    now = time.monotonic()
    if now - _last_warning[0] >= 10:
        _last_warning[0] = now
        logger.warning("cache unavailable on %s (%s); serving without it", operation, exc)


def get(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception as exc:  # noqa: BLE001 - any cache failure means "not cached"
        _warn("get", exc)
        return None


def get_many(keys: list[str]) -> dict[str, Any]:
    try:
        return dict(cache.get_many(keys))
    except Exception as exc:  # noqa: BLE001 - any cache failure means "not cached"
        _warn("get_many", exc)
        return {}


def set(key: str, value: Any, timeout: float | None) -> None:  # noqa: A001 - mirrors the cache API
    try:
        cache.set(key, value, timeout)
    except Exception as exc:  # noqa: BLE001 - any cache failure means "not cached"
        _warn("set", exc)


def add(key: str, value: Any, timeout: float | None) -> bool | None:
    """True if added, False if present, None if the cache is unreachable."""
    try:
        return bool(cache.add(key, value, timeout))
    except Exception as exc:  # noqa: BLE001 - any cache failure means "not cached"
        _warn("add", exc)
        return None


def delete_many(keys: list[str]) -> None:
    try:
        cache.delete_many(keys)
    except Exception:
        logger.error("cache unavailable on delete; entries expire by TTL", exc_info=True)


def ping() -> bool:
    try:
        cache.set("aperture:ping", "1", 5)
        return bool(cache.get("aperture:ping") == "1")
    except Exception:  # noqa: BLE001
        return False
