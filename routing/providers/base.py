"""Canonical image request/result and the adapter interface every provider implements.

The gateway validates and normalizes a tenant's request into an `ImageRequest`, hands it to
the deployment's adapter with a `Target` (where and as whom to call), and gets back an
`ImageResult`. Adapters raise `ProviderError`s; the router maps them to HTTP answers.
Each adapter class also declares its provider's facts (how its credential is sent, its free
credential-check call, its moderation codes and error shape, its passthrough image routes);
routing/providers/registry.py derives the gateway's tables from them.
"""

from __future__ import annotations

import base64
import io
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Literal

from routing.providers.auth import BEARER, ProviderAuth
from routing.providers.capabilities import ImageCapabilities


@dataclass(frozen=True, eq=False)
class InputImage:
    """One checked image a caller sent (the images layer checks it): its bytes in memory or
    a file on disk, its format and size."""

    filename: str
    media_type: str
    width: int
    height: int
    size_bytes: int
    data: bytes | None = None
    path: str | None = None

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """A fresh handle at the start of the image, however many are open at once."""
        if self.data is not None:
            yield io.BytesIO(self.data)
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            yield handle

    def read(self) -> bytes:
        with self.open() as handle:
            return handle.read()


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
    # Whether the caller has asked to stop the call while it runs (an async job cancelled):
    # an adapter whose upstream can stop work under way checks it as it polls.
    stop_requested: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

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
    connect_timeout_seconds: float | None = None  # None: APERTURE_UPSTREAM_CONNECT_TIMEOUT
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


_BASE64_ALPHABET = string.ascii_letters.encode() + string.digits.encode() + b"+/"


def is_base64(text: str) -> bool:
    """Well-formed base64, checked without decoding (images are passed on as they came): the
    alphabet, then at most two `=` at the end. Deleting the alphabet's bytes runs at memory
    speed, three times a regular expression's (1.2 against 3.8 ms for a 1.5 MB image)."""
    if len(text) % 4 or not text.isascii():
        return False
    rest = text.encode("ascii").translate(None, _BASE64_ALPHABET)
    return not rest or (rest in (b"=", b"==") and text.endswith(rest.decode()))


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


class UpstreamUnreachable(UpstreamFailed):
    """No connection was made: nothing was sent, so another deployment may always be tried."""


class UpstreamRetired(UpstreamFailed):
    """The upstream no longer serves the deployment's model (its provider retired it): the
    operator's problem. The next deployment is tried, and this one's health counts it."""


class UpstreamCancelled(ProviderError):
    """The caller cancelled the call while it ran, and the upstream was told to stop."""


class UpstreamTimedOut(ProviderError):
    """The request was sent and no answer came in time: the upstream may have done the work
    (and charged for it)."""

    retryable = True


# The shape of an image route's request and answer: OpenAI's images API, or Gemini's
# generateContent.
ImageFamily = Literal["openai", "gemini"]


@dataclass(frozen=True)
class ImageRoute:
    """A provider's native image route, recognised on passthrough."""

    provider: str
    family: ImageFamily
    path_model: str | None = None  # the model when the path names it (Azure, Gemini)


@dataclass(frozen=True)
class ImageRoutePattern:
    """A native path (full match) that makes images; a `model` group names the model."""

    path: re.Pattern[str]
    family: ImageFamily

    def route(self, provider: str, path: str) -> ImageRoute | None:
        match = self.path.fullmatch(path)
        if match is None:
            return None
        return ImageRoute(provider, self.family, path_model=match.groupdict().get("model"))


@dataclass(frozen=True)
class ErrorShape:
    """Where an upstream's JSON error body keeps its message, code and param, as key paths.

    A part the body does not have where declared is read the generic way (routing/providers/
    http.py), so that a proxy's or gateway's OpenAI-style envelope is still understood."""

    message: tuple[str, ...]
    code: tuple[str, ...] = ()
    param: tuple[str, ...] = ()

    def pick(self, body: Any, path: tuple[str, ...]) -> str | None:
        """The text at `path`: a string, a number, or a list of messages joined."""
        if not path:
            return None
        for key in path:
            body = body.get(key) if isinstance(body, dict) else None
        if isinstance(body, str) and body:
            return body
        if isinstance(body, int) and not isinstance(body, bool):
            return str(body)
        if isinstance(body, list) and body:  # e.g. Stability's errors, FastAPI's detail
            return "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in body
            )
        return None


@dataclass(frozen=True)
class UpstreamErrorBody:
    """What an upstream's error answer says: its message, code and param."""

    message: str
    code: str
    param: str | None


# OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}` (docs/providers.md §1.8).
OPENAI_ERRORS = ErrorShape(("error", "message"), ("error", "code"), ("error", "param"))
# OpenAI's safety refusals (docs/providers.md §1.8): what OpenAI-compatible upstreams, and the
# proxies in front of the others, answer with.
OPENAI_MODERATION_CODES = frozenset({"moderation_blocked", "content_policy_violation"})


class ProviderAdapter(ABC):
    """Translate the canonical request to one upstream's native call and back."""

    name: str

    # --- the provider's facts -------------------------------------------------------------
    # The header that carries the credential, and the provider's default root.
    auth: ClassVar[ProviderAuth] = ProviderAuth("Authorization", BEARER)
    # The free, read-only call that tells whether a credential works; None where none is
    # known (the credential cannot be tested without spending).
    check_path: ClassVar[str | None] = None
    # Error codes of an answer that is the upstream's safety system refusing the request, a
    # pattern (whole code) for a family of them, and the statuses such an answer comes with.
    moderation_codes: ClassVar[frozenset[str]] = OPENAI_MODERATION_CODES
    moderation_code_pattern: ClassVar[re.Pattern[str] | None] = None
    moderation_statuses: ClassVar[frozenset[int]] = frozenset({400})
    # Where its error bodies keep message, code and param; None: read them the generic way.
    error_shape: ClassVar[ErrorShape | None] = None
    # Whether a call under way can be stopped (its adapter honours `stop_requested`).
    cancels_running: ClassVar[bool] = False
    # Native paths that make images: passthrough reserves and charges for them.
    image_routes: ClassVar[tuple[ImageRoutePattern, ...]] = ()
    # Native paths that make images the gateway cannot count (submit-and-poll, chat with
    # image output, bytes out): passthrough refuses them unless the credential is free.
    uncounted_image_paths: ClassVar[tuple[re.Pattern[str], ...]] = ()

    def check_params(self, api_version: str) -> dict[str, str] | None:
        """Query parameters of the credential-check call."""
        return None

    @classmethod
    def is_moderation(cls, status: int, error: UpstreamErrorBody) -> bool:
        """Whether an error answer is the upstream's safety system refusing the request."""
        if status not in cls.moderation_statuses:
            return False
        pattern = cls.moderation_code_pattern
        return error.code in cls.moderation_codes or (
            pattern is not None and pattern.fullmatch(error.code) is not None
        )

    # --- the calls ------------------------------------------------------------------------

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
