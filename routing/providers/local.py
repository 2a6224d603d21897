"""The built-in `local` provider: renders images with Pillow on this machine.

Deterministic for the same prompt, seed, size and index: the palette and shapes come from a
hash of those, and the prompt is drawn as text, so different prompts look different. It is
the embedded default's upstream and what demos and tests use; no network is involved.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import textwrap
import time
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import orjson
from PIL import Image, ImageDraw, ImageFont, ImageOps

from aperture.offload import run_blocking
from routing.providers.base import (
    EventSource,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderAdapter,
    Target,
)
from routing.providers.capabilities import OUTPUT_FORMATS, ImageCapabilities

CAPABILITIES = ImageCapabilities(
    sizes=None,
    min_side=64,
    max_side=4096,
    max_n=10,
    qualities=("auto", "low", "medium", "high", "standard", "hd"),
    styles=("vivid", "natural"),
    native_output_formats=OUTPUT_FORMATS,
    transparent_background=True,
    native_response_formats=("b64_json",),
    edits=True,
    streaming=True,
    seed=True,
    max_prompt_chars=32000,
)
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SHAPES_BY_QUALITY = {"low": 6, "medium": 12, "high": 24, "hd": 24}


def _rng(prompt: str, seed: int | None, width: int, height: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{width}x{height}\x00{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _color(rng: random.Random, alpha: int | None = None) -> tuple[int, ...]:
    rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    return rgb if alpha is None else (*rgb, alpha)


def render(
    *,
    prompt: str,
    width: int,
    height: int,
    seed: int | None = None,
    index: int = 0,
    transparent: bool = False,
    quality: str | None = None,
) -> Image.Image:
    """One RGBA image for this prompt, seed, size and index."""
    rng = _rng(prompt, seed, width, height, index)
    if transparent:
        canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    else:
        gradient = Image.linear_gradient("L").rotate(rng.randrange(360)).resize((width, height))
        canvas = ImageOps.colorize(gradient, _color(rng), _color(rng)).convert("RGBA")
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    scale = min(width, height)
    for _ in range(_SHAPES_BY_QUALITY.get(quality or "", 12)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(scale // 20, 2), max(scale // 4, 3))
        box = (x - r, y - r, x + r, y + r)
        kind = rng.randrange(3)
        fill = _color(rng, rng.randrange(90, 220))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    canvas = Image.alpha_composite(canvas, overlay)
    _draw_prompt(canvas, prompt, width, height)
    return canvas


def _draw_prompt(canvas: Image.Image, prompt: str, width: int, height: int) -> None:
    font_size = max(10, min(width, height) // 18)
    font = ImageFont.load_default(size=font_size)
    columns = max(8, int(width / (font_size * 0.6)) - 2)
    lines = textwrap.wrap(prompt, columns)[: max(1, height // (font_size * 3))]
    draw = ImageDraw.Draw(canvas)
    y = font_size // 2
    for line in lines:
        draw.text(
            (font_size // 2, y),
            line,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=max(1, font_size // 12),
            stroke_fill=(0, 0, 0, 255),
        )
        y += int(font_size * 1.25)


def encode(image: Image.Image, output_format: str, compression: int | None = None) -> bytes:
    """Encode as png, jpeg or webp; `compression` (0-100) applies to jpeg and webp."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=3)
    elif output_format == "jpeg":
        quality = 90 if compression is None else max(1, min(compression, 100))
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    elif output_format == "webp":
        quality = 90 if compression is None else max(1, min(compression, 100))
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()


class LocalProvider(ProviderAdapter):
    name = "local"

    def capabilities(
        self, upstream_model: str, options: Mapping[str, Any] | None = None
    ) -> ImageCapabilities:
        return CAPABILITIES

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        return self._result(request)

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        return self._result(request)

    def stream(self, request: ImageRequest, target: Target) -> EventSource:
        """Each image as `partial_images` ever finer previews (the final render pixelated
        less and less), then the image itself: OpenAI's event shapes."""
        return EventSource(chunks=self._events(request), close=lambda: None)

    def _result(self, request: ImageRequest) -> ImageResult:
        width, height = _output_size(request)
        output_format = request.output_format or "png"
        images = [
            GeneratedImage(
                data=run_blocking(partial(_encoded, request, index)),
                media_type=MEDIA_TYPES[output_format],
            )
            for index in range(request.n)
        ]
        return ImageResult(images=images, metadata=_metadata(request, width, height))

    def _events(self, request: ImageRequest) -> Iterator[bytes]:
        width, height = _output_size(request)
        common = {**_metadata(request, width, height)}
        prefix = request.event_prefix
        for index in range(request.n):
            final = run_blocking(partial(_image, request, index))
            output_format = request.output_format or "png"
            for step in range(request.partial_images):
                factor = 2 ** (request.partial_images - step + 1)
                preview = run_blocking(partial(_pixelated, final, factor, output_format))
                yield _event(
                    f"{prefix}.partial_image",
                    {"b64_json": preview, "partial_image_index": step, **common},
                )
            data = run_blocking(partial(encode, final, output_format, request.output_compression))
            yield _event(
                f"{prefix}.completed",
                {"b64_json": base64.b64encode(data).decode(), "usage": _NO_USAGE, **common},
            )


_NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def _event(kind: str, fields: dict[str, Any]) -> bytes:
    body = {"type": kind, "created_at": int(time.time()), **fields}
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(body) + b"\n\n"


def _pixelated(image: Image.Image, factor: int, output_format: str) -> str:
    small = image.resize((max(1, image.width // factor), max(1, image.height // factor)))
    coarse = small.resize(image.size, Image.Resampling.NEAREST)
    return base64.b64encode(encode(coarse, output_format)).decode()


def _output_size(request: ImageRequest) -> tuple[int, int]:
    if request.dimensions:
        return request.dimensions
    if request.images:
        return request.images[0].width, request.images[0].height
    return 1024, 1024


def _encoded(request: ImageRequest, index: int) -> bytes:
    return encode(
        _image(request, index), request.output_format or "png", request.output_compression
    )


def _image(request: ImageRequest, index: int) -> Image.Image:
    """Image `index` of the request: a render, or for an edit the render painted into the
    mask's transparent region (or half-blended over the whole first image without a mask)."""
    width, height = _output_size(request)
    painted = render(
        prompt=request.prompt,
        width=width,
        height=height,
        seed=request.seed,
        index=index,
        transparent=request.background == "transparent" and not request.images,
        quality=request.quality,
    )
    if not request.images:
        return painted
    with request.images[0].open() as handle, Image.open(handle) as opened:
        base = opened.convert("RGBA").resize((width, height))
    if request.mask is None:
        return Image.blend(base, painted, 0.5)
    with request.mask.open() as handle, Image.open(handle) as mask:
        alpha = mask.convert("RGBA").getchannel("A").resize((width, height))
    editable = alpha.point(lambda value: 255 if value == 0 else 0)
    return Image.composite(painted, base, editable)


def _metadata(request: ImageRequest, width: int, height: int) -> dict[str, str]:
    return {
        "size": f"{width}x{height}",
        "output_format": request.output_format or "png",
        "background": "transparent" if request.background == "transparent" else "opaque",
        "quality": request.quality or "auto",
    }
