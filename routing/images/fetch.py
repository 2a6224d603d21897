"""Download an image an upstream hosts, safely: time limit, size cap, no private addresses.

Hosts that resolve to private, loopback, link-local or reserved addresses are refused unless
an operator lists them in APERTURE_FETCH_ALLOWED_HOSTS (exact host names or CIDR ranges).
Redirects are followed by hand, each hop checked again, at most three.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings

from routing.providers import http
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


def check_url(provider: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(provider, f"{provider} returned an image URL the gateway cannot fetch.")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(
            provider, f"{provider} returned an image URL whose host does not resolve."
        ) from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if _allowlisted(host, addresses):
        return
    if any(not address.is_global for address in addresses):
        raise FetchRefused(
            provider, f"{provider} returned an image URL on a private address; not fetched."
        )


def fetch_image(provider: str, url: str) -> tuple[bytes, str | None]:
    """The body and Content-Type at `url`, within APERTURE_FETCH_* limits."""
    deadline = time.monotonic() + settings.FETCH_TIMEOUT_SECONDS
    limit = settings.FETCH_MAX_BYTES
    for _ in range(MAX_REDIRECTS + 1):
        check_url(provider, url)
        try:
            response = http.session().get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(settings.UPSTREAM_CONNECT_TIMEOUT, settings.FETCH_TIMEOUT_SECONDS),
            )
        except requests.Timeout as exc:
            raise UpstreamTimedOut(provider, f"Downloading {provider}'s image timed out.") from exc
        except requests.RequestException as exc:
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
