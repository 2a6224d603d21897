"""Images a caller sends in: edit uploads, masks and reference images, checked before use.

An input image is read from wherever it already is (an upload spooled to disk stays on
disk) and can be opened any number of times, so it streams to an upstream without another
copy in memory. Each is checked to be a PNG, JPEG or WebP under the size cap and, from its
header before any decoding, the pixel cap (APERTURE_MAX_INPUT_PIXELS); then that it decodes,
in a turn of the process's image jobs (aperture/offload.py). A mask must be a PNG of the
first image's size.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import BinaryIO

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, UnidentifiedImageError

from aperture.errors import InvalidRequest, PayloadTooLarge
from aperture.offload import run_blocking
from routing.providers.base import InputImage

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+)?(;[a-z0-9=.-]+)*;base64,", re.IGNORECASE)


def _inspect(handle: BinaryIO, param: str) -> tuple[str, int, int]:
    """(format, width, height): the size from the header, checked against the pixel cap, then
    the whole image decoded (in a turn of the image jobs) to catch a truncated file."""
    image_format, width, height = _read_header(handle, param)
    handle.seek(0)
    run_blocking(partial(_decode, handle, param))
    return image_format, width, height


def _read_header(handle: BinaryIO, param: str) -> tuple[str, int, int]:
    """Format and size as the header says, no pixel decoded; 400 above the pixel cap."""
    with _opened(handle, param) as image:
        image_format = image.format or ""
        width, height = image.size
    if image_format not in FORMATS:
        raise InvalidRequest(
            f"'{param}' must be a PNG, JPEG or WebP image, not {image_format}.", param=param
        )
    cap = settings.MAX_INPUT_PIXELS
    if width * height > cap:
        raise InvalidRequest(
            f"'{param}' is {width}x{height} ({width * height:,} pixels); input images may have "
            f"at most {cap:,} pixels (APERTURE_MAX_INPUT_PIXELS).",
            param=param,
            code="image_too_large",
        )
    return image_format, width, height


def _decode(handle: BinaryIO, param: str) -> None:
    """Decode every pixel: a truncated or corrupt file fails here, not upstream."""
    with _opened(handle, param) as image:
        image.load()


@contextmanager
def _opened(handle: BinaryIO, param: str) -> Iterator[Image.Image]:
    """The image opened with the decompression-bomb guard as an error; whatever Pillow
    cannot read, while opening or within the block, is a 400 naming `param`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"'{param}' has too many pixels to be decoded safely.", param=param
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidRequest(
            f"'{param}' is not a decodable PNG, JPEG or WebP image.", param=param
        ) from None


def _check_size(size: int, param: str) -> None:
    limit = settings.EDIT_MAX_IMAGE_BYTES
    if size > limit:
        raise PayloadTooLarge(
            f"'{param}' is {size} bytes; each image may be at most {limit} bytes.", param=param
        )


def from_upload(upload: UploadedFile[bytes], param: str) -> InputImage:
    size = int(upload.size or 0)
    _check_size(size, param)
    path = getattr(upload, "temporary_file_path", None)
    if path is not None:  # spooled to disk by Django: stays there
        with open(path(), "rb") as handle:
            image_format, width, height = _inspect(handle, param)
        return InputImage(
            filename=upload.name or "image",
            media_type=FORMATS[image_format],
            width=width,
            height=height,
            size_bytes=size,
            path=path(),
        )
    upload.seek(0)
    return from_bytes(upload.read(), param, filename=upload.name or "image")


def from_bytes(data: bytes, param: str, *, filename: str = "image") -> InputImage:
    _check_size(len(data), param)
    image_format, width, height = _inspect(io.BytesIO(data), param)
    extension = image_format.lower().replace("jpeg", "jpg")
    if "." not in filename:
        filename = f"{filename}.{extension}"
    return InputImage(
        filename=filename,
        media_type=FORMATS[image_format],
        width=width,
        height=height,
        size_bytes=len(data),
        data=data,
    )


def decode_data_url(value: str, param: str) -> bytes:
    match = _DATA_URL.match(value)
    if not match:
        raise InvalidRequest(f"'{param}' is not a base64 data URL.", param=param)
    payload = value[match.end() :]
    _check_size(len(payload) * 3 // 4 - payload[-2:].count("="), param)  # before decoding
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' is not valid base64.", param=param) from None


def check_mask(mask: InputImage, first: InputImage) -> None:
    if mask.media_type != "image/png":
        raise InvalidRequest(
            "'mask' must be a PNG (its transparent pixels mark the edit).", param="mask"
        )
    if (mask.width, mask.height) != (first.width, first.height):
        raise InvalidRequest(
            f"'mask' is {mask.width}x{mask.height} but the image is "
            f"{first.width}x{first.height}; they must be the same size.",
            param="mask",
        )
