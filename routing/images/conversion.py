"""Re-encode images with Pillow when the upstream could not produce the requested format."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from routing.providers.base import UpstreamFailed
from routing.providers.local import MEDIA_TYPES, encode


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def convert(provider: str, data: bytes, output_format: str, compression: int | None) -> bytes:
    """`data` re-encoded as `output_format` (decompression-bomb guard on, as always)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            image.load()
            converted = image.convert("RGBA") if image.mode not in ("RGB", "RGBA") else image
            return encode(converted, output_format, compression)
    except (
        OSError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        ValueError,
    ) as exc:
        raise UpstreamFailed(
            provider, f"{provider} returned an image that cannot be decoded."
        ) from exc


__all__ = ["MEDIA_TYPES", "convert", "sniff_format"]
