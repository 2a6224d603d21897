"""Kept HTTP/1.1 connections for the plain upstream call (routing/providers/http.py): the
standard library's http.client, on a small pool of its own.

Why not urllib3 for this one call: when a whole body is sent and a whole body read, its pool,
connection and response layers cost about as much CPU again as http.client itself (README:
Architecture). Every other call (streams, files, workspace credentials) stays on requests
and urllib3.

What the call keeps from urllib3, so that nothing changes for an upstream:
- the URL as urllib3 reads it (`parse_url`: its path percent-encoded where it must be);
- TLS as urllib3 sets it up for this call before (its default context: TLS 1.2 or later, the
  certificate and the host name checked, against the system's authorities, SSL_CERT_FILE
  honoured);
- bodies decoded by urllib3's own decoders (`Content-Encoding`, chains of them included),
  read and decoded only up to the caller's limit;
- at most MAX_ORIGINS hosts' connections kept, the least recently used host's closed first.

A kept connection is used again only if nothing waits on it (an end of stream, bytes nobody
asked for: `has_input`), and given back only after a whole, final answer: an interim (1xx)
answer, a length given twice two ways, or a call stopped midway closes it, for what would
follow on it belongs to no later call. No retry, no redirect followed, no cookie kept.
"""

from __future__ import annotations

import collections
import http.client
import io
import ssl
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import urllib3
from urllib3.util.ssl_ import create_urllib3_context

from aperture.socket_ready import has_input

MAX_ORIGINS = 32  # as the requests session's pool manager (pool_connections)

Origin = tuple[str, str, int]  # scheme, host, port


class NotConnected(Exception):
    """No connection could be made: nothing was sent. `timed_out`: connecting took too long."""

    def __init__(self, *, timed_out: bool) -> None:
        super().__init__("timed out" if timed_out else "refused or unreachable")
        self.timed_out = timed_out


class CallTimedOut(Exception):
    """Sent, and no answer within the read timeout."""


class CallFailed(Exception):
    """Any other failure: TLS refused, the connection cut, an answer that is not a whole,
    final HTTP answer, or a body that cannot be decoded."""


class AnswerTooLarge(CallFailed):
    """The body, as sent or decoded, is longer than the caller reads."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: urllib3.HTTPHeaderDict  # a header answered twice: one, its values joined
    body: bytes  # decoded


@dataclass(frozen=True)
class _Target:
    origin: Origin
    path: str  # with the query, if any, as urllib3 would send it


@lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    try:
        parts = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError as exc:
        raise CallFailed("the URL cannot be read") from exc
    if parts.scheme not in ("http", "https") or not parts.host:
        raise CallFailed("not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _Target((parts.scheme, parts.host, port), parts.request_uri)


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    context = create_urllib3_context()
    context.load_default_certs()
    return context


def _decoded(headers: urllib3.HTTPHeaderDict, status: int, content: bytes, max_bytes: int) -> bytes:
    """The body decoded, up to `max_bytes` (urllib3 decodes no further than it is asked)."""
    if "Content-Encoding" not in headers:
        return content
    decoding = urllib3.HTTPResponse(
        body=io.BytesIO(content),
        headers=headers,
        status=status,
        preload_content=False,
        decode_content=True,
    )
    try:
        decoded = decoding.read(max_bytes + 1)
    except urllib3.exceptions.DecodeError as exc:
        raise CallFailed("the body could not be decoded") from exc
    if len(decoded) > max_bytes:
        raise AnswerTooLarge("the decoded body is longer than the limit")
    return decoded


def _body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """The body as sent, if no longer than `max_bytes` (else AnswerTooLarge, the rest left
    unread). A length given up front is read at once (a body cut short fails: IncompleteRead);
    chunks, or a body ended by closing, are read into one buffer, piece by piece, so that
    neither many tiny chunks nor the limit itself cost memory of their own."""
    if response.length is not None:
        if response.length > max_bytes:
            raise AnswerTooLarge("the body is longer than the limit")
        return response.read()
    body, piece = bytearray(), memoryview(bytearray(64 * 1024))
    while read := response.readinto(piece):
        body += piece[:read]
        if len(body) > max_bytes:
            raise AnswerTooLarge("the body is longer than the limit")
    return bytes(body)


def _whole_and_final(response: http.client.HTTPResponse) -> str | None:
    """Why what follows this answer on its connection could be another's, or None."""
    if response.status < 200:
        return "an interim (1xx) answer where the final one was expected"
    lengths = {value.strip() for value in response.msg.get_all("Content-Length") or ()}
    if len(lengths) > 1:
        return "two different lengths for one answer"
    return None


class KeptConnections:
    """Up to `keep` idle connections per origin (scheme, host, port), the latest used first,
    for at most MAX_ORIGINS origins."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: collections.OrderedDict[Origin, collections.deque[http.client.HTTPConnection]]
        self._idle = collections.OrderedDict()
        # Closed when the pool goes, at the latest when the process exits (as urllib3 does).
        weakref.finalize(self, _close_idle, self._idle)

    def call(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str | bytes],
        body: bytes | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int,
    ) -> Answer:
        """One request and its whole answer, its body no longer than `max_bytes` as sent and
        as decoded. Raises NotConnected, CallTimedOut or CallFailed (AnswerTooLarge)."""
        target = _target(url)
        connection = self._take(target.origin) or _connect(target.origin, connect_timeout)
        try:
            connection.sock.settimeout(read_timeout)
            connection.request(method, target.path, body, dict(headers))
            response = connection.getresponse()
            refused = _whole_and_final(response)
            if refused:
                raise CallFailed(refused)
            content = _body(response, max_bytes)
        except TimeoutError as exc:
            connection.close()
            raise CallTimedOut("no answer in time") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            connection.close()
            raise CallFailed(f"the call failed ({type(exc).__name__})") from exc
        except BaseException:  # CallFailed, or stopped midway (a greenlet's timeout)
            connection.close()
            raise
        if connection.sock is None:  # the upstream asked to close (http.client closed it)
            connection.close()
        else:
            self._give_back(target.origin, connection)
        headers = urllib3.HTTPHeaderDict(response.getheaders())
        return Answer(
            status=response.status,
            reason=response.reason,
            headers=headers,
            body=_decoded(headers, response.status, content, max_bytes),
        )

    def idle(self, origin: Origin) -> list[http.client.HTTPConnection]:
        """The connections kept for `origin`."""
        return list(self._idle.get(origin, ()))

    def close(self) -> None:
        """Close every kept connection."""
        _close_idle(self._idle)

    def _take(self, origin: Origin) -> http.client.HTTPConnection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.sock is not None and not has_input(connection.sock):
                return connection
            connection.close()
        return None

    def _give_back(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = collections.deque()
            while len(self._idle) > MAX_ORIGINS:  # the least recently used origin's go
                _close(self._idle.popitem(last=False)[1])
        else:
            self._idle.move_to_end(origin)
        if len(idle) < self._keep:
            idle.append(connection)
        else:
            connection.close()


def _close_idle(
    idle: collections.OrderedDict[Origin, collections.deque[http.client.HTTPConnection]],
) -> None:
    while idle:
        _close(idle.popitem(last=False)[1])


def _close(connections: collections.deque[http.client.HTTPConnection]) -> None:
    for connection in connections:
        connection.close()


def _connect(origin: Origin, timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = origin
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.connect()  # with TLS, its handshake too, within the same timeout
    except TimeoutError as exc:
        connection.close()
        raise NotConnected(timed_out=True) from exc
    except ssl.SSLError as exc:  # refused or stalled in the handshake, as urllib3 has it
        connection.close()
        raise CallFailed(f"TLS failed ({type(exc).__name__})") from exc
    except (OSError, ValueError, UnicodeError) as exc:
        connection.close()
        raise NotConnected(timed_out=False) from exc
    except BaseException:  # stopped midway (a greenlet's timeout)
        connection.close()
        raise
    return connection
