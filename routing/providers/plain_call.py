"""The common upstream call — a whole body or none, no stream, an operator's credential — on
geventhttpclient: kept-alive connections per upstream origin, a C parser for the answer, and
the request's head and body in one write. On loopback it takes about half the CPU of the
same call on urllib3, whose http.client parses each answer's headers with the email
package: 142-171 against 335-372 us a call with the benchmark's image answer; through the
gateway, 13% less worker CPU per request at concurrency 64 (README: Benchmarks).

The answer is a `requests.Response` like any other upstream call's, its body read whole and
decoded (gzip, deflate, br, zstd: urllib3's decoders), so that the adapters read one kind of
answer. The errors are http.send's: UpstreamUnreachable when no connection could be made
(nothing was sent), UpstreamTimedOut when the answer did not come in time, UpstreamFailed
otherwise. A call is never retried here once its request may have reached the upstream;
geventhttpclient sends an idempotent one (GET) again on a fresh connection only if the kept-
alive one it tried had been closed by the upstream.

Connections are kept where gevent has patched the sockets (gunicorn's and Celery's gevent
workers): one pool per upstream origin and timeouts, shared by every request of the process.
Elsewhere (the development tools, the test suite's threads) a call connects afresh and
closes its connection after: gevent's pools are not for sharing across threads.
"""

from __future__ import annotations

import io
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3
from django.conf import settings
from gevent import monkey
from geventhttpclient import HTTPClient
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPParseError
from requests.structures import CaseInsensitiveDict

from routing.providers.base import UpstreamFailed, UpstreamTimedOut, UpstreamUnreachable

BLOCK_BYTES = 64 * 1024
# Upstream origins (and timeouts) a process keeps connections to; past it, the first kept is
# closed (calls under way on its connections finish first).
MAX_ORIGINS = 64
_IDENTITY = ("", "identity")
_UNPATCHED_POLL = monkey.get_original("select", "poll")


class _NotConnected(Exception):
    """No connection to the upstream could be made (resolving, connecting, the TLS
    handshake): nothing was sent."""


class _Connecting:
    """What our pools add to geventhttpclient's: a connection that could not be made raises
    _NotConnected (its socket errors are otherwise the same whether connecting or waiting
    for an answer); TCP_NODELAY, as urllib3 sets it: a body written in several segments is
    not held back for the upstream's delayed acknowledgement; and a kept connection is
    checked without giving the other greenlets a turn."""

    def _create_socket(self) -> Any:
        try:
            return super()._create_socket()  # type: ignore[misc]
        except Exception as exc:
            raise _NotConnected(type(exc).__name__) from exc

    def after_connect(self, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _is_socket_alive(self, sock: Any) -> bool:
        """Whether a kept connection may carry the next request: open, and nothing to read
        (the upstream closed it, or sent what nobody asked for). geventhttpclient asks
        gevent's select, which lets every other ready greenlet run first: in a burst of
        thousands, each upstream call then went out only after the rest of the burst was
        let in (5,000 calls to a 10-s upstream: 1.44-1.52x the direct wall time instead of
        1.19-1.35x). The process's own poll answers at once (its select refuses descriptors
        past 1,023: a busy worker's)."""
        try:
            if sock is None or sock.fileno() < 0:
                return False
            poll = _UNPATCHED_POLL()
            poll.register(sock.fileno(), select.POLLIN)
            return not poll.poll(0)
        except (OSError, ValueError):
            return False


class _Pool(_Connecting, ConnectionPool):
    pass


class _TlsPool(_Connecting, SSLConnectionPool):
    pass


_POOLS = {ConnectionPool: _Pool, SSLConnectionPool: _TlsPool}
Origin = tuple[str, str, int, float, float]  # scheme, host, port, connect and read timeouts
_kept: dict[Origin, HTTPClient] = {}


def _new_client(origin: Origin) -> HTTPClient:
    scheme, host, port, connect, read = origin
    client = HTTPClient(
        host,
        port,
        ssl=scheme == "https",
        concurrency=settings.UPSTREAM_POOL_SIZE,
        connection_timeout=connect,
        network_timeout=read,
        block_size=BLOCK_BYTES,
    )
    client._connection_pool.__class__ = _POOLS[type(client._connection_pool)]
    return client


@contextmanager
def _client(origin: Origin) -> Iterator[HTTPClient]:
    """The process's client for `origin` under gevent's patched sockets (a gunicorn or Celery
    worker: every greenlet shares its connections); elsewhere one for this call alone."""
    if not monkey.is_module_patched("socket"):
        client = _new_client(origin)
        try:
            yield client
        finally:
            client.close()
        return
    kept = _kept.get(origin)
    if kept is None:
        if len(_kept) >= MAX_ORIGINS:
            _kept.pop(next(iter(_kept))).close()  # calls under way finish on their connection
        kept = _kept[origin] = _new_client(origin)
    yield kept


def call(
    provider: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeouts: tuple[float, float],
) -> requests.Response:
    """`method` on `url` with `headers` and `body`: the upstream's whole answer."""
    try:
        parsed = urllib3.util.parse_url(url)
        scheme, host = parsed.scheme or "http", (parsed.host or "").strip("[]")
        port = parsed.port or (443 if scheme == "https" else 80)
        with _client((scheme, host, port, timeouts[0], timeouts[1])) as client:
            answer = client.request(method, parsed.request_uri, body=body, headers=headers)
            try:
                content = bytes(answer.read())
            finally:
                answer.release()
        fields = urllib3.HTTPHeaderDict()
        for name, value in answer.items():
            fields.add(name, value)
        if fields.get("content-encoding", "").strip().lower() not in _IDENTITY:
            content = urllib3.HTTPResponse(
                body=io.BytesIO(content), headers=fields, preload_content=True
            ).data
    except _NotConnected as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise UpstreamUnreachable(
                provider, f"{provider} could not be reached in time."
            ) from exc
        raise UpstreamUnreachable(
            provider, f"{provider} could not be reached (ConnectionError)."
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimedOut(
            provider, f"{provider} did not answer within {timeouts[1]:g}s."
        ) from exc
    except (OSError, HTTPParseError, urllib3.exceptions.HTTPError, ValueError, RuntimeError) as exc:
        raise UpstreamFailed(
            provider, f"{provider} could not be reached (ConnectionError)."
        ) from exc
    response = requests.Response()  # as requests' HTTPAdapter.build_response makes it
    response.status_code = answer.status_code
    response.headers = CaseInsensitiveDict(fields)
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    response.reason = answer.status_message or ""
    response.url = url
    response._content = content
    response._content_consumed = True  # type: ignore[attr-defined]  # nothing to release
    return response
