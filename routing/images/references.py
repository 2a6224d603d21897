"""`input_references`: reference images for image-to-image, as data URLs or http(s) URLs (and
the images of a JSON edit, loaded the same way).

URLs are fetched by the guarded fetcher (time limit, size cap, never a private, loopback or
link-local address unless an operator allowlists it), must answer an image content type,
and must decode like any uploaded image. A reference the gateway cannot use is the caller's
400, before anything is reserved or sent upstream.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from aperture.errors import InvalidRequest
from routing.images import inputs
from routing.providers.base import InputImage, UpstreamFailed, UpstreamTimedOut
from routing.providers.fetch import FetchRefused, fetch_image

MAX_REFERENCES = 16
FIELD = "input_references"


def parse_references(body: dict[str, Any]) -> tuple[str, ...]:
    """The field's shape only; nothing is fetched here."""
    value = body.get(FIELD)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"'{FIELD}' must be a list of data URLs or http(s) URLs.", param=FIELD)
    if len(value) > MAX_REFERENCES:
        raise InvalidRequest(
            f"At most {MAX_REFERENCES} reference images; got {len(value)}.", param=FIELD
        )
    for index, item in enumerate(value):
        if not item.startswith(("data:", "http://", "https://")):
            raise InvalidRequest(
                f"'{FIELD}[{index}]' must be a base64 data URL or an http(s) URL.",
                param=f"{FIELD}[{index}]",
            )
    return tuple(value)


def download(url: str, param: str) -> bytes:
    """The image at an http(s) URL a caller gave, through the guarded fetcher; a URL the
    gateway will not or cannot fetch is the caller's 400 naming `param`."""
    try:
        data, content_type = fetch_image("reference", url)
    except FetchRefused:
        raise InvalidRequest(
            f"'{param}' is not fetched: its host is a private, loopback or link-local address "
            "(or does not resolve).",
            param=param,
        ) from None
    except UpstreamTimedOut:
        raise InvalidRequest(
            f"'{param}' could not be downloaded within {settings.FETCH_TIMEOUT_SECONDS:g} s.",
            param=param,
        ) from None
    except UpstreamFailed as error:
        raise InvalidRequest(
            f"'{param}' could not be downloaded: {error.message}", param=param
        ) from None
    media_type = (content_type or "").split(";")[0].strip().lower()
    if not media_type.startswith("image/"):
        raise InvalidRequest(
            f"'{param}' answered {media_type or 'no content type'}, not an image.", param=param
        )
    return data


def load_image(reference: str, param: str, *, filename: str) -> InputImage:
    """A data URL decoded, or an http(s) URL fetched, then checked like an upload."""
    if reference.startswith("data:"):
        data = inputs.decode_data_url(reference, param)
    elif reference.startswith(("http://", "https://")):
        data = download(reference, param)
    else:
        raise InvalidRequest(f"'{param}' must be a base64 data URL or an http(s) URL.", param=param)
    return inputs.from_bytes(data, param, filename=filename)


def load_references(references: tuple[str, ...]) -> tuple[InputImage, ...]:
    """Each reference decoded and checked, in order."""
    return tuple(
        load_image(reference, f"{FIELD}[{index}]", filename=f"reference-{index}")
        for index, reference in enumerate(references)
    )
