"""The Redis cache shares one connection pool per process: Django makes a cache object per
thread (a greenlet, under gunicorn's gevent workers, is one per client connection), and each
used to open its own pool, so a burst of 5,000 callers opened 5,000 Redis connections."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches


def test_every_thread_draws_on_one_connection_pool() -> None:
    pools: list[Any] = []

    def use_the_cache() -> None:
        cache: Any = caches["default"]
        cache.set("shared-pool", 1, 5)
        assert cache.get("shared-pool") == 1
        pools.append(cache._cache.get_client(write=True).connection_pool)
        pools.append(cache._cache.get_client().connection_pool)

    threads = [threading.Thread(target=use_the_cache) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(pools) == 16
    assert len({id(pool) for pool in pools}) == 1
    assert caches["default"]._cache.get_client().connection_pool is pools[0]  # type: ignore[attr-defined]
