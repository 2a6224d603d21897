"""Google Gemini native image output (`generateContent`) and Imagen (`:predict`).
docs/providers.md §3.

One credential kind serves both on the Gemini API root: models named `imagen-*` go to
`:predict`, every other model to `:generateContent` with `responseModalities` and an
`imageConfig` (aspect ratio and size tier: "512", 1K, 2K, 4K on Gemini 3.1 Flash Image, with
its extra shapes 1:4 to 8:1) chosen from the caller's size. Gemini makes one
image per call (the gateway fans out `n`); edits and reference images travel as inline image
parts. A prompt or output the safety system blocked is a 400 `content_policy_violation`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from routing.providers import http
from routing.providers.auth import ProviderAuth
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
)
from routing.providers.capabilities import ImageCapabilities

# The 1K pixel sizes of each aspect ratio (gemini-2.5-flash-image; docs/providers.md §3.2, M).
_RATIO_1K = {
    "1:1": (1024, 1024),
    "16:9": (1408, 768),
    "9:16": (768, 1408),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "21:9": (1536, 672),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
}
# Gemini 3.1 Flash Image's extra shapes (docs/providers.md, updates of 2026-12-02: H for the
# ratios; these pixel sizes, about 1 MP each, are the gateway's estimate, L).
_EXTREME_1K = {"1:4": (512, 2048), "4:1": (2048, 512), "1:8": (384, 3072), "8:1": (3072, 384)}
# imageSize tiers as a scale of the 1K sizes; "512" is sent as it is (not "0.5K").
_TIER_SCALE = {"512": 0.5, "1K": 1, "2K": 2, "4K": 4}


def _size_table(
    tiers: tuple[str, ...], ratios: dict[str, tuple[int, int]] = _RATIO_1K
) -> dict[str, tuple[str, str]]:
    """ "WxH" → (aspect ratio, size tier) for the tiers and ratios a model offers."""
    table = {}
    for tier in tiers:
        scale = _TIER_SCALE[tier]
        for ratio, (width, height) in ratios.items():
            table[f"{int(width * scale)}x{int(height * scale)}"] = (ratio, tier)
    return table


FLASH_SIZES = _size_table(("1K",))
PRO_SIZES = _size_table(("1K", "2K", "4K"))
FLASH_31_SIZES = _size_table(("512", "1K", "2K", "4K"), {**_RATIO_1K, **_EXTREME_1K})
# Moderation verdicts of generateContent (docs/providers.md §3.2).
BLOCKED_FINISH = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def _gemini_caps(sizes: dict[str, tuple[str, str]], references: int) -> ImageCapabilities:
    return ImageCapabilities(
        sizes=tuple(sizes),
        max_n=1,
        qualities=(),
        styles=(),
        native_output_formats=("png",),
        edits=True,
        mask=False,
        max_edit_images=references,
        max_prompt_chars=32000,
    )


GEMINI_FLASH = _gemini_caps(FLASH_SIZES, 3)
# Gemini 3 models take up to 14 reference images (docs/providers.md, updates of 2026-12-02).
GEMINI_PRO = _gemini_caps(PRO_SIZES, 14)
GEMINI_FLASH_31 = _gemini_caps(FLASH_31_SIZES, 14)
# Google lists the preview's discontinuation on 2026-07-17 (M); the GA id serves on.
GEMINI_FLASH_31_PREVIEW = replace(
    GEMINI_FLASH_31, retired="2026-07-17", successor="gemini-3.1-flash-image"
)


@dataclass(frozen=True)
class _GeminiImageModel:
    caps: ImageCapabilities
    sizes: dict[str, tuple[str, str]]
    names_tier: bool  # whether imageConfig names the tier (2.5 Flash makes 1K only)


def _gemini_model(model: str) -> _GeminiImageModel:
    if model.startswith("gemini-3") and "flash" in model:
        preview = model.startswith("gemini-3.1-flash-image-preview")
        caps = GEMINI_FLASH_31_PREVIEW if preview else GEMINI_FLASH_31
        return _GeminiImageModel(caps, FLASH_31_SIZES, True)
    if model.startswith("gemini-3"):
        return _GeminiImageModel(GEMINI_PRO, PRO_SIZES, True)
    return _GeminiImageModel(GEMINI_FLASH, FLASH_SIZES, False)


# Imagen: five aspect ratios, 1K (and 2K on Imagen 4 standard and ultra), 1-4 per call.
_IMAGEN_1K = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}


def _imagen_table(tiers: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    return {
        f"{int(w * _TIER_SCALE[tier])}x{int(h * _TIER_SCALE[tier])}": (ratio, tier)
        for tier in tiers
        for ratio, (w, h) in _IMAGEN_1K.items()
    }


IMAGEN_1K_SIZES = _imagen_table(("1K",))
IMAGEN_2K_SIZES = _imagen_table(("1K", "2K"))


def _imagen_caps(sizes: dict[str, tuple[str, str]]) -> ImageCapabilities:
    return ImageCapabilities(
        sizes=tuple(sizes),
        max_n=4,
        qualities=(),
        styles=(),
        native_output_formats=("png", "jpeg"),
        max_prompt_chars=4000,
    )


IMAGEN = _imagen_caps(IMAGEN_1K_SIZES)
IMAGEN_2K = _imagen_caps(IMAGEN_2K_SIZES)


def _is_imagen(model: str) -> bool:
    return model.startswith("imagen-")


def _imagen_sizes(model: str) -> dict[str, tuple[str, str]]:
    two_k = model.startswith(("imagen-4.0-generate", "imagen-4.0-ultra-generate"))
    return IMAGEN_2K_SIZES if two_k else IMAGEN_1K_SIZES


class GeminiProvider(ProviderAdapter):
    name = "gemini"
    auth = ProviderAuth(
        "x-goog-api-key", default_base_url="https://generativelanguage.googleapis.com"
    )
    # Imagen (`:predict`) and long-running predictions; generateContent is counted.
    uncounted_image_paths = (re.compile(r"/v1(?:beta)?/models/[^/:]+:predict(?:LongRunning)?"),)
    check_path = "/v1beta/models"
    # Google's `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}`
    # (docs/providers.md §3.2).
    error_shape = ErrorShape(("error", "message"), ("error", "status"))
    image_routes = (
        ImageRoutePattern(
            re.compile(
                r"/v1(?:beta)?/models/(?P<model>[^/:]+):(?:generateContent|streamGenerateContent)"
            ),
            "gemini",
        ),
    )

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        if _is_imagen(upstream_model):
            return IMAGEN_2K if _imagen_sizes(upstream_model) is IMAGEN_2K_SIZES else IMAGEN
        return _gemini_model(upstream_model).caps

    def _url(self, target: Target, method: str) -> str:
        return f"{target.base_url}/v1beta/models/{target.upstream_model}:{method}"

    def _post(self, target: Target, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return http.post_json(target, self._url(target, method), body)

    # --- Gemini generateContent -------------------------------------------------------
    def content_body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        for image in request.images:
            parts.append(
                {
                    "inlineData": {
                        "mimeType": image.media_type,
                        "data": base64.b64encode(image.read()).decode(),
                    }
                }
            )
        image_config: dict[str, str] = {}
        model = _gemini_model(target.upstream_model)
        if request.size in model.sizes:
            ratio, tier = model.sizes[request.size]
            image_config["aspectRatio"] = ratio
            if model.names_tier:
                image_config["imageSize"] = tier
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if image_config:
            config["imageConfig"] = image_config
        options = target.merged_options(request)
        config.update(options.pop("generationConfig", {}))
        return {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": config,
            **options,
        }

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        if _is_imagen(target.upstream_model):
            return self._predict(request, target)
        body = self._post(target, "generateContent", self.content_body(request, target))
        return self.parse_content(body, request)

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self.generate(request, target)  # the images are inline parts of the request

    def parse_content(self, body: dict[str, Any], request: ImageRequest) -> ImageResult:
        feedback = body.get("promptFeedback") or {}
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise UpstreamModerated(
                self.name, f"gemini blocked the prompt ({feedback['blockReason']})."
            )
        images, reasons = [], []
        for candidate in body.get("candidates") or []:
            if not isinstance(candidate, dict):
                continue
            reasons.append(str(candidate.get("finishReason") or ""))
            for part in (candidate.get("content") or {}).get("parts") or []:
                inline = (part or {}).get("inlineData") or (part or {}).get("inline_data")
                if not isinstance(inline, dict):
                    continue
                mime = inline.get("mimeType") or inline.get("mime_type") or "image/png"
                data = inline.get("data")
                if isinstance(data, str) and data and str(mime).startswith("image/"):
                    images.append(GeneratedImage(b64=data, media_type=str(mime)))
        if not images:
            blocked = [r for r in reasons if r in BLOCKED_FINISH]
            if blocked:
                raise UpstreamModerated(self.name, f"gemini blocked the image ({blocked[0]}).")
            reason = next((r for r in reasons if r), "no candidates")
            raise UpstreamFailed(self.name, f"gemini returned no image ({reason}).")
        usage = body.get("usageMetadata") if isinstance(body.get("usageMetadata"), dict) else {}
        return ImageResult(
            images=images,
            usage={
                "input_tokens": usage.get("promptTokenCount", 0),
                "output_tokens": usage.get("candidatesTokenCount", 0),
                "total_tokens": usage.get("totalTokenCount", 0),
            }
            if usage
            else None,
        )

    # --- Imagen :predict --------------------------------------------------------------
    def predict_body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        parameters: dict[str, Any] = {"sampleCount": request.n}
        sizes = _imagen_sizes(target.upstream_model)
        if request.size in sizes:
            ratio, tier = sizes[request.size]
            parameters["aspectRatio"] = ratio
            if sizes is IMAGEN_2K_SIZES:
                parameters["sampleImageSize"] = tier
        if request.output_format == "jpeg":
            parameters["outputOptions"] = {"mimeType": "image/jpeg"}
            if request.output_compression is not None:
                parameters["outputOptions"]["compressionQuality"] = request.output_compression
        parameters.update(target.merged_options(request))
        return {"instances": [{"prompt": request.prompt}], "parameters": parameters}

    def _predict(self, request: ImageRequest, target: Target) -> ImageResult:
        body = self._post(target, "predict", self.predict_body(request, target))
        found = body.get("predictions")
        predictions: list[Any] = found if isinstance(found, list) else []
        images = [
            GeneratedImage(b64=p["bytesBase64Encoded"], media_type=p.get("mimeType", "image/png"))
            for p in predictions
            if isinstance(p, dict) and isinstance(p.get("bytesBase64Encoded"), str)
        ]
        if not images:  # filtered images are dropped, so none back means all were filtered
            reasons = [p.get("raiFilteredReason") for p in predictions if isinstance(p, dict)]
            reason = next((r for r in reasons if r), "every image was filtered")
            raise UpstreamModerated(self.name, f"imagen returned no image: {reason}")
        return ImageResult(images=images)
