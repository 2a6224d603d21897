"""Kept HTTP/1.1 connections for the plain upstream call (routing/providers/http.py): the
standard library's http.client, on a small pool of its own.

Why not urllib3 for this one call: when a whole body is sent and a whole body read, its pool,
connection and response layers cost about twice what http.client costs alone (measured on
loopback under gevent: 350-460 µs of CPU a call against 180-220 µs), a tenth of a gateway
request's CPU. Every other call (streams, files, query strings, workspace credentials) stays
on requests and urllib3.

The rules are the ones the sessions of aperture/outbound.py follow:
- TLS as urllib3 sets it up (its default context: TLS 1.2 or later, the certificate and the
  host name checked) against requests' CA bundle (certifi).
- A kept connection is used again only if nothing waits on it (an end of stream, bytes
  nobody asked for: `has_input`); one the upstream asked to close is closed.
- No retry, no redirect followed, no cookie kept, nothing read from the environment.
- Bodies are asked for as gzip or deflate and decoded, as requests' sessions do.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import ssl
import zlib
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import requests.utils
from urllib3.util.ssl_ import create_urllib3_context

from aperture.socket_ready import has_input

ACCEPT_ENCODING = "gzip, deflate"
CA_BUNDLE = requests.utils.DEFAULT_CA_BUNDLE_PATH


class NotConnected(Exception):
    """No connection could be made: nothing was sent. `timed_out`: connecting took too long."""

    def __init__(self, *, timed_out: bool) -> None:
        super().__init__("timed out" if timed_out else "refused or unreachable")
        self.timed_out = timed_out


class CallTimedOut(Exception):
    """Sent, and no answer within the read timeout."""


class CallFailed(Exception):
    """Any other failure: TLS refused, the connection cut, an answer that is not HTTP or whose
    body cannot be decoded."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes  # decoded


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query, if any

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallFailed(f"not an http(s) URL: {url[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise CallFailed("the URL's port is not valid") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname, port, path)


@lru_cache(maxsize=4)
def _tls(ca_bundle: str) -> ssl.SSLContext:
    context = create_urllib3_context()
    context.load_verify_locations(ca_bundle)
    return context


def _decoded(encoding: str | None, body: bytes) -> bytes:
    encoding = (encoding or "").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as exc:
        raise CallFailed(f"the body could not be decoded ({encoding})") from exc
    return body


class KeptConnections:
    """Up to `keep` idle connections per origin (scheme, host, port), the latest used first."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: dict[tuple[str, str, int], collections.deque[http.client.HTTPConnection]] = {}

    def call(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Answer:
        """One request and its whole answer. Raises NotConnected, CallTimedOut or CallFailed."""
        target = _target(url)
        connection = self._take(target.origin) or _connect(target, connect_timeout)
        try:
            connection.sock.settimeout(read_timeout)
            connection.request(
                method, target.path, body, {"Accept-Encoding": ACCEPT_ENCODING, **headers}
            )
            response = connection.getresponse()
            content = response.read()
        except TimeoutError as exc:
            connection.close()
            raise CallTimedOut("no answer in time") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            connection.close()
            raise CallFailed(f"the call failed ({type(exc).__name__})") from exc
        except BaseException:  # stopped midway (a greenlet's timeout): never used again
            connection.close()
            raise
        if connection.sock is None:  # the upstream asked to close (http.client closed it)
            connection.close()
        else:
            self._give_back(target.origin, connection)
        return Answer(
            status=response.status,
            reason=response.reason,
            headers=response.getheaders(),
            body=_decoded(response.getheader("Content-Encoding"), content),
        )

    def idle(self, origin: tuple[str, str, int]) -> list[http.client.HTTPConnection]:
        """The connections kept for `origin` (for tests and inspection)."""
        return list(self._idle.get(origin, ()))

    def _take(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        idle = self._idle.get(origin)
        while idle:
            try:
                connection = idle.pop()
            except IndexError:  # taken meanwhile
                return None
            if connection.sock is not None and not has_input(connection.sock):
                return connection
            connection.close()
        return None

    def _give_back(
        self, origin: tuple[str, str, int], connection: http.client.HTTPConnection
    ) -> None:
        idle = self._idle.setdefault(origin, collections.deque())
        if len(idle) < self._keep:
            idle.append(connection)
        else:
            connection.close()


def _connect(target: _Target, timeout: float) -> http.client.HTTPConnection:
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=_tls(CA_BUNDLE)
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        connection.connect()  # with TLS, its handshake too
    except TimeoutError as exc:
        connection.close()
        raise NotConnected(timed_out=True) from exc
    except ssl.SSLError as exc:  # refused in the handshake (a certificate, say), as urllib3 has it
        connection.close()
        raise CallFailed(f"TLS failed ({type(exc).__name__})") from exc
    except (OSError, ValueError, UnicodeError) as exc:
        connection.close()
        raise NotConnected(timed_out=False) from exc
    return connection
