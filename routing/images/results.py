"""An upstream's images shaped into OpenAI's response: `data` entries in the requested
response_format and output_format, the echoed size, quality and format, and `usage` with
what the request was charged (`usage.cost`)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from aperture.api_fields import usd
from aperture.offload import run_blocking
from routing.images import conversion, hosting
from routing.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    UpstreamFailed,
    is_base64,
)
from routing.providers.fetch import fetch_image
from routing.tally import image_size, tenant_usage

UrlBuilder = Callable[[str], str]  # signed token → absolute URL


def finish_image(
    image: GeneratedImage,
    request: ImageRequest,
    provider: str,
    url_for: UrlBuilder,
    lasting_urls: bool = True,
) -> dict[str, Any]:
    """One entry of `data`: in the requested response_format and output_format."""
    data, media_type = image.data, image.media_type
    wanted_format = request.output_format
    if image.b64 is not None:
        if not is_base64(image.b64):
            raise UpstreamFailed(provider, f"{provider} returned an image in invalid base64.")
        head = base64.b64decode(image.b64[:64])  # enough to tell PNG, JPEG and WebP apart
        actual = conversion.sniff_format(head)
        unchanged = actual is not None and wanted_format in (None, actual)
        if unchanged and request.response_format == "b64_json":
            return _entry({"b64_json": image.b64}, image)  # no decode, no re-encode
        data = image.content()
    if data is None and image.url is not None:
        handed_on = lasting_urls and _is_web_url(image.url)
        if request.response_format == "url" and wanted_format in (None, "png") and handed_on:
            return _entry({"url": image.url}, image)
        # Fetched and re-hosted; a URL the fetch refuses (file:, ftp:, ...) is a 502.
        data, media_type = fetch_image(provider, image.url)
    assert data is not None
    actual_format = conversion.sniff_format(data)
    if wanted_format and actual_format != wanted_format:
        data = run_blocking(
            partial(conversion.convert, provider, data, wanted_format, request.output_compression)
        )
        actual_format = wanted_format
    media_type = f"image/{actual_format}" if actual_format else (media_type or "image/png")
    if request.response_format == "url":
        return _entry({"url": url_for(hosting.sign(hosting.store(data, media_type)))}, image)
    return _entry({"b64_json": base64.b64encode(data).decode()}, image)


def _is_web_url(url: str) -> bool:
    """Only http(s) URLs reach a caller: another scheme is nothing a client should follow."""
    return urlsplit(url).scheme.lower() in ("http", "https")


def _entry(fields: dict[str, Any], image: GeneratedImage) -> dict[str, Any]:
    if image.revised_prompt:
        fields["revised_prompt"] = image.revised_prompt
    return fields


def response_body(
    data: list[dict[str, Any]], request: ImageRequest, result: ImageResult
) -> dict[str, Any]:
    response: dict[str, Any] = {"created": int(time.time()), "data": data}
    metadata = dict(result.metadata)
    if request.size != "auto":
        metadata.setdefault("size", request.size)  # the concrete size chosen, always said
    if request.output_format:
        metadata["output_format"] = request.output_format
    for key in ("background", "output_format", "quality", "size"):
        if key in metadata:
            response[key] = metadata[key]
    if result.usage:
        response["usage"] = result.usage
    return response


def with_cost(body: dict[str, Any], charged_micro: int) -> dict[str, Any]:
    """`usage.cost`, what the request was charged in USD with six places ("0.040000"), next
    to the provider's token counts (never a price of its own; a `usage` where it gave none)."""
    body["usage"] = tenant_usage(body.get("usage"), usd(charged_micro))
    return body


def measured_size(image: GeneratedImage) -> str | None:
    """ "WxH" of an upstream's image, read from its header alone; None if it cannot be."""
    return image_size(data=image.data, b64=image.b64)
