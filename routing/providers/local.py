"""The built-in `local` provider: renders images with Pillow on this machine.

Deterministic for the same prompt, seed, size and index: the palette and shapes come from a
hash of those, and the prompt is drawn as text, so different prompts look different. It is
the embedded default's upstream and what demos and tests use; no network is involved.
"""

from __future__ import annotations

import hashlib
import io
import random
import textwrap
from functools import partial

from PIL import Image, ImageDraw, ImageFont, ImageOps

from aperture.offload import run_blocking
from routing.providers.base import (
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

    def capabilities(self, upstream_model: str) -> ImageCapabilities:
        return CAPABILITIES

    def generate(self, request: ImageRequest, target: Target) -> ImageResult:
        width, height = request.dimensions or (1024, 1024)
        output_format = request.output_format or "png"
        transparent = request.background == "transparent"

        def make(index: int) -> bytes:
            image = render(
                prompt=request.prompt,
                width=width,
                height=height,
                seed=request.seed,
                index=index,
                transparent=transparent,
                quality=request.quality,
            )
            return encode(image, output_format, request.output_compression)

        images = [
            GeneratedImage(
                data=run_blocking(partial(make, index)), media_type=MEDIA_TYPES[output_format]
            )
            for index in range(request.n)
        ]
        return ImageResult(images=images, metadata=_metadata(request, width, height))

    def edit(self, request: ImageRequest, target: Target) -> ImageResult:
        """Paint the prompt's render into the mask's transparent region (or over the whole
        first image, half-blended, without a mask): deterministic for prompt, seed and index."""
        first = request.images[0]
        width, height = request.dimensions or (first.width, first.height)
        output_format = request.output_format or "png"

        def make(index: int) -> bytes:
            with first.open() as handle, Image.open(handle) as opened:
                base = opened.convert("RGBA").resize((width, height))
            painted = render(
                prompt=request.prompt,
                width=width,
                height=height,
                seed=request.seed,
                index=index,
                quality=request.quality,
            )
            if request.mask is None:
                edited = Image.blend(base, painted, 0.5)
            else:
                with request.mask.open() as handle, Image.open(handle) as mask:
                    alpha = mask.convert("RGBA").getchannel("A").resize((width, height))
                editable = alpha.point(lambda value: 255 if value == 0 else 0)
                edited = Image.composite(painted, base, editable)
            return encode(edited, output_format, request.output_compression)

        images = [
            GeneratedImage(
                data=run_blocking(partial(make, index)), media_type=MEDIA_TYPES[output_format]
            )
            for index in range(request.n)
        ]
        return ImageResult(images=images, metadata=_metadata(request, width, height))


def _metadata(request: ImageRequest, width: int, height: int) -> dict[str, str]:
    return {
        "size": f"{width}x{height}",
        "output_format": request.output_format or "png",
        "background": "transparent" if request.background == "transparent" else "opaque",
        "quality": request.quality or "auto",
    }
