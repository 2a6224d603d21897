"""Outbound HTTP safety: sessions that keep no cookies, and a guard against private addresses.

Every upstream call goes through a session made here. No session keeps a cookie: an upstream
serves many tenants through one pooled session, so a cookie it sets during one tenant's call
must never ride along on another's. The guarded session refuses hosts that resolve to
private, loopback, link-local or reserved addresses unless an operator lists them in
APERTURE_FETCH_ALLOWED_HOSTS (exact host names or CIDR ranges). The check is made when the
socket connects, on the very address it connects to, so a name that resolves differently the
second time (DNS rebinding) gains nothing.

Every session's kept connections are checked before reuse with the process's own poll
(`ReuseCheckedAdapter`, aperture/socket_ready.py).

Read and connect timeouts bound each socket operation, not a call: a receiver that trickles a
byte at a time keeps a call alive as long as it likes. `deadline` bounds a whole call made on
a fresh guarded session (`fresh_guarded_session`): at the deadline every connection the session
opened inside it is shut down, which ends any blocked read or write at once, in a thread or
under gevent alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError
from urllib3.response import BaseHTTPResponse

from aperture.socket_ready import has_input


class NoCookies(RequestsCookieJar):
    """A cookie jar that stores nothing and, by its policy, returns nothing."""

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))

    def set_cookie(self, cookie: Cookie, *args: Any, **kwargs: Any) -> None:
        return None


class _NoRedirects(requests.Session):
    """Never follows a redirect, nor reads one's body on its own: requests' `send`, even with
    allow_redirects=False, reads a 3xx answer's body whole (and decoded) to keep the next
    request ready, before the caller sees the answer, with no limit on its size. The
    caller reads it, if at all, as any other answer (`is_redirect` still says what it is)."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


def new_session(adapter: HTTPAdapter) -> requests.Session:
    """A session on `adapter` for both schemes that follows no redirect: no cookie jar,
    nothing from the environment."""
    session = _NoRedirects()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or netrc surprises from the environment
    session.cookies = NoCookies()
    return session


def _allowlisted(host: str, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    for entry in settings.FETCH_ALLOWED_HOSTS:
        if entry == host:
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(address in network for address in addresses):
            return True
    return False


class PrivateAddress(OSError):
    """Raised inside the connection: the host resolved to an address the gateway won't use."""


def allowed_address(host: str, port: int) -> str:
    """The address to connect to for host:port, or PrivateAddress / socket.gaierror."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not _allowlisted(host, addresses) and any(not a.is_global for a in addresses):
        raise PrivateAddress(f"{host} resolves to a private address")
    return str(infos[0][4][0])


def public_url_problem(url: str, *, query_allowed: bool) -> str | None:
    """Why the gateway would not call `url` on a workspace's behalf, or None: https (plain
    http only for a host an operator allowlists), no user info or fragment (nor a query
    unless allowed), on a host that resolves to public addresses unless allowlisted. A
    connection checks the address again (DNS may change in between)."""
    if any(not c.isprintable() for c in url):
        return "Must not contain control characters."
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # an unclosed [ipv6 bracket, say
        return "Is not a valid URL."
    if parts.scheme not in ("https", "http") or not host:
        return "Must be an https:// URL with a host name."
    if query_allowed and (parts.username or parts.password or parts.fragment):
        return "Must not carry user info or a fragment."
    if not query_allowed and (parts.username or parts.password or parts.query or parts.fragment):
        return "Must not carry user info, a query or a fragment."
    if parts.scheme == "http" and host not in settings.FETCH_ALLOWED_HOSTS:
        return "Must be https:// (plain http only for hosts an operator allowlists)."
    try:
        allowed_address(host, parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:
        return "Has an invalid port."
    except (socket.gaierror, UnicodeError):
        return f"The host {host} does not resolve."
    except PrivateAddress:
        return (
            f"The host {host} resolves to a private, loopback or link-local address; "
            "the gateway does not call those for a workspace."
        )
    return None


@dataclass
class Deadline:
    """The sockets opened within a `deadline`, to be shut down when it passes."""

    sockets: list[socket.socket] = field(default_factory=list)
    expired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sock: socket.socket) -> None:
        # A duplicate: TLS takes the original over (detaching it), while a shutdown of the
        # duplicate ends the one connection both share.
        duplicate = sock.dup()
        with self.lock:
            self.sockets.append(duplicate)
            if not self.expired:
                return
        _shut(duplicate)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_deadline: ContextVar[Deadline | None] = ContextVar("aperture_outbound_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Shut down, `seconds` from now, every connection a guarded session opens within this
    block: its call then fails with a connection error (`expired` tells the two apart). Use a
    fresh session: a pooled connection opened before the block is not covered."""
    current = Deadline()
    token = _deadline.set(current)
    timer = threading.Timer(seconds, current.expire)
    timer.daemon = True
    timer.start()
    try:
        yield current
    finally:
        timer.cancel()
        _deadline.reset(token)
        for sock in current.sockets:
            sock.close()


def _within_deadline(sock: socket.socket) -> socket.socket:
    current = _deadline.get()
    if current is not None:
        current.add(sock)
    return sock


class _ReuseChecked(HTTPConnection):
    """A kept connection is used again only if nothing (an end of stream, stray bytes) waits
    on it. urllib3 asks gevent's poll, which yields to the event loop on every call
    (aperture/socket_ready.py). An interim (1xx) answer fails the call and closes the
    connection: http.client takes it for the answer, and the final one, still to come on the
    connection, would be read by the next call made on it."""

    @property
    def is_connected(self) -> bool:
        return self.sock is not None and not has_input(self.sock)

    def getresponse(self) -> BaseHTTPResponse:  # type: ignore[override]
        response = super().getresponse()
        if response.status < 200:
            self.close()
            raise ProtocolError("an interim (1xx) answer where the final one was expected")
        return response


class _Connection(_ReuseChecked):
    pass


class _HTTPSConnection(_ReuseChecked, HTTPSConnection):
    pass


class _GuardedConnection(_Connection):
    def _new_conn(self) -> socket.socket:
        self._dns_host = allowed_address(self.host, self.port or 80)  # connect to what was checked
        return _within_deadline(super()._new_conn())


class _GuardedHTTPSConnection(_HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        # TLS still verifies the certificate against the host name, not the address.
        self._dns_host = allowed_address(self.host, self.port or 443)
        return _within_deadline(super()._new_conn())


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _GuardedPool(HTTPConnectionPool):
    ConnectionCls = _GuardedConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class ReuseCheckedAdapter(HTTPAdapter):
    """requests' adapter, on connections checked for reuse with the process's own poll."""

    pools: dict[str, type[HTTPConnectionPool]] = {"http": _Pool, "https": _HTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)


class _GuardedAdapter(ReuseCheckedAdapter):
    pools = {"http": _GuardedPool, "https": _GuardedHTTPSPool}


_guarded: requests.Session | None = None


def guarded_session() -> requests.Session:
    """A session whose every connection is checked against private addresses."""
    global _guarded
    if _guarded is None:
        _guarded = new_session(_GuardedAdapter(pool_connections=16, pool_maxsize=64, max_retries=0))
    return _guarded


def fresh_guarded_session() -> requests.Session:
    """A guarded session of its own (one connection, no retries), for a call under a
    `deadline`; close it after the call."""
    return new_session(_GuardedAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the chain requests and urllib3 wrap errors in."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += [arg for arg in current.args if isinstance(arg, BaseException)]
        pending.extend(e for e in linked if isinstance(e, BaseException))
    return False
