"""OpenAI Images API (gpt-image-2.x, gpt-image-1.5, -1-mini; the retired gpt-image-1, dall-e-3
and dall-e-2). docs/providers.md §1 and its updates of 2026-12-02.

Only `model` is rewritten to the upstream id; every field the model supports is forwarded,
and unknown extra fields pass through unchanged so new upstream options keep working. Edits
go as multipart, or as JSON when they carry `moderation` (only the JSON shape takes it).
A retired model is still served where the operator's upstream still answers for it (an
Azure deployment, a relay); where it answers 404, the failure says the model was retired.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, ClassVar

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
    InputImage,
    ProviderAdapter,
    ProviderError,
    Target,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamRetired,
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
GPT_IMAGE_MINI = replace(GPT_IMAGE, input_fidelity=False)
# gpt-image-2 and its snapshot: any WxH with both sides multiples of 16, no longer than 3:1
# either way, 655,360 to 8,294,400 pixels (3840x2160 at most); `input_fidelity` is not
# taken. A transparent background is a preview that relays refuse: off unless the operator
# turns it on for the deployment (`transparent_background: true` in its options).
GPT_IMAGE_2 = replace(
    GPT_IMAGE,
    sizes=None,
    min_side=256,
    max_side=3840,
    size_multiple=16,
    min_pixels=655_360,
    max_pixels=3840 * 2160,
    max_aspect=3.0,
    input_fidelity=False,
    transparent_background=False,
)
# gpt-image-2.5 and 2.6 (sunburst, flare and their snapshots): the same sizes, transparent
# backgrounds supported, and two more qualities.
GPT_IMAGE_25 = replace(
    GPT_IMAGE_2,
    transparent_background=True,
    qualities=("low", "medium", "high", "xhigh", "max", "auto"),
)
# Retired by OpenAI (docs/providers.md, updates of 2026-12-02); still described, so that an
# upstream that serves them yet (an Azure deployment, a relay) keeps working.
GPT_IMAGE_1 = replace(GPT_IMAGE, retired="2026-10-23", successor="gpt-image-2.5-flare")
DALL_E_3 = ImageCapabilities(
    sizes=("1024x1024", "1792x1024", "1024x1792"),
    auto_size=False,
    max_n=1,
    qualities=("standard", "hd"),
    styles=("vivid", "natural"),
    native_response_formats=("url", "b64_json"),
    max_prompt_chars=4000,
    retired="2026-05-12",
    successor="gpt-image-2.5-flare",
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
    retired="2026-05-12",
    successor="gpt-image-2.5-flare",
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
_GPT_IMAGE_1 = re.compile(r"gpt-image-1(?:-\d{4}-\d{2}-\d{2})?")


def model_capabilities(model: str, options: Mapping[str, Any] | None = None) -> ImageCapabilities:
    """The model's capabilities; a deployment's `transparent_background` option (true or
    false) overrides the table's, for previews an account has or a relay refuses."""
    caps = _table_capabilities(model)
    transparent = (options or {}).get("transparent_background")
    if isinstance(transparent, bool) and caps.native_response_formats == ("b64_json",):
        caps = replace(caps, transparent_background=transparent)
    return caps


def _table_capabilities(model: str) -> ImageCapabilities:
    if model.startswith(("gpt-image-2.5", "gpt-image-2.6")):
        return GPT_IMAGE_25
    if model.startswith("gpt-image-2"):
        return GPT_IMAGE_2
    if model.startswith("gpt-image-1-mini"):
        return GPT_IMAGE_MINI
    if _GPT_IMAGE_1.fullmatch(model):
        return GPT_IMAGE_1
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

    # Whether the upstream takes an edit as JSON (`images: [{image_url}]`, docs/providers.md
    # updates of 2026-12-02), as it must to carry `moderation`, which its multipart form lacks.
    json_edits: ClassVar[bool] = True

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return model_capabilities(upstream_model, options)

    # --- the native call ------------------------------------------------------------------
    def url(self, target: Target) -> str:
        return f"{target.base_url}/v1/images/generations"

    def headers(self, target: Target) -> dict[str, str]:
        return {**target.extra_headers, **credential_headers(self.name, target.secret)}

    def params(self, target: Target) -> dict[str, str] | None:
        return None

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        caps = self.capabilities(target.upstream_model, target.options)
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
            "background": request.background if is_gpt_image(caps) else None,
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
        fields.pop("style", None)  # not taken by edits
        if not self.as_json(request):
            fields.pop("moderation", None)  # the multipart form has no such field
        if request.input_fidelity:
            fields["input_fidelity"] = request.input_fidelity
        return fields

    def as_json(self, request: ImageRequest) -> bool:
        """An edit goes as JSON only when it must: with `moderation`, which multipart cannot
        carry. Multipart is what every OpenAI-compatible upstream takes, and it streams the
        files as they are, a third smaller than base64."""
        return self.json_edits and request.moderation is not None

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        """docs/providers.md §1.4: the form rebuilt with the upstream's model; files streamed.
        Or the JSON shape, with the images as data URLs."""
        response = self._send_edit(request, target, self.edit_fields(request, target))
        self.check_status(response, target)
        return self.parse(http.json_object(self.name, response), request)

    def check_status(self, response: requests.Response, target: Target) -> None:
        """The mapped error; a model OpenAI retired that the upstream no longer knows is the
        deployment's failure (the next one is tried), named as such."""
        try:
            http.check_status(self.name, response)
        except UpstreamRejected as error:
            caps = self.capabilities(target.upstream_model)
            if error.status != 404 or caps.retired is None:
                raise
            raise UpstreamRetired(
                self.name,
                f"{self.name} no longer serves '{target.upstream_model}': OpenAI retired it on "
                f"{caps.retired} (use {caps.successor} or another current model). "
                f"Upstream said: {error.message}",
            ) from error

    def stream(self, request: ImageRequest, target: Target) -> EventSource:
        """The upstream's events, relayed as they come: already OpenAI's (docs/providers.md
        §1.7)."""
        options = {"stream": True, "partial_images": request.partial_images}
        if request.is_edit:
            fields = {**self.edit_fields(request, target), **options}
            response = self._send_edit(request, target, fields, stream=True)
        else:
            body = {**self.body(request, target), **options}
            response = self._post(target, self.url(target), json_body=body, stream=True)
        try:
            self.check_status(response, target)
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
        if self.as_json(request):
            body = self.json_edit_body(request, fields)
            return self._post(target, self.edit_url(target), json_body=body, stream=stream)
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
            return self._post(
                target,
                self.edit_url(target),
                content_type=form.content_type,
                data=form,
                stream=stream,
            )

    @staticmethod
    def json_edit_body(request: ImageRequest, fields: dict[str, Any]) -> dict[str, Any]:
        """The JSON edit: the fields, each image (and the mask) as `{"image_url": data URL}`."""
        body = {**fields, "images": [{"image_url": _data_url(i)} for i in request.images]}
        if request.mask is not None:
            body["mask"] = {"image_url": _data_url(request.mask)}
        return body

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        response = self._post(target, self.url(target), json_body=self.body(request, target))
        self.check_status(response, target)
        return self.parse(http.json_object(self.name, response), request)

    def _post(
        self, target: Target, url: str, *, content_type: str | None = None, **body: Any
    ) -> requests.Response:
        """One POST to `url` as the target's credential (`body`: json_body or data, stream)."""
        headers = self.headers(target)
        if content_type is not None:
            headers = {**headers, "Content-Type": content_type}
        return http.send(
            self.name,
            "POST",
            url,
            timeout=target.timeout_seconds,
            connect_timeout=target.connect_timeout_seconds,
            guarded=target.guarded,
            headers=headers,
            params=self.params(target),
            **body,
        )

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


def _data_url(image: InputImage) -> str:
    return f"data:{image.media_type};base64,{base64.b64encode(image.read()).decode()}"


def _form_value(value: Any) -> str:
    """A JSON field as a multipart text field: true/false, numbers, objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)
