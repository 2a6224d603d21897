"""The Redis cache shares one connection pool per process: Django makes a cache object per
thread (a greenlet, under gunicorn's gevent workers, is one per client connection), and each
used to open its own pool, so a burst of 5,000 callers opened 5,000 Redis connections."""

from __future__ import annotations

import select
import threading
import time
from typing import Any

from django.core.cache import caches

from aperture.redis_cache import ReadyCheckedParser


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


def _pooled_connection() -> Any:
    client = caches["default"]._cache.get_client(write=True)  # type: ignore[attr-defined]
    return client, client.connection_pool


def test_a_pooled_connection_with_a_reply_waiting_is_not_handed_out_as_it_is() -> None:
    cache: Any = caches["default"]
    cache.set("stale-reply", "the right answer", 30)
    _, pool = _pooled_connection()
    connection = pool.get_connection()
    assert isinstance(connection._parser, ReadyCheckedParser)
    connection.send_command("PING")  # its reply never read, as after a caller stopped midway
    poller = select.poll()
    poller.register(connection._sock, select.POLLIN)
    deadline = time.monotonic() + 5
    while not poller.poll(10):  # the reply has come back and waits in the socket
        assert time.monotonic() < deadline
    pool.release(connection)

    assert cache.get("stale-reply") == "the right answer"  # not the stale PONG
    assert connection._parser.can_read(0) is False  # started over, nothing waiting


def test_a_pooled_connection_the_server_closed_is_made_again() -> None:
    cache: Any = caches["default"]
    cache.set("closed-connection", 1, 30)
    _, pool = _pooled_connection()
    closed, killer = pool.get_connection(), pool.get_connection()
    closed.send_command("CLIENT", "ID")
    closed_id = closed.read_response()
    killer.send_command("CLIENT", "KILL", "ID", closed_id)
    assert killer.read_response() == 1
    pool.release(killer)
    pool.release(closed)  # last in: the next command's
    poller = select.poll()
    poller.register(closed._sock, select.POLLIN)
    deadline = time.monotonic() + 5
    while not poller.poll(10):  # the end of its stream has come
        assert time.monotonic() < deadline

    assert cache.get("closed-connection") == 1
    closed.send_command("CLIENT", "ID")
    assert closed.read_response() != closed_id  # made again


def test_a_pooled_connection_whose_socket_was_closed_meanwhile_is_made_again() -> None:
    cache: Any = caches["default"]
    cache.set("closed-socket", 1, 30)
    _, pool = _pooled_connection()
    connection = pool.get_connection()
    connection._sock.close()  # as a disconnect on another thread leaves it: no descriptor
    pool.release(connection)

    assert cache.get("closed-socket") == 1
