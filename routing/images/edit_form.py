"""POST /v1/images/edits arrives as multipart/form-data, as OpenAI's API takes it, or as JSON.

Multipart text fields arrive as strings (`n=2`, `stream=true`); they are typed here so that
the edit is validated by the same rules as a generation. Images come as `image` (one) or
`image[]` (up to 16), with an optional `mask`. The JSON shape (docs/providers.md, updates of
2026-12-02) names them `images: [{"image_url": …}]` and `mask: {"image_url": …}`: a data URL
is decoded, an http(s) URL fetched through the private-address guard, and either is checked
exactly like an upload. Both end as the same `EditForm`, so the rest of the path is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from aperture.db import waiting_on_network
from aperture.errors import InvalidRequest, Unsupported
from aperture.json_body import read_json_object
from routing.images import inputs, references
from routing.providers.base import InputImage

MAX_IMAGES = 16
_INTEGERS = frozenset({"n", "output_compression", "partial_images", "seed"})
_BOOLEANS = frozenset({"stream", "allow_partial"})
_JSON_OBJECTS = frozenset({"provider"})


@dataclass(frozen=True)
class EditForm:
    fields: dict[str, Any]
    images: tuple[InputImage, ...]
    mask: InputImage | None


def _typed(name: str, value: str) -> Any:
    if name in _INTEGERS:
        try:
            return int(value)
        except ValueError:
            raise InvalidRequest(f"'{name}' must be an integer.", param=name) from None
    if name in _BOOLEANS:
        if value.lower() not in ("true", "false"):
            raise InvalidRequest(f"'{name}' must be true or false.", param=name)
        return value.lower() == "true"
    if name in _JSON_OBJECTS:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"'{name}' must be a JSON object.", param=name) from None
    return value


def read_edit_form(request: HttpRequest) -> EditForm:
    """The edit's fields and checked images, or a 4xx naming what is wrong."""
    content_type = (request.content_type or "").lower()
    if content_type != "multipart/form-data":
        raise InvalidRequest(
            "Image edits take multipart/form-data with the image file(s) as 'image' or "
            "'image[]' (the openai SDK's images.edit sends that), or application/json with "
            '\'images\': [{"image_url": "https://… or data:…"}], not '
            f"{content_type or 'an empty content type'}.",
            code="invalid_content_type",
        )
    try:
        with waiting_on_network():  # the body may dribble in, as long as its deadline allows
            form, files = request.POST, request.FILES  # RequestTimeout (408) past the deadline
    except MultiPartParserError as exc:
        raise InvalidRequest(f"Could not parse the multipart body: {exc}.") from None
    except (TooManyFieldsSent, TooManyFilesSent) as exc:
        raise InvalidRequest(f"The multipart body has too many parts: {exc}.") from None
    uploads = files.getlist("image") + files.getlist("image[]")
    if not uploads:
        raise InvalidRequest(
            "'image' is required: send the image to edit as a file part.", param="image"
        )
    if len(uploads) > MAX_IMAGES:
        raise InvalidRequest(
            f"At most {MAX_IMAGES} images per edit; got {len(uploads)}.", param="image"
        )
    images = tuple(inputs.from_upload(upload, "image") for upload in uploads)
    masks = files.getlist("mask")
    if len(masks) > 1:
        raise InvalidRequest("Send at most one 'mask'.", param="mask")
    mask = inputs.from_upload(masks[0], "mask") if masks else None
    if mask is not None:
        inputs.check_mask(mask, images[0])
    fields = {name: _typed(name, form[name]) for name in form}
    return EditForm(fields=fields, images=images, mask=mask)


def is_multipart(request: HttpRequest) -> bool:
    return (request.content_type or "").lower().startswith("multipart/")


# Fields of the multipart shape that mean nothing in JSON: there the images are `images`.
_MULTIPART_ONLY = ("image", "image[]")


def read_json_edit(request: HttpRequest) -> EditForm:
    """The JSON edit's fields and checked images, or a 4xx naming what is wrong. Nothing is
    fetched before the whole body is read and its shape is right."""
    body = read_json_object(request)  # hands the database connection back first
    for name in _MULTIPART_ONLY:
        if name in body:
            raise InvalidRequest(
                f"In a JSON edit the images go in 'images' as [{{\"image_url\": …}}], not "
                f"'{name}'.",
                param=name,
            )
    listed = body.pop("images", None)
    if not isinstance(listed, list) or not listed:
        raise InvalidRequest(
            '\'images\' is required: a list of 1 to 16 objects, each {"image_url": "https://…" '
            'or "data:image/png;base64,…"}.',
            param="images",
        )
    if len(listed) > MAX_IMAGES:
        raise InvalidRequest(
            f"At most {MAX_IMAGES} images per edit; got {len(listed)}.", param="images"
        )
    sources = [_image_url(item, f"images[{index}]") for index, item in enumerate(listed)]
    mask_item = body.pop("mask", None)
    mask_source = _image_url(mask_item, "mask") if mask_item is not None else None
    with waiting_on_network():  # the caller's URLs may answer slowly
        images = tuple(
            references.load_image(url, f"images[{index}].image_url", filename=f"image-{index}")
            for index, url in enumerate(sources)
        )
        mask = None
        if mask_source is not None:
            mask = references.load_image(mask_source, "mask.image_url", filename="mask")
    if mask is not None:
        inputs.check_mask(mask, images[0])
    return EditForm(fields=body, images=images, mask=mask)


def _image_url(item: Any, param: str) -> str:
    """The `image_url` of one `{image_url}` / `{file_id}` object. A file id names a file in one
    upstream account's Files API: the gateway cannot carry it to whichever deployment serves
    the call, so it is refused."""
    if not isinstance(item, dict) or len(item) != 1 or not {"image_url", "file_id"} & set(item):
        raise InvalidRequest(
            f"'{param}' must be an object with exactly one of 'image_url' or 'file_id'.",
            param=param,
        )
    if "file_id" in item:
        raise Unsupported(
            f"'{param}.file_id' is not supported through the gateway (a file id belongs to one "
            "upstream account); send 'image_url' with an https URL or a data URL.",
            param=f"{param}.file_id",
        )
    url = item["image_url"]
    if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
        raise InvalidRequest(
            f"'{param}.image_url' must be a base64 data URL or an http(s) URL, as a string.",
            param=f"{param}.image_url",
        )
    return url
