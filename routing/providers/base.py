"""Canonical image request/result and the adapter interface every provider implements.

The gateway validates and normalizes a tenant's request into an `ImageRequest`, hands it to
the deployment's adapter with a `Target` (where and as whom to call), and gets back an
`ImageResult`. Adapters raise `ProviderError`s; the router maps them to HTTP answers.
"""

from __future__ import annotations

import base64
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from routing.images.inputs import InputImage
from routing.providers.capabilities import ImageCapabilities


@dataclass(frozen=True)
class ImageRequest:
    """What the tenant asked for, after validation. `size` is "WxH" or "auto"."""

    prompt: str
    n: int = 1
    size: str = "auto"
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    moderation: str | None = None
    user: str | None = None
    seed: int | None = None
    response_format: str = "b64_json"
    extras: dict[str, Any] = field(default_factory=dict)
    # {"openai": {...}}: options for one provider, passed to its adapter as they are.
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # With n fanned out over several calls: return the images that came if some calls fail.
    allow_partial: bool = False
    # An edit: the images to change (the first is the one a mask applies to).
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    input_fidelity: str | None = None
    # The caller's own normalized options, kept for upstreams that take them as they are.
    resolution: str | None = None
    aspect_ratio: str | None = None
    # Reference images as the caller gave them (data or http(s) URLs); fetched into `images`.
    references: tuple[str, ...] = ()
    # Server-sent events: `partial_images` previews, then each final image.
    stream: bool = False
    partial_images: int = 0

    @property
    def event_prefix(self) -> str:
        """A generation with reference images is still a generation to its caller."""
        return "image_edit" if self.is_edit and not self.references else "image_generation"

    @property
    def is_edit(self) -> bool:
        return bool(self.images)

    def options_for(self, provider: str) -> dict[str, Any]:
        return self.provider_options.get(provider, {})

    @property
    def dimensions(self) -> tuple[int, int] | None:
        if self.size == "auto":
            return None
        width, _, height = self.size.partition("x")
        return int(width), int(height)


@dataclass(frozen=True)
class GeneratedImage:
    """One image: bytes (with their media type), the upstream's base64 of them as it came
    (kept so that an image passed on unchanged is not decoded and encoded again), or a URL
    the upstream hosts."""

    data: bytes | None = None
    media_type: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    b64: str | None = None

    def content(self) -> bytes | None:
        if self.data is None and self.b64 is not None:
            return base64.b64decode(self.b64)
        return self.data


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    usage: dict[str, Any] | None = None
    # Echoed fields the upstream reported (size, quality, background, output_format).
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """Where and as whom an adapter calls: one deployment with its decrypted credential."""

    provider: str
    credential_name: str
    base_url: str
    secret: str
    upstream_model: str
    timeout_seconds: float
    api_version: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    # The operator's provider options (the credential's); a caller's `provider` options win.
    options: dict[str, Any] = field(default_factory=dict)
    # A workspace's own (BYOK) credential: its base URL is the tenant's, so every connection
    # is checked against private addresses.
    guarded: bool = False

    def merged_options(self, request: ImageRequest) -> dict[str, Any]:
        return {**self.options, **request.options_for(self.provider)}


class ProviderError(Exception):
    """An upstream failure, described without any secret."""

    retryable = False

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message


class UpstreamRejected(ProviderError):
    """The upstream refused the request itself (its 4xx other than auth and rate limits)."""

    def __init__(self, provider: str, message: str, status: int, param: str | None = None) -> None:
        super().__init__(provider, message)
        self.status = status
        self.param = param


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_base64(text: str) -> bool:
    """Well-formed base64, checked without decoding (images are passed on as they came)."""
    return len(text) % 4 == 0 and _BASE64.fullmatch(text) is not None


class UpstreamModerated(ProviderError):
    """The upstream's safety system refused the prompt, the input or every output."""


class UpstreamAuthFailed(ProviderError):
    """The upstream refused the gateway's credential (401/403): the operator's problem."""

    def __init__(self, provider: str, status: int) -> None:
        super().__init__(provider, f"{provider} refused the gateway's credential (HTTP {status}).")
        self.status = status


class UpstreamRateLimited(ProviderError):
    retryable = True

    def __init__(self, provider: str, message: str, retry_after: str | None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after


class UpstreamFailed(ProviderError):
    """5xx, a reset connection or an unreadable body."""

    retryable = True


class UpstreamTimedOut(ProviderError):
    retryable = True


class ProviderAdapter(ABC):
    """Translate the canonical request to one upstream's native call and back."""

    name: str

    @abstractmethod
    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        """What this upstream model accepts (with the deployment's options, where they choose
        an API); drives validation and /v1/models."""

    @abstractmethod
    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        """Make the images, or raise a ProviderError."""

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        """Change `request.images`; only models whose capabilities say `edits` are asked."""
        raise UpstreamRejected(self.name, f"{self.name} cannot edit images.", status=400)

    def stream(self, request: ImageRequest, target: Target) -> EventSource:
        """OpenAI-shaped server-sent events for `request` (generation or edit); only models
        whose capabilities say `streaming` are asked."""
        raise UpstreamRejected(self.name, f"{self.name} cannot stream images.", status=400)


@dataclass
class EventSource:
    """An opened stream: its chunks (already OpenAI-shaped SSE bytes) and how to close it."""

    chunks: Iterator[bytes]
    close: Callable[[], None]
