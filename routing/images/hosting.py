"""Images the gateway hosts itself: stored in Django storage, served through signed URLs.

A URL carries the file's storage name and its expiry, signed with SECRET_KEY; a tampered or
expired URL is a 404. Filesystem storage by default; any Django storage backend (e.g. S3 via
django-storages) works through STORAGES["default"].
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from aperture.errors import NotFound

_SALT = "aperture.hosted-image"
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
MEDIA_TYPES = {extension: media_type for media_type, extension in EXTENSIONS.items()}


def now() -> float:
    """The clock for URL expiry (tests move it forward instead of sleeping)."""
    return time.time()


def store(data: bytes, media_type: str) -> str:
    """Save the image; returns its storage name."""
    extension = EXTENSIONS.get(media_type, "bin")
    day = time.strftime("%Y/%m/%d", time.gmtime(now()))
    return default_storage.save(f"images/{day}/{uuid.uuid4().hex}.{extension}", ContentFile(data))


def sign(name: str) -> str:
    expires = int(now()) + settings.IMAGE_URL_TTL_SECONDS
    return signing.dumps({"n": name, "e": expires}, salt=_SALT)


@dataclass(frozen=True)
class HostedImage:
    name: str
    media_type: str


def resolve(token: str) -> HostedImage:
    """The image a token grants, or NotFound if it is tampered, expired or gone."""
    try:
        payload = signing.loads(token, salt=_SALT)
    except signing.BadSignature:
        raise NotFound("This image link is invalid.") from None
    if not isinstance(payload, dict) or payload.get("e", 0) < now():
        raise NotFound("This image link has expired.")
    name = str(payload.get("n", ""))
    if not default_storage.exists(name):
        raise NotFound("This image is no longer available.")
    media_type = MEDIA_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
    return HostedImage(name=name, media_type=media_type)
