"""Download an image from a URL safely: time limit, size cap, no private addresses.

Used for images an upstream hosts and for callers' reference images. Hosts that resolve to
private, loopback, link-local or reserved addresses are refused unless an operator lists
them in APERTURE_FETCH_ALLOWED_HOSTS (exact host names or CIDR ranges). The check is made
when the socket connects, on the very address it connects to, so a name that resolves
differently the second time (DNS rebinding) gains nothing. Redirects are followed by hand,
each hop checked again, at most three.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from routing.providers.base import UpstreamFailed, UpstreamTimedOut

MAX_REDIRECTS = 3


class FetchRefused(UpstreamFailed):
    """The URL points somewhere the gateway will not go."""


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


class _GuardedConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        self._dns_host = allowed_address(self.host, self.port or 80)  # connect to what was checked
        return super()._new_conn()


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        # TLS still verifies the certificate against the host name, not the address.
        self._dns_host = allowed_address(self.host, self.port or 443)
        return super()._new_conn()


class _GuardedPool(HTTPConnectionPool):
    ConnectionCls = _GuardedConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {  # type: ignore[assignment]
            "http": _GuardedPool,
            "https": _GuardedHTTPSPool,
        }


_guarded: requests.Session | None = None


def guarded_session() -> requests.Session:
    """A session whose every connection is checked against private addresses."""
    global _guarded
    if _guarded is None:
        session = requests.Session()
        adapter = _GuardedAdapter(pool_connections=16, pool_maxsize=64, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False
        _guarded = session
    return _guarded


def check_url(provider: str, url: str) -> None:
    """A quick refusal before any connection: the scheme, and a host that resolves privately."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(provider, f"{provider} returned an image URL the gateway cannot fetch.")
    try:
        allowed_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(
            provider, f"{provider} returned an image URL whose host does not resolve."
        ) from exc
    except PrivateAddress as exc:
        raise FetchRefused(
            provider, f"{provider} returned an image URL on a private address; not fetched."
        ) from exc


def fetch_image(provider: str, url: str) -> tuple[bytes, str | None]:
    """The body and Content-Type at `url`, within APERTURE_FETCH_* limits."""
    deadline = time.monotonic() + settings.FETCH_TIMEOUT_SECONDS
    limit = settings.FETCH_MAX_BYTES
    for _ in range(MAX_REDIRECTS + 1):
        check_url(provider, url)
        try:
            response = guarded_session().get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(settings.UPSTREAM_CONNECT_TIMEOUT, settings.FETCH_TIMEOUT_SECONDS),
            )
        except requests.Timeout as exc:
            raise UpstreamTimedOut(provider, f"Downloading {provider}'s image timed out.") from exc
        except requests.RequestException as exc:
            if caused_by(exc, PrivateAddress):
                raise FetchRefused(
                    provider, f"{provider}'s image URL resolved to a private address."
                ) from exc
            raise UpstreamFailed(provider, f"Downloading {provider}'s image failed.") from exc
        with response:
            if response.is_redirect and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                continue
            if response.status_code != 200:
                raise UpstreamFailed(
                    provider,
                    f"Downloading {provider}'s image failed with HTTP {response.status_code}.",
                )
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpstreamFailed(
                        provider, f"{provider}'s image is larger than {limit} bytes."
                    )
                if time.monotonic() > deadline:
                    raise UpstreamTimedOut(provider, f"Downloading {provider}'s image timed out.")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("Content-Type")
    raise UpstreamFailed(provider, f"{provider}'s image URL redirected too many times.")


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
