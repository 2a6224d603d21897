"""Z.AI / Zhipu image generation: CogView-4 and GLM-Image.

Confirmed with the search tool against docs.z.ai's "Generate Image" reference (as stored in
a public repository) and Zhipu's content-safety page (docs.bigmodel.cn):
  - `POST {root}/api/paas/v4/images/generations`, `Authorization: Bearer <key>`; roots
    `https://open.bigmodel.cn` (mainland) and `https://api.z.ai` (international).
  - Body `model`, `prompt`, `size` (recommended 1024x1024, 768x1344, 864x1152, 1344x768,
    1152x864, 1440x720, 720x1440; custom sizes 512-2048 px per side, multiples of 16, at
    most 2^21 pixels), `quality` (`hd` | `standard`, cogview-4-250304 only), `user_id`
    (the end user, 6-128 characters: shorter ids are padded here, longer ones cut).
  - The answer is `{"created", "data": [{"url"}], "content_filter": [...]}`, one image.
  - A safety refusal is error code `1301` (with `contentFilter`), mapped to 400
    `content_policy_violation` by the shared error mapping.
Not confirmed: glm-image's own size limits (treated as CogView-4's) and its price.
Generation only: an edit aimed at a ZAI alias is a 400 before any call. `n` is fanned out.
The result URLs are temporary, so a caller asking for `url` gets a gateway-hosted copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth
from routing.providers.base import (
    OPENAI_ERRORS,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderAdapter,
    Target,
    UpstreamFailed,
)
from routing.providers.capabilities import ImageCapabilities

COGVIEW = ImageCapabilities(
    sizes=None,
    min_side=512,
    max_side=2048,
    size_multiple=16,
    max_pixels=2**21,
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=("png",),
    native_response_formats=("url",),
    lasting_urls=False,
    max_prompt_chars=4000,
)
COGVIEW_4_250304 = ImageCapabilities(**{**COGVIEW.__dict__, "qualities": ("standard", "hd")})
USER_ID_MIN, USER_ID_MAX = 6, 128


def user_id(user: str) -> str:
    """Z.AI refuses ids outside 6-128 characters: pad short ones, cut long ones."""
    return user.ljust(USER_ID_MIN, "_")[:USER_ID_MAX]


class ZAIProvider(ProviderAdapter):
    name = "zai"
    # Mainland root; the international one is https://api.z.ai (same paths). No free call
    # is known that tests a key.
    auth = ProviderAuth("Authorization", BEARER, "https://open.bigmodel.cn")
    uncounted_image_paths = (re.compile(r"/api/paas/v4/images/.*"),)  # no n: not counted yet
    moderation_codes = frozenset({"1301"})  # Zhipu's content-safety refusal
    error_shape = OPENAI_ERRORS

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return COGVIEW_4_250304 if upstream_model == "cogview-4-250304" else COGVIEW

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        body: dict[str, Any] = {
            **target.merged_options(request),
            "model": target.upstream_model,
            "prompt": request.prompt,
        }
        if request.size != "auto":
            body["size"] = request.size
        if request.quality:
            body["quality"] = request.quality
        if request.user:
            body["user_id"] = user_id(request.user)
        return body

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        url = f"{target.base_url}/api/paas/v4/images/generations"
        body = http.post_json(target, url, self.body(request, target))
        items = body.get("data") if isinstance(body.get("data"), list) else None
        urls = [
            i["url"] for i in items or [] if isinstance(i, dict) and isinstance(i.get("url"), str)
        ]
        if not urls:
            raise UpstreamFailed(self.name, "zai returned no image.")
        return ImageResult(images=[GeneratedImage(url=url) for url in urls])
