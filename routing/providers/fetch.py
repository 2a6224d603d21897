"""Download an image from a URL safely: time limit, size cap, no private addresses.

Used for images an upstream hosts (adapters that download their results at once) and for
callers' reference images. Connections go through the private-address guard of
aperture/outbound.py; redirects are followed by hand, each hop checked again, at most three.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings

from aperture.outbound import PrivateAddress, allowed_address, caused_by, guarded_session
from routing.providers.base import UpstreamFailed, UpstreamTimedOut

MAX_REDIRECTS = 3


class FetchRefused(UpstreamFailed):
    """The URL points somewhere the gateway will not go."""


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
