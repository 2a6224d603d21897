"""Stability AI Stable Image (ultra, core, sd3). docs/providers.md §7.

`POST {root}/v2beta/stable-image/generate/{ultra|core|sd3}` takes multipart/form-data even
without a file; the gateway asks `Accept: application/json` so that the image comes back as
base64 beside its `finish_reason` and `seed`. The deployment's model id picks the endpoint:
`ultra`, `core`, or an SD 3.5 model (`sd3.5-large`, …) sent to `sd3` as `model`. Sizes are
aspect ratios; one image per call (`n` is fanned out). Ultra and sd3 also edit (image to
image, one image, no mask). `CONTENT_FILTERED`, even with a 200, and a 403
`content_moderation` are 400 `content_policy_violation` (the 403 is not an auth failure and
does not count against the deployment). Error bodies are `{"id", "name", "errors": [...]}`
(docs/providers.md, updates of 2026-12-02).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from requests_toolbelt import MultipartEncoder

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth, credential_headers
from routing.providers.base import (
    OPENAI_MODERATION_CODES,
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
from routing.providers.capabilities import OUTPUT_FORMATS, ImageCapabilities

# The aspect ratios Stability takes, at the ~1 MP sizes it renders them.
SIZES = {
    "1024x1024": "1:1",
    "1344x768": "16:9",
    "768x1344": "9:16",
    "1536x640": "21:9",
    "640x1536": "9:21",
    "1216x832": "3:2",
    "832x1216": "2:3",
    "1088x896": "5:4",
    "896x1088": "4:5",
}
CORE = ImageCapabilities(
    sizes=tuple(SIZES),
    max_n=1,
    qualities=(),
    styles=(),
    native_output_formats=OUTPUT_FORMATS,
    seed=True,
    max_prompt_chars=10000,
)
# Ultra and SD 3.5 also turn one image into another (no mask).
ULTRA = ImageCapabilities(**{**CORE.__dict__, "edits": True, "mask": False, "max_edit_images": 1})
SD3 = ImageCapabilities(**{**ULTRA.__dict__, "native_output_formats": ("png", "jpeg")})
MAX_SEED = 4294967294


def endpoint_for(model: str) -> str:
    return model if model in ("ultra", "core") else "sd3"


class StabilityProvider(ProviderAdapter):
    name = "stability"
    auth = ProviderAuth("Authorization", BEARER, "https://api.stability.ai")
    uncounted_image_paths = (re.compile(r"/v2beta/.*"), re.compile(r"/v1/generation/.*"))
    check_path = "/v1/user/account"
    error_shape = ErrorShape(("errors",), ("name",))  # `{"id", "name", "errors": [...]}`
    # Moderation is a 403 named content_moderation (docs/providers.md, updates of 2026-12-02):
    # a refusal of the content, not of the credential.
    moderation_codes = frozenset({"content_moderation"}) | OPENAI_MODERATION_CODES  # proxies
    moderation_statuses = frozenset({400, 403})

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        endpoint = endpoint_for(upstream_model)
        return {"ultra": ULTRA, "core": CORE}.get(endpoint, SD3)

    def fields(self, request: ImageRequest, target: Target) -> dict[str, str]:
        fields: dict[str, Any] = {"prompt": request.prompt, **target.merged_options(request)}
        if request.size in SIZES and not request.images:
            fields["aspect_ratio"] = SIZES[request.size]
        if request.seed is not None:
            fields["seed"] = min(request.seed, MAX_SEED)
        if request.output_format:
            fields["output_format"] = request.output_format
        if endpoint_for(target.upstream_model) == "sd3":
            fields["model"] = target.upstream_model
            if request.images:
                fields["mode"] = "image-to-image"
        if request.images:
            fields.setdefault("strength", "0.7")
        return {name: str(value) for name, value in fields.items()}

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        parts: list[tuple[str, Any]] = list(self.fields(request, target).items())
        endpoint = endpoint_for(target.upstream_model)
        with ExitStack() as stack:
            for image in request.images:
                handle = stack.enter_context(image.open())
                parts.append(("image", (image.filename, handle, image.media_type)))
            form = MultipartEncoder(fields=parts)
            response = http.send(
                self.name,
                "POST",
                f"{target.base_url}/v2beta/stable-image/generate/{endpoint}",
                timeout=target.timeout_seconds,
                connect_timeout=target.connect_timeout_seconds,
                guarded=target.guarded,
                headers={
                    **target.extra_headers,
                    **credential_headers(self.name, target.secret),
                    "Accept": "application/json",
                    "Content-Type": form.content_type,
                },
                data=form,
            )
        http.check_status(self.name, response)
        return self.parse(http.json_object(self.name, response), request)

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)

    def parse(self, body: dict[str, Any], request: ImageRequest) -> ImageResult:
        if body.get("finish_reason") == "CONTENT_FILTERED":
            raise UpstreamModerated(self.name, "stability filtered the image (CONTENT_FILTERED).")
        encoded = body.get("image")
        if not isinstance(encoded, str) or not encoded or not is_base64(encoded):
            raise UpstreamFailed(self.name, "stability returned no image.")
        output_format = request.output_format or "png"
        metadata = {}
        if isinstance(body.get("seed"), int):
            metadata["seed"] = str(body["seed"])
        return ImageResult(
            images=[GeneratedImage(b64=encoded, media_type=f"image/{output_format}")],
            metadata=metadata,
        )
