"""OpenAI Images API (gpt-image-*, dall-e-3, dall-e-2). docs/providers.md §1.

Only `model` is rewritten to the upstream id; every field the model supports is forwarded,
and unknown extra fields pass through unchanged so new upstream options keep working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import orjson
import requests
from requests_toolbelt import MultipartEncoder

from routing.providers import http
from routing.providers.auth import BEARER, ProviderAuth, credential_headers
from routing.providers.base import (
    OPENAI_ERRORS,
    OPENAI_MODERATION_CODES,
    EventSource,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ImageRoutePattern,
    ProviderAdapter,
    ProviderError,
    Target,
    UpstreamFailed,
    is_base64,
)
from routing.providers.capabilities import OUTPUT_FORMATS, ImageCapabilities

GPT_IMAGE = ImageCapabilities(
    sizes=("1024x1024", "1536x1024", "1024x1536"),
    max_n=10,
    qualities=("low", "medium", "high", "auto"),
    styles=(),
    native_output_formats=OUTPUT_FORMATS,
    transparent_background=True,
    native_response_formats=("b64_json",),
    moderation=True,
    edits=True,
    input_fidelity=True,
    streaming=True,
    max_prompt_chars=32000,
)
# gpt-image-1-mini edits, but without input_fidelity.
GPT_IMAGE_MINI = ImageCapabilities(**{**GPT_IMAGE.__dict__, "input_fidelity": False})
# gpt-image-2: any WxH, multiples of 16, up to 3840 px on a side and 3840x2160 in all.
GPT_IMAGE_2 = ImageCapabilities(
    **{
        **GPT_IMAGE.__dict__,
        "sizes": None,
        "min_side": 256,
        "max_side": 3840,
        "size_multiple": 16,
        "max_pixels": 3840 * 2160,
    }
)
DALL_E_3 = ImageCapabilities(
    sizes=("1024x1024", "1792x1024", "1024x1792"),
    auto_size=False,
    max_n=1,
    qualities=("standard", "hd"),
    styles=("vivid", "natural"),
    native_response_formats=("url", "b64_json"),
    max_prompt_chars=4000,
)
DALL_E_2 = ImageCapabilities(
    sizes=("256x256", "512x512", "1024x1024"),
    auto_size=False,
    max_n=10,
    qualities=("standard",),
    native_response_formats=("url", "b64_json"),
    edits=True,
    max_edit_images=1,
    max_prompt_chars=1000,
)
# A model this table does not know yet: validate little, forward everything.
UNKNOWN_MODEL = ImageCapabilities(
    sizes=None,
    min_side=1,
    max_side=8192,
    qualities=None,
    styles=None,
    native_output_formats=OUTPUT_FORMATS,
    transparent_background=True,
    edits=True,
    input_fidelity=True,
)


def model_capabilities(model: str) -> ImageCapabilities:
    if model.startswith("gpt-image-2"):
        return GPT_IMAGE_2
    if model.startswith("gpt-image-1-mini"):
        return GPT_IMAGE_MINI
    if model.startswith(("gpt-image-", "chatgpt-image")):
        return GPT_IMAGE
    if model.startswith("dall-e-3"):
        return DALL_E_3
    if model.startswith("dall-e-2"):
        return DALL_E_2
    return UNKNOWN_MODEL


def is_gpt_image(caps: ImageCapabilities) -> bool:
    return caps.native_response_formats == ("b64_json",)


class OpenAIProvider(ProviderAdapter):
    name = "openai"
    auth = ProviderAuth("Authorization", BEARER, "https://api.openai.com")
    check_path = "/v1/models"
    moderation_codes = OPENAI_MODERATION_CODES
    error_shape = OPENAI_ERRORS
    image_routes = (
        ImageRoutePattern(re.compile(r"/v1/images/(?:generations|edits|variations)"), "openai"),
    )

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return model_capabilities(upstream_model)

    # --- the native call ------------------------------------------------------------------
    def url(self, target: Target) -> str:
        return f"{target.base_url}/v1/images/generations"

    def headers(self, target: Target) -> dict[str, str]:
        return {**target.extra_headers, **credential_headers(self.name, target.secret)}

    def params(self, target: Target) -> dict[str, str] | None:
        return None

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        caps = self.capabilities(target.upstream_model)
        body: dict[str, Any] = {
            **request.extras,
            **request.options_for(self.name),
            "model": target.upstream_model,
            "prompt": request.prompt,
            "n": request.n,
        }
        if request.size != "auto":
            body["size"] = request.size
        elif caps.auto_size:
            body["size"] = "auto"
        optional: dict[str, Any] = {
            "quality": request.quality,
            "style": request.style if caps.styles != () else None,
            "user": request.user,
            "moderation": request.moderation if caps.moderation else None,
            "background": request.background if caps.transparent_background else None,
        }
        if len(caps.native_output_formats) > 1:  # the upstream encodes formats itself
            optional["output_format"] = request.output_format
            optional["output_compression"] = request.output_compression
        if not is_gpt_image(caps):
            # DALL·E: bytes whenever the gateway must convert or inline them itself.
            optional["response_format"] = self.upstream_response_format(request)
        body.update({k: v for k, v in optional.items() if v is not None})
        return {k: v for k, v in body.items() if v is not None}

    @staticmethod
    def upstream_response_format(request: ImageRequest) -> str:
        passthrough_url = request.response_format == "url" and request.output_format in (
            None,
            "png",
        )
        return "url" if passthrough_url else "b64_json"

    def edit_url(self, target: Target) -> str:
        return f"{target.base_url}/v1/images/edits"

    def edit_fields(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        fields = self.body(request, target)
        for name in ("moderation", "style"):  # not taken by edits
            fields.pop(name, None)
        if request.input_fidelity:
            fields["input_fidelity"] = request.input_fidelity
        return fields

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        """docs/providers.md §1.4: the form rebuilt with the upstream's model; files streamed."""
        response = self._send_edit(request, target, self.edit_fields(request, target))
        http.check_status(self.name, response)
        return self.parse(http.json_object(self.name, response), request)

    def stream(self, request: ImageRequest, target: Target) -> EventSource:
        """The upstream's events, relayed as they come: already OpenAI's (docs/providers.md
        §1.7)."""
        options = {"stream": True, "partial_images": request.partial_images}
        if request.is_edit:
            fields = {**self.edit_fields(request, target), **options}
            response = self._send_edit(request, target, fields, stream=True)
        else:
            response = http.send(
                self.name,
                "POST",
                self.url(target),
                timeout=target.timeout_seconds,
                connect_timeout=target.connect_timeout_seconds,
                guarded=target.guarded,
                headers=self.headers(target),
                params=self.params(target),
                json_body={**self.body(request, target), **options},
                stream=True,
            )
        try:
            http.check_status(self.name, response)
        except ProviderError:
            response.close()
            raise
        return EventSource(chunks=http.read_chunks(response), close=response.close)

    def _send_edit(
        self,
        request: ImageRequest,
        target: Target,
        fields: dict[str, Any],
        stream: bool = False,
    ) -> requests.Response:
        parts: list[tuple[str, Any]] = [
            (name, _form_value(value)) for name, value in fields.items()
        ]
        file_field = "image" if len(request.images) == 1 else "image[]"
        with ExitStack() as stack:
            for image in request.images:
                handle = stack.enter_context(image.open())
                parts.append((file_field, (image.filename, handle, image.media_type)))
            if request.mask is not None:
                mask = request.mask
                handle = stack.enter_context(mask.open())
                parts.append(("mask", (mask.filename, handle, mask.media_type)))
            form = MultipartEncoder(fields=parts)
            return http.send(
                self.name,
                "POST",
                self.edit_url(target),
                timeout=target.timeout_seconds,
                connect_timeout=target.connect_timeout_seconds,
                guarded=target.guarded,
                headers={**self.headers(target), "Content-Type": form.content_type},
                params=self.params(target),
                data=form,
                stream=stream,
            )

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        response = http.send(
            self.name,
            "POST",
            self.url(target),
            timeout=target.timeout_seconds,
            connect_timeout=target.connect_timeout_seconds,
            guarded=target.guarded,
            headers=self.headers(target),
            params=self.params(target),
            json_body=self.body(request, target),
        )
        http.check_status(self.name, response)
        return self.parse(http.json_object(self.name, response), request)

    def parse(self, body: dict[str, Any], request: ImageRequest) -> ImageResult:
        items = body.get("data")
        if not isinstance(items, list) or not items:
            raise UpstreamFailed(self.name, f"{self.name} returned no images.")
        output_format = body.get("output_format") or request.output_format or "png"
        media_type = f"image/{output_format}"
        images = []
        for item in items:
            if not isinstance(item, dict):
                raise UpstreamFailed(self.name, f"{self.name} returned an unexpected image entry.")
            revised = item.get("revised_prompt")
            if item.get("b64_json"):
                encoded = item["b64_json"]
                if not isinstance(encoded, str) or not is_base64(encoded):
                    raise UpstreamFailed(self.name, f"{self.name} returned invalid base64.")
                images.append(
                    GeneratedImage(b64=encoded, media_type=media_type, revised_prompt=revised)
                )
            elif item.get("url"):
                images.append(GeneratedImage(url=str(item["url"]), revised_prompt=revised))
            else:
                raise UpstreamFailed(self.name, f"{self.name} returned an image without data.")
        metadata = {
            key: body[key]
            for key in ("size", "quality", "background", "output_format")
            if isinstance(body.get(key), str)
        }
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        return ImageResult(images=images, usage=usage, metadata=metadata)


def _form_value(value: Any) -> str:
    """A JSON field as a multipart text field: true/false, numbers, objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)
