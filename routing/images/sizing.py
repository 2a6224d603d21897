"""One size from the caller's size options: OpenAI pixels, tiers, or resolution + aspect ratio.

Callers may say `size: "1024x1536"` (exact pixels), `size: "2K"` (a tier: 512, 1K, 2K or
4K), or `resolution: "2K"` with `aspect_ratio: "3:2"`. The model's capability table then
decides the concrete size: the listed size nearest in shape, then in area, or, for models
that take any size, the ideal one rounded to the model's multiple and clamped to its bounds
(and its shape to the model's widest). Options that say different things (1024x1024 with
16:9, a 2K size with resolution 1K) are a 400.
"""

from __future__ import annotations

import math

from aperture.errors import InvalidRequest
from routing.providers.capabilities import ASPECT_RATIOS, TIERS, ImageCapabilities, tier_of

# Two shapes whose ratios differ by less than this agree (1792x1024 is 16:9).
_RATIO_TOLERANCE = 0.03


def ratio_of(aspect_ratio: str) -> float:
    width, _, height = aspect_ratio.partition(":")
    return int(width) / int(height)


def _same_shape(width: int, height: int, ratio: float) -> bool:
    return abs(math.log(width / height) - math.log(ratio)) < _RATIO_TOLERANCE


def nearest_size(caps: ImageCapabilities, tier: str, ratio: float) -> str:
    """The concrete size the model accepts closest to `tier` at `ratio`."""
    side = TIERS[tier]
    if caps.sizes is not None:
        target_area = math.log(side * side)

        def distance(size: str) -> tuple[float, float]:
            width, _, height = size.partition("x")
            w, h = int(width), int(height)
            shape = round(abs(math.log(w / h) - math.log(ratio)), 3)
            return shape, abs(math.log(w * h) - target_area)

        return min(caps.sizes, key=distance)
    if caps.max_aspect:  # a shape beyond the model's limits: the nearest it can make
        ratio = min(max(ratio, 1 / caps.max_aspect), caps.max_aspect)
    width, height = side * math.sqrt(ratio), side / math.sqrt(ratio)
    scale = min(1.0, caps.max_side / max(width, height))
    if caps.max_pixels:
        scale = min(scale, math.sqrt(caps.max_pixels / (width * height)))
    scale = max(scale, caps.min_side / min(width, height))
    if caps.min_pixels:
        scale = max(scale, math.sqrt(caps.min_pixels / (width * height)))
    step = max(caps.size_multiple, 1)

    def fit(value: float) -> int:
        rounded = max(step, round(value * scale / step) * step)
        lowest = math.ceil(caps.min_side / step) * step
        highest = caps.max_side // step * step
        return min(max(rounded, lowest), highest)

    w, h = fit(width), fit(height)
    while caps.max_pixels and w * h > caps.max_pixels:  # rounding up may overshoot the cap
        if w >= h:
            w -= step
        else:
            h -= step
    while caps.min_pixels and w * h < caps.min_pixels and max(w, h) + step <= caps.max_side:
        if w <= h:
            w += step
        else:
            h += step
    return f"{w}x{h}"


def _parse_pixels(size: str) -> tuple[int, int] | None:
    width, sep, height = size.partition("x")
    if sep and width.isdigit() and height.isdigit() and len(width) <= 5 and len(height) <= 5:
        return int(width), int(height)
    return None


def resolve_size(
    caps: ImageCapabilities,
    *,
    size: str | None,
    resolution: str | None,
    aspect_ratio: str | None,
    model: str,
) -> str:
    """ "WxH" or "auto" for this model, or InvalidRequest naming the conflicting option."""
    if resolution is not None and resolution not in TIERS:
        raise InvalidRequest(
            f"Invalid 'resolution' {resolution!r}; supported: {', '.join(TIERS)}.",
            param="resolution",
        )
    if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(
            f"Invalid 'aspect_ratio' {aspect_ratio!r}; supported: {', '.join(ASPECT_RATIOS)}.",
            param="aspect_ratio",
        )
    if size in (None, "auto") and resolution is None and aspect_ratio is None:
        return check_pixels(caps, size, model)
    ratio = ratio_of(aspect_ratio or "1:1")
    if size in TIERS:
        if resolution is not None and resolution != size:
            raise InvalidRequest(
                f"'size' {size} and 'resolution' {resolution} disagree; send one of them.",
                param="resolution",
            )
        return nearest_size(caps, size, ratio)
    pixels = _parse_pixels(size) if size not in (None, "auto") else None
    if size not in (None, "auto") and pixels is None:
        check_pixels(caps, size, model)  # raises with the usual message
    if pixels is not None:
        width, height = pixels
        if aspect_ratio is not None and not _same_shape(width, height, ratio):
            raise InvalidRequest(
                f"'size' {size} is not {aspect_ratio}; send 'size' or 'aspect_ratio', or ones "
                "that agree.",
                param="aspect_ratio",
            )
        if resolution is not None and tier_of(width, height) != resolution:
            raise InvalidRequest(
                f"'size' {size} is not a {resolution} size; send 'size' or 'resolution', or "
                "ones that agree.",
                param="resolution",
            )
        return check_pixels(caps, size, model)
    return nearest_size(caps, resolution or "1K", ratio)


def check_pixels(caps: ImageCapabilities, size: str | None, model: str) -> str:
    """An explicit size the model must accept as it is, or "auto"."""
    if size is None:
        return "auto"
    if size == "auto":
        if not caps.auto_size:
            raise InvalidRequest(
                f"The model '{model}' needs an explicit size; supported: "
                f"{', '.join(caps.sizes or ())}.",
                param="size",
            )
        return size
    pixels = _parse_pixels(size)
    if pixels is None:
        raise InvalidRequest(
            f"Invalid 'size' {size!r}: use WIDTHxHEIGHT in pixels (e.g. 1024x1024), a tier "
            f"({', '.join(TIERS)}) or 'auto'.",
            param="size",
        )
    width, height = pixels
    if not caps.accepts_size(width, height):
        if caps.sizes is not None:
            allowed = ", ".join(caps.sizes + (("auto",) if caps.auto_size else ()))
            detail = f"supported: {allowed}"
        else:
            detail = f"each side must be {caps.min_side}-{caps.max_side} px"
            if caps.size_multiple > 1:
                detail += f" and a multiple of {caps.size_multiple}"
            if caps.max_pixels:
                detail += f", at most {caps.max_pixels} pixels"
            if caps.min_pixels:
                detail += f", at least {caps.min_pixels} pixels"
            if caps.max_aspect:
                detail += f", and no longer than {caps.max_aspect:g}:1 either way"
        raise InvalidRequest(
            f"Invalid 'size' {size!r} for the model '{model}'; {detail}.", param="size"
        )
    return f"{width}x{height}"


def largest_size(caps: ImageCapabilities) -> str:
    """The largest image a model makes, as "WxH": what an open size is priced at (the
    budget hold of a request that leaves its size to the model)."""
    if caps.sizes:
        return max(caps.sizes, key=lambda size: math.prod(_parse_pixels(size) or (0, 0)))
    side = caps.max_side
    if caps.max_pixels and side * side > caps.max_pixels:
        return f"{side}x{max(1, caps.max_pixels // side)}"
    return f"{side}x{side}"
