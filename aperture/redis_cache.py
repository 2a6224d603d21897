"""Django's Redis cache, without building a new `redis.Redis` client for every operation.

Django's client makes `redis.Redis(connection_pool=pool)` on each call, and redis-py fills a
~170-entry callback table each time: about 0.3 ms of CPU per cache operation, several per
request. A Redis client is safe to share (connections come from its pool), so keep one per
pool.

Django also makes a cache object per thread, and under gunicorn's gevent workers each client
connection is a greenlet, so each one opened a connection pool (and a Redis connection) of its
own: 5,000 connections for a burst of 5,000 callers, and a connect, HELLO and SELECT for every
new client connection. The client, with its pools, is made once per process and shared.

A `get_many` (the key lookup of every request) is one MGET on a pooled connection, without
redis-py's client layer.

Each Redis client of the process parses with `ReadyCheckedParser`: redis-py checks a pooled
connection before every command, and under gevent its check gave the event loop a turn.
"""

import threading
from typing import Any, cast

from django.conf import settings
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis._parsers import _HiredisParser

from aperture.socket_ready import has_input

_lock = threading.Lock()
_clients: dict[tuple[str, ...], "_SharedClient"] = {}  # by servers and options


class _SharedClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client

    def read_many(self, made: list[str], keys: list[Any]) -> dict[Any, Any]:
        """`keys`' values (those found), read with one MGET of their cache keys `made`."""
        pool = self._get_connection_pool(False)  # type: ignore[attr-defined]
        connection = pool.get_connection()
        try:  # a send or read that fails, or is stopped, disconnects (redis-py's own rule)
            connection.send_command("MGET", *made)
            found = connection.read_response()
        finally:
            pool.release(connection)
        loads = self._serializer.loads  # type: ignore[attr-defined]
        return {
            key: loads(value) for key, value in zip(keys, found, strict=True) if value is not None
        }


def _shared_client(servers: list[str], **options: Any) -> _SharedClient:
    """The process's client for these servers and options, whichever thread asks."""
    key = (*servers, repr(sorted(options.items())))
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _SharedClient(servers, **options)
        return client


class SharedClientRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _shared_client

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        """One MGET on a pooled connection, without Django's client layer and redis-py's
        command dispatch: a request's key lookup is one, and those layers cost more CPU than
        the command itself (about 60 of 120 µs, measured in a gevent loop). Errors are
        redis-py's, as through its client (whose pool here retries nothing either)."""
        keys = list(keys)
        if not keys:
            return {}
        made = [self.make_key(key, version=version) for key in keys]
        client = cast(_SharedClient, self._cache)
        return client.read_many(made, keys)

    def validate_key(self, key: str) -> None:
        """Nothing to check: the warnings Django's base class gives are memcached's (key
        length, control characters); Redis takes any key, and this one ran for every key of
        every request."""


class ReadyCheckedParser(_HiredisParser):
    """redis-py's hiredis parser, with its check of a pooled connection before each command
    (`can_read(0)`: is a stale reply or an end of stream waiting?) asked of the process's
    own `poll`. Under gevent the patched one yields to every ready greenlet even when it may
    not wait: ~50 µs of CPU per command, and a turn of the event loop in the middle of
    taking a connection (aperture/socket_ready.py). When something is waiting, redis-py's
    own check decides what it is."""

    def can_read(self, timeout: float = 0) -> bool:
        sock, reader = self._sock, self._reader
        if timeout == 0 and sock is not None and reader is not None and not reader.has_data():
            try:
                if not has_input(sock):
                    return False
            except (ValueError, OSError):  # closed meanwhile: redis-py's check says so
                pass
        return bool(super().can_read(timeout))


def script_client(**options: Any) -> Any:
    """A Redis client of the process's own scripts (rate limits, deployment health) on
    APERTURE_RATE_LIMIT_REDIS_URL: a bounded pool, short timeouts, pooled connections
    checked with `ReadyCheckedParser`. `options` are the connection's (decode_responses)."""
    import redis

    pool = redis.BlockingConnectionPool.from_url(
        settings.RATE_LIMIT_REDIS_URL,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=2,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        parser_class=ReadyCheckedParser,
        **options,
    )
    return redis.Redis(connection_pool=pool)
