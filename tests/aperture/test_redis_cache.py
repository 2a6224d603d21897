"""The Redis cache shares one connection pool per process: Django makes a cache object per
thread (a greenlet, under gunicorn's gevent workers, is one per client connection), and each
used to open its own pool, so a burst of 5,000 callers opened 5,000 Redis connections."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import hiredis
import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from aperture.redis_cache import ReadyCheckedParser, SharedClientRedisCache


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


# --- get_many: one MGET on a pooled connection (the key lookup of every request) ----------


def test_get_many_reads_what_set_wrote_and_leaves_out_what_is_missing() -> None:
    cache: Any = caches["default"]
    cache.set("many-entry", {"id": 7, "scopes": ("images",), "expires_at": None}, 30)
    cache.set("many-count", 12, 30)  # stored as digits, not pickled
    cache.set("many-other-version", "v2", 30, version=2)
    cache.delete("many-missing")

    assert cache.get_many(["many-entry", "many-count", "many-missing"]) == {
        "many-entry": {"id": 7, "scopes": ("images",), "expires_at": None},
        "many-count": 12,
    }
    assert cache.get_many(["many-other-version"]) == {}
    assert cache.get_many(["many-other-version"], version=2) == {"many-other-version": "v2"}
    assert cache.get_many([]) == {}


class _LateProxy:
    """A loopback proxy in front of the test Redis. The reply to the first MGET it passes
    on is held back until the same connection sends its next command, and then comes just
    before that command's own: as a late reply does when the connection is used again."""

    def __init__(self) -> None:
        self.held: socket.socket | None = None  # the caller whose first MGET's reply waits
        self.next_command = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        target = urlsplit(settings.REDIS_URL)
        while True:
            try:
                caller, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((target.hostname, target.port or 6379))
            self.sockets += [caller, upstream]
            threading.Thread(target=self._commands, args=(caller, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, caller), daemon=True).start()

    def _commands(self, caller: socket.socket, upstream: socket.socket) -> None:
        reader = hiredis.Reader()
        with contextlib.suppress(OSError):
            while data := caller.recv(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    if self.held is caller:
                        self.next_command.set()
                    elif self.held is None and command[0].upper() == b"MGET":
                        self.held = caller
                    upstream.sendall(
                        b"*%d\r\n" % len(command)
                        + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in command)
                    )

    def _replies(self, upstream: socket.socket, caller: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if self.held is caller and not self.next_command.is_set():
                    self.next_command.wait(30)  # the held reply waits for the next command
                caller.sendall(data)

    def url(self) -> str:
        target = urlsplit(settings.REDIS_URL)
        credentials = target.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        return target._replace(netloc=f"{netloc}{self.address[0]}:{self.address[1]}").geturl()

    def close(self) -> None:
        self.next_command.set()
        self.server.close()
        for each in self.sockets:
            each.close()


def test_a_get_many_that_timed_out_leaves_its_late_reply_to_no_later_call() -> None:
    """The late reply of an MGET that gave up must not be read as the next one's. The check
    of a pooled connection as it is handed out catches only a reply that has already come;
    a read that gives up drops its connection."""
    cache: Any = caches["default"]
    cache.set("late-entry", "stale", 30)
    proxy = _LateProxy()
    try:
        options = {**settings.CACHES["default"]["OPTIONS"], "socket_timeout": 0.3}
        proxied = SharedClientRedisCache(
            proxy.url(), {**settings.CACHES["default"], "OPTIONS": options}
        )
        with pytest.raises(redis.exceptions.TimeoutError):
            proxied.get_many(["late-entry"])  # Redis answered "stale"; the proxy holds it
        cache.set("late-entry", "fresh", 30)

        assert proxied.get_many(["late-entry"]) == {"late-entry": "fresh"}
    finally:
        proxy.close()
