"""The shared cache, used so that its loss degrades serving but never stops it."""

import logging
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)


def get(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception:
        logger.warning("cache unavailable on get", exc_info=True)
        return None


def set(key: str, value: Any, timeout: float | None) -> None:  # noqa: A001 - mirrors the cache API
    try:
        cache.set(key, value, timeout)
    except Exception:
        logger.warning("cache unavailable on set", exc_info=True)


def add(key: str, value: Any, timeout: float | None) -> bool | None:
    """True if added, False if present, None if the cache is unreachable."""
    try:
        return bool(cache.add(key, value, timeout))
    except Exception:
        logger.warning("cache unavailable on add", exc_info=True)
        return None


def delete_many(keys: list[str]) -> None:
    try:
        cache.delete_many(keys)
    except Exception:
        logger.error("cache unavailable on delete; entries expire by TTL", exc_info=True)


def ping() -> bool:
    try:
        cache.set("aperture:ping", "1", 5)
        return cache.get("aperture:ping") == "1"
    except Exception:  # noqa: BLE001
        return False
