"""Image routes the gateway knows on passthrough, and what a call on one asks for.

Passthrough forwards bytes untouched, but where a provider's native path is an image route
(OpenAI's and Azure's /images/*, Gemini's generateContent) the request's fields say what the
call may cost: the model, how many images, their size and quality. They are read from the
whole body (JSON, or a multipart form's text fields), whatever its padding or transfer
encoding, before anything goes upstream. A count the body does not state plainly is held at
the most a request may ask for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aperture.errors import InvalidRequest
from routing.providers.base import ImageRoute
from routing.providers.capabilities import MAX_N
from routing.providers.registry import passthrough_image_route, uncounted_image_path


def _as_read_upstream(path: str) -> str:
    """Repeated and trailing slashes, which servers commonly ignore, do not hide a route."""
    return re.sub(r"/{2,}", "/", path).rstrip("/")


def recognise(provider: str, method: str, path: str) -> ImageRoute | None:
    """The image route this call is on, as its provider declares them."""
    return passthrough_image_route(provider, method, _as_read_upstream(path))


def refuse_uncounted(provider: str, method: str, path: str, *, free: bool) -> None:
    """A native route that makes images the gateway cannot count is served only by a
    credential an operator marked free: otherwise its images would cost nothing."""
    if free or not uncounted_image_path(provider, method, _as_read_upstream(path)):
        return
    raise InvalidRequest(
        f"The gateway cannot count the images of {provider}'s {path}, so it does not relay "
        "it; an operator may mark the credential free.",
        code="route_not_priced",
    )


@dataclass(frozen=True)
class RequestFacts:
    """What the caller asked for, as far as its body says."""

    model: str
    n: int = 1
    size: str | None = None  # None: any size the model makes (priced at the dearest)
    quality: str | None = None


def _count(value: Any) -> int:
    """`n` as the caller sent it; absent is 1 (every API's default), anything unreadable is
    the most a request may ask for, so the hold covers whatever the upstream makes of it."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return MAX_N


def request_facts(route: ImageRoute, fields: Mapping[str, Any]) -> RequestFacts:
    """From a JSON body or a multipart form's text fields."""
    if route.family == "gemini":
        config = fields.get("generationConfig") or fields.get("generation_config") or {}
        count = config.get("candidateCount") if isinstance(config, dict) else MAX_N
        return RequestFacts(model=route.path_model or "", n=_count(count))
    model = route.path_model or fields.get("model")
    if not isinstance(model, str) or not model:
        # The upstream's default model changes over time (docs/providers.md, updates of
        # 2026-12-02: dall-e-2, once the default, is retired), so it cannot be priced.
        raise InvalidRequest(
            "An image call through passthrough must name its model.",
            param="model",
            code="model_required",
        )
    size, quality = fields.get("size"), fields.get("quality")
    return RequestFacts(
        model=model,
        n=_count(fields.get("n")),
        size=size if isinstance(size, str) and size != "auto" else None,
        quality=quality if isinstance(quality, str) and quality != "auto" else None,
    )
