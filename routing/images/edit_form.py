"""POST /v1/images/edits arrives as multipart/form-data, as OpenAI's API takes it.

Text fields arrive as strings (`n=2`, `stream=true`); they are typed here so that the edit
is validated by the same rules as a generation. Images come as `image` (one) or `image[]`
(up to 16), with an optional `mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from aperture.db import release_connection
from aperture.errors import InvalidRequest
from routing.images import inputs
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
            "'image[]' (the openai SDK's images.edit sends that), not "
            f"{content_type or 'an empty content type'}.",
            code="invalid_content_type",
        )
    release_connection()  # the body may dribble in, for as long as its deadline allows
    try:
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
