"""xAI image generation (grok-imagine, grok-2-image). docs/providers.md §5.

OpenAI's route and auth, but not its fields: xAI refuses `size`, `style` and `seed`, and
takes `aspect_ratio` and `resolution` (`1k`, `2k`) instead. The gateway translates the
caller's size into the nearest of xAI's ratios and a resolution, refuses style and seed
with a 400 before the call (the capability table says so), and sends edits as JSON with
the images as data URLs (up to three, no mask; docs/providers.md, updates of 2026-12-02).
Moderation is silent: blocked images are simply missing from `data`; the caller gets the
images that came and pays for those only, and none at all is a 400
`content_policy_violation`.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from PIL import Image

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth
from routing.providers.base import (
    ErrorShape,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ImageRoutePattern,
    ProviderAdapter,
    Target,
    UpstreamFailed,
    UpstreamModerated,
    is_base64,
)
from routing.providers.capabilities import ImageCapabilities, nearest_ratio, tier_of

# xAI's aspect ratios (grok-imagine).
RATIOS = (
    "1:1",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "2:3",
    "3:2",
    "9:19.5",
    "19.5:9",
    "9:20",
    "20:9",
    "1:2",
    "2:1",
)
GROK_IMAGINE = ImageCapabilities(
    sizes=None,
    min_side=256,
    max_side=4096,
    max_pixels=2048 * 2048 * 5 // 4,  # up to the 2k resolution; xAI answers 503 to 4k
    max_n=10,
    qualities=(),
    styles=(),
    native_output_formats=("jpeg",),
    native_response_formats=("url", "b64_json"),
    edits=True,
    mask=False,
    max_edit_images=3,  # up to three source images per edit
    max_prompt_chars=8000,
)
# grok-imagine-image-2.0: price tiers by quality, low or medium only (M).
GROK_IMAGINE_2 = replace(GROK_IMAGINE, qualities=("low", "medium"))
# -pro is deprecated from 2026-05-15 for -quality (docs/providers.md, updates of 2026-12-02).
GROK_IMAGINE_PRO = replace(
    GROK_IMAGINE, retired="2026-05-15", successor="grok-imagine-image-quality"
)
GROK_2 = replace(GROK_IMAGINE, edits=False, max_pixels=1024 * 1024)


class XAIProvider(ProviderAdapter):
    name = "xai"
    auth = ProviderAuth("Authorization", BEARER, "https://api.x.ai")
    # OpenAI's shape (model, n; data[] back): reserved and charged like OpenAI's.
    image_routes = (ImageRoutePattern(re.compile(r"/v1/images/(?:generations|edits)"), "openai"),)
    check_path = "/v1/models"
    # xAI's flat `{"code", "error"}`; its OpenAI-style envelope is read the generic way.
    error_shape = ErrorShape(("error",), ("code",))

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        if upstream_model.startswith("grok-2-image"):
            return GROK_2
        if upstream_model.startswith("grok-imagine-image-2"):
            return GROK_IMAGINE_2
        if upstream_model.startswith("grok-imagine-image-pro"):
            return GROK_IMAGINE_PRO
        return GROK_IMAGINE

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        body: dict[str, Any] = {
            **target.merged_options(request),
            "model": target.upstream_model,
            "prompt": request.prompt,
            "n": request.n,
            "response_format": "b64_json",  # the gateway hosts a URL itself when asked
        }
        dimensions = request.dimensions
        if dimensions and not target.upstream_model.startswith("grok-2-image"):
            width, height = dimensions
            body["aspect_ratio"] = nearest_ratio(width, height, RATIOS)
            body["resolution"] = "2k" if tier_of(width, height) in ("2K", "4K") else "1k"
        if request.quality:
            body["quality"] = request.quality
        if request.user:
            body["user"] = request.user
        sources = [
            {
                "url": f"data:{image.media_type};base64,{base64.b64encode(image.read()).decode()}",
                "type": "image_url",
            }
            for image in request.images
        ]
        if len(sources) == 1:
            body["image"] = sources[0]
        elif sources:  # several: `images`, the REST counterpart of the SDK's image_urls (L)
            body["images"] = sources
        return body

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        path = "/v1/images/edits" if request.images else "/v1/images/generations"
        body = http.post_json(target, f"{target.base_url}{path}", self.body(request, target))
        return self.parse(body, request)

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)

    def parse(self, body: dict[str, Any], request: ImageRequest) -> ImageResult:
        items = body.get("data")
        if not isinstance(items, list):
            raise UpstreamFailed(self.name, "xai returned an unexpected body.")
        images = []
        for item in items:
            if not isinstance(item, dict):
                continue
            mime = str(item.get("mime_type") or "image/jpeg")
            encoded, url = item.get("b64_json"), item.get("url")
            if isinstance(encoded, str) and encoded and is_base64(encoded):
                images.append(
                    GeneratedImage(
                        b64=encoded, media_type=mime, revised_prompt=item.get("revised_prompt")
                    )
                )
            elif isinstance(url, str) and url:
                images.append(GeneratedImage(url=url, revised_prompt=item.get("revised_prompt")))
        if not images:  # xAI's moderation answers 200 with the blocked images left out
            raise UpstreamModerated(
                self.name, "xai returned no image: its moderation withheld every image."
            )
        metadata: dict[str, Any] = {}
        first = images[0]
        if first.b64 is not None:
            try:
                with Image.open(io.BytesIO(base64.b64decode(first.b64))) as opened:
                    metadata["size"] = f"{opened.width}x{opened.height}"  # what xAI made
            except (OSError, ValueError):
                raise UpstreamFailed(self.name, "xai returned an unreadable image.") from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        return ImageResult(images=images, usage=usage, metadata=metadata)
