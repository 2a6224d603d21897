"""ByteDance Seedream on Volcengine Ark / BytePlus ModelArk. docs/providers.md §4.

One endpoint, `POST /api/v3/images/generations`, for generations and edits (reference
images go in `image` as data URLs). Sizes are sent as pixels chosen within the model's
pixel range (a 4.5 or 5.0 model refuses anything under ~3.7 MP). Ark's `watermark` defaults
to true upstream; the gateway sends false unless the operator's credential options say
otherwise. One image per call: `n` is fanned out (no `sequential_image_generation`, so each
image is one predictable call). Results come back as URLs valid for 24 hours; the gateway
downloads them when the caller wants base64. A group's per-image `error` entries are
honoured: moderated images are left out, and none left is a 400. A 400 with one of Ark's
safety codes (`InputTextSensitiveContentDetected`, …) is a 400 `content_policy_violation`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth
from routing.providers.base import (
    OPENAI_ERRORS,
    OPENAI_MODERATION_CODES,
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

SEEDREAM_4 = ImageCapabilities(
    sizes=None,
    auto_size=True,
    min_side=256,
    max_side=4096,
    min_pixels=1280 * 720,
    max_pixels=4096 * 4096,
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=("jpeg",),
    native_response_formats=("url", "b64_json"),
    edits=True,
    mask=False,
    max_edit_images=14,
    max_prompt_chars=4000,
)
SEEDREAM_45 = ImageCapabilities(**{**SEEDREAM_4.__dict__, "min_pixels": 3_686_400})
# The 3.0 models take a seed (and one reference image for seededit).
SEEDREAM_3 = ImageCapabilities(
    **{
        **SEEDREAM_4.__dict__,
        "seed": True,
        "max_edit_images": 1,
        "min_pixels": 512 * 512,
        "max_pixels": 2048 * 2048,
    }
)
# Ark's safety refusals (docs/providers.md, updates of 2026-12-02): a 400 with one of these
# codes, and the same codes on a group's skipped images.
MODERATION_CODES = frozenset(
    {
        "InputTextSensitiveContentDetected",
        "InputImageSensitiveContentDetected",
        "InputImageSensitiveContentDetected.PrivacyInformation",
        "OutputImageSensitiveContentDetected",
        "ContentSecurityDetectionError",
    }
)
# The family: any …SensitiveContentDetected (with a variant after a dot) or …RiskDetection.
MODERATION_CODE_PATTERN = re.compile(r"\w*(?:SensitiveContentDetected(?:\.\w+)?|RiskDetection)")


def is_moderation_code(code: str) -> bool:
    return code in MODERATION_CODES or MODERATION_CODE_PATTERN.fullmatch(code) is not None


class SeedreamProvider(ProviderAdapter):
    name = "seedream"
    auth = ProviderAuth("Authorization", BEARER, "https://ark.cn-beijing.volces.com")
    uncounted_image_paths = (re.compile(r"/api/v3/images/.*"),)
    # Ark has no free call known that tests a key.
    error_shape = OPENAI_ERRORS  # `{"error": {"code", "message"}}` (docs/providers.md §4)
    moderation_codes = MODERATION_CODES | OPENAI_MODERATION_CODES  # and proxies' in front
    moderation_code_pattern = MODERATION_CODE_PATTERN

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        if "seedream-3" in upstream_model or "seededit" in upstream_model:
            return SEEDREAM_3
        if "seedream-4-0" in upstream_model:
            return SEEDREAM_4
        return SEEDREAM_45  # 4.5, 5.0 and newer take the larger minimum

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        options = target.merged_options(request)
        body: dict[str, Any] = {
            "watermark": False,
            **options,
            "model": target.upstream_model,
            "prompt": request.prompt,
            "response_format": "url" if request.response_format == "url" else "b64_json",
            "sequential_image_generation": "disabled",
        }
        if request.size != "auto":
            body["size"] = request.size
        if request.seed is not None:
            body["seed"] = request.seed
        if request.images:
            urls = [
                f"data:{image.media_type};base64,{base64.b64encode(image.read()).decode()}"
                for image in request.images
            ]
            body["image"] = urls[0] if len(urls) == 1 else urls
        return body

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        url = f"{target.base_url}/api/v3/images/generations"
        return self.parse(http.post_json(target, url, self.body(request, target)))

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)

    def parse(self, body: dict[str, Any]) -> ImageResult:
        found = body.get("data")
        items: list[Any] = found if isinstance(found, list) else []
        images, errors = [], []
        for item in items:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("error"), dict):
                errors.append(item["error"])
            elif isinstance(item.get("b64_json"), str) and is_base64(item["b64_json"]):
                images.append(GeneratedImage(b64=item["b64_json"], media_type="image/jpeg"))
            elif isinstance(item.get("url"), str):
                images.append(GeneratedImage(url=item["url"], media_type="image/jpeg"))
        if not images:
            error = errors[0] if errors else body.get("error") or {}
            code = str(error.get("code", "")) if isinstance(error, dict) else ""
            message = str(error.get("message", "")) if isinstance(error, dict) else ""
            if is_moderation_code(code):
                raise UpstreamModerated(self.name, f"seedream refused the image ({code}).")
            raise UpstreamFailed(self.name, f"seedream returned no image. {code} {message}".strip())
        first_size = next(
            (i.get("size") for i in items if isinstance(i, dict) and i.get("size")), None
        )
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        metadata = {"size": first_size} if isinstance(first_size, str) else {}
        return ImageResult(images=images, usage=usage, metadata=metadata)
