"""OpenRouter's image models through chat completions. docs/providers.md §6.

`POST {root}/api/v1/chat/completions` with `modalities` and an `image_config` (aspect ratio,
and a size tier where the model has tiers); images come back as data URLs in
`choices[0].message.images`. One image per call: `n` is fanned out. Edits and reference
images are `image_url` parts of the user message. An operator can set `modalities` (e.g.
`["image"]` for image-only models) in the credential's options.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth
from routing.providers.base import (
    ErrorShape,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderAdapter,
    Target,
    UpstreamFailed,
    UpstreamModerated,
    is_base64,
)
from routing.providers.capabilities import ImageCapabilities
from routing.providers.gemini import PRO_SIZES

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.IGNORECASE | re.DOTALL)

OPENROUTER = ImageCapabilities(
    sizes=tuple(PRO_SIZES),  # the normalized aspect ratios at 1K, 2K and 4K
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=("png",),
    edits=True,
    mask=False,
    max_edit_images=14,
    max_prompt_chars=32000,
)


# OpenRouter's dedicated Image API (POST /api/v1/images) takes the gateway's normalized
# options natively: any size, n, seed, quality, background, formats, references.
OPENROUTER_IMAGES = ImageCapabilities(
    sizes=None,
    min_side=64,
    max_side=4096,
    max_n=10,
    qualities=None,
    styles=(),
    native_output_formats=("png", "jpeg", "webp"),
    transparent_background=True,
    seed=True,
    edits=True,
    mask=False,
    max_edit_images=14,
    max_prompt_chars=32000,
)


def _uses_image_api(options: Mapping[str, Any] | None) -> bool:
    return (options or {}).get("api") == "images"


class OpenRouterProvider(ProviderAdapter):
    name = "openrouter"
    auth = ProviderAuth("Authorization", BEARER, "https://openrouter.ai")
    # Its Image API, and chat completions, which make images when asked to.
    uncounted_image_paths = (re.compile(r"/api/v1/images(?:/.*)?"), re.compile(r"/api/v1/chat/.*"))
    check_path = "/api/v1/key"
    # `{"error": {"code": <HTTP status>, "message", "metadata"}}` (docs/providers.md §6).
    error_shape = ErrorShape(("error", "message"), ("error", "code"))

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return OPENROUTER_IMAGES if _uses_image_api(options) else OPENROUTER

    def images_body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        """The Image API's body: the caller's normalized options as they are."""
        body: dict[str, Any] = {
            "model": target.upstream_model,
            "prompt": request.prompt,
            "n": request.n,
        }
        if request.resolution or request.aspect_ratio:
            body["resolution"] = request.resolution
            body["aspect_ratio"] = request.aspect_ratio
        elif request.size != "auto":
            body["size"] = request.size
        optional = {
            "seed": request.seed,
            "quality": request.quality,
            "background": request.background,
            "output_format": request.output_format,
            "output_compression": request.output_compression,
            "user": request.user,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.images:
            body["input_references"] = [
                {
                    "type": "image_url",
                    "image_url": {
                        "url": f"data:{i.media_type};base64,{base64.b64encode(i.read()).decode()}"
                    },
                }
                for i in request.images
            ]
        options = {k: v for k, v in target.merged_options(request).items() if k != "api"}
        body.update(options)
        return {k: v for k, v in body.items() if v is not None}

    def _generate_with_image_api(self, request: ImageRequest, target: Target) -> ImageResult:
        body = http.post_json(
            target, f"{target.base_url}/api/v1/images", self.images_body(request, target)
        )
        images = []
        for item in body.get("data") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("b64_json"), str) and is_base64(item["b64_json"]):
                images.append(
                    GeneratedImage(
                        b64=item["b64_json"], media_type=f"image/{request.output_format or 'png'}"
                    )
                )
            elif isinstance(item.get("url"), str):
                images.append(GeneratedImage(url=item["url"]))
        if not images:
            raise UpstreamFailed(self.name, "openrouter's image API returned no image.")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        return ImageResult(images=images, usage=usage)

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        for image in request.images:
            data = base64.b64encode(image.read()).decode()
            content.append(
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:{image.media_type};base64,{data}"},
                }
            )
        body: dict[str, Any] = {
            "model": target.upstream_model,
            "messages": [{"role": "user", "content": content}],
            "modalities": ["image", "text"],
        }
        if request.size in PRO_SIZES:
            ratio, tier = PRO_SIZES[request.size]
            body["image_config"] = {"aspect_ratio": ratio}
            if tier != "1K":
                body["image_config"]["image_size"] = tier
        if request.user:
            body["user"] = request.user
        body.update({k: v for k, v in target.merged_options(request).items() if k != "api"})
        return body

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        if _uses_image_api(target.options):
            return self._generate_with_image_api(request, target)
        url = f"{target.base_url}/api/v1/chat/completions"
        return self.parse(http.post_json(target, url, self.body(request, target)), request)

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)

    def parse(self, body: dict[str, Any], request: ImageRequest) -> ImageResult:
        choices = body.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        message = choice.get("message") if isinstance(choice, dict) else None
        images = []
        for item in (message or {}).get("images") or []:
            url = (
                ((item or {}).get("image_url") or {}).get("url") if isinstance(item, dict) else None
            )
            match = _DATA_URL.match(url) if isinstance(url, str) else None
            if match and is_base64(match.group(2)):
                images.append(GeneratedImage(b64=match.group(2), media_type=match.group(1)))
            elif isinstance(url, str) and url.startswith(("http://", "https://")):
                images.append(GeneratedImage(url=url))
        if not images:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if reason == "content_filter":
                raise UpstreamModerated(self.name, "openrouter's model refused the image.")
            raise UpstreamFailed(self.name, f"openrouter returned no image ({reason or 'none'}).")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ImageResult(
            images=images,
            usage={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
                **({"cost": usage["cost"]} if "cost" in usage else {}),
            }
            if usage
            else None,
        )
