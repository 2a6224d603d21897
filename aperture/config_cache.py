"""An in-process cache of resolved configuration (routes, prices, budgets), kept exact by a shared
generation token.

Resolving an alias to its deployments (two queries and a decryption), the prices of a
provider and the budgets of a key are most of the gateway's own work per request. Each
process keeps what it read, tagged with the generation, a random token in the shared
cache; any change to an alias, a deployment, a credential, a price or a budget replaces the
token (now and again on commit), so the very next request on every process reads afresh.
Without a reachable cache nothing is kept.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from django.db import transaction

from aperture import safe_cache
from aperture.request_context import current_request_id

GENERATION_KEY = "routing:generation"
_MAX_ENTRIES = 10_000
T = TypeVar("T")

_request_memo: ContextVar[tuple[str, str | None] | None] = ContextVar("routes_memo", default=None)
_entries: OrderedDict[tuple[Any, ...], tuple[str, Any]] = OrderedDict()
_lock = threading.Lock()


def _generation() -> str | None:
    """The current token; read once per request (several lookups share it)."""
    request_id = current_request_id()
    memo = _request_memo.get()
    if memo is not None and memo[0] == request_id and request_id != "-":
        return memo[1]
    token = _read_generation()
    _request_memo.set((request_id, token))
    return token


def remember_generation(token: Any) -> None:
    """The token as the caller read it for this request, in the same round trip as
    something else (the API key's lookup): the request's own read of it."""
    request_id = current_request_id()
    if isinstance(token, str) and request_id != "-":
        _request_memo.set((request_id, token))


def _read_generation() -> str | None:
    token = safe_cache.get(GENERATION_KEY)
    if token is None:
        safe_cache.add(GENERATION_KEY, uuid.uuid4().hex, None)
        token = safe_cache.get(GENERATION_KEY)
    return token if isinstance(token, str) else None


def cached(key: tuple[Any, ...], load: Callable[[], T]) -> T:
    """`load()`'s value for `key`, reused while the routing generation is unchanged."""
    generation = _generation()
    if generation is None:
        return load()
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0] == generation:
            _entries.move_to_end(key)
            return entry[1]  # type: ignore[no-any-return]
    value = load()
    with _lock:
        _entries[key] = (generation, value)
        _entries.move_to_end(key)
        while len(_entries) > _MAX_ENTRIES:
            _entries.popitem(last=False)
    return value


def _new_generation() -> None:
    _request_memo.set(None)
    safe_cache.set(GENERATION_KEY, uuid.uuid4().hex, None)


def invalidate() -> None:
    """Every process re-resolves on its next request (now, and again once committed)."""
    _new_generation()
    transaction.on_commit(_new_generation)
